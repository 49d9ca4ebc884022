"""docs/RESULTS.md's issue-22 tables: what each input and design choice buys (``launch/run_table.py``).

Every run is configs/synthetic.py at the paper's depth of 8 blocks (so that
``model.cross_attn_from_layer`` = 0, 2, 4, 6, 7 compare), same steps and seed; ``views4`` is the
reference row (4 input views from frames other than the target's, cross-attention in every block).
Each run is evaluated on held-out subjects under every condition below.
"""

# Front-end-like point-map errors (data_pipelines/corruption.py): 1 cm depth noise at 1 m, views off by
# about a degree and 5 mm, 5% of each image untrusted in 4-pixel discs.
CORRUPTION = {
    "config.data.corruption.depth_noise": 0.01,
    "config.data.corruption.misalign_degrees": 1.0,
    "config.data.corruption.misalign_translation": 0.005,
    "config.data.corruption.misalign_log_scale": 0.01,
    "config.data.corruption.hole_fraction": 0.05,
}
CLEAN = dict.fromkeys(CORRUPTION, 0.0)
VIEWS = 4

COMMON = {
    "config.model.depth": 8,
    # A time budget far beyond any run keeps the full schedule but traces its horizon
    # (avat3r_jax/train/time_budget.py): the step count is then not part of the compiled program, so
    # launch/run_table.py's short warm-up runs compile what the full runs load from the cache.
    "config.train.time_budget": 1e9,
    "config.train.eval_every": 0,  # held-out evaluation comes after training (launch/eval_heldout.py)
    "config.train.checkpoint_every": 0,  # the final (or SIGTERM) checkpoint only
}


def one_hot_views(count: int) -> tuple[float, ...]:
    """``data.view_count_probs`` that always give ``count`` of the ``VIEWS`` input views."""
    return tuple(float(k == count) for k in range(1, VIEWS + 1))


def get_runs() -> dict[str, dict]:
    return {
        "views4": {},
        "views1to4": {"config.data.view_count_probs": (0.25,) * VIEWS},
        "no_posmap": {"config.model.use_posmap": False},
        "no_features": {"config.model.use_features": False},
        "expr_token": {"config.model.expression_injection": "token"},
        "corrupted": CORRUPTION,
        "same_frame": {"config.data.different_frame_prob": 0.0},
        "xattn2": {"config.model.cross_attn_from_layer": 2},
        "xattn4": {"config.model.cross_attn_from_layer": 4},
        "xattn6": {"config.model.cross_attn_from_layer": 6},
        "xattn7": {"config.model.cross_attn_from_layer": 7},  # the last block only (animation speed goal)
    }


def get_conditions() -> dict[str, dict]:
    """Held-out input conditions: exactly 1-4 views (the run's own frame policy and point maps), then at
    4 views: same-frame inputs, clean or corrupted point maps. Every condition fixes the view count, so
    a run trained on 1-4 views is not evaluated on its own mix of counts."""
    conditions = {f"views{k}": {"config.data.view_count_probs": one_hot_views(k)} for k in range(1, VIEWS + 1)}
    four_views = conditions[f"views{VIEWS}"]
    conditions["same_frame"] = {**four_views, "config.data.different_frame_prob": 0.0}
    conditions["clean"] = {**four_views, **CLEAN}
    conditions["corrupted"] = {**four_views, **CORRUPTION}
    return conditions
