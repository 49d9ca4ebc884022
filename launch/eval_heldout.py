"""Evaluate a trained run on held-out subjects under several input conditions.

    python -m launch.eval_heldout --config=configs/synthetic.py [--config.* as in training] \\
        --workdir=RUN --conditions=conditions.json --out=RUN/heldout.json

``conditions.json`` maps a name to ``config.data.*`` overrides applied at evaluation only, e.g.
``{"views1": {"config.data.view_count_probs": [1, 0, 0, 0]}, "same_frame":
{"config.data.different_frame_prob": 0.0}}``; ``{}`` is the training condition. The newest good
checkpoint of ``RUN`` is restored once; each condition runs every example of ``--splits`` (held-out
identities: ``val_subjects`` and ``test`` by default) once, in the pipeline's deterministic order,
so every run of a table sees the same input views. The output holds the mean PSNR, SSIM and
mean-colour-baseline PSNR per condition, the example count and the checkpoint step.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Iterator

import ml_collections
import numpy as np
from absl import flags, logging

from launch.config_cli import CONFIG, run_app
from launch.eval_conditions import condition_config, load_conditions, mean_scores

WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.", required=True)
CONDITIONS = flags.DEFINE_string("conditions", None, "JSON file: condition name -> config.data.* overrides.", required=True)
SPLITS = flags.DEFINE_list("splits", ["val_subjects", "test"], "Held-out splits to evaluate (their examples are pooled).")
OUT = flags.DEFINE_string("out", None, "Output JSON file (default: WORKDIR/heldout.json).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}")
    try:
        conditions = load_conditions(CONDITIONS.value)
        configs = {name: condition_config(CONFIG.value, overrides) for name, overrides in conditions.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        sys.exit(f"error: {e}")
    import jax
    from flax import nnx

    from avat3r_jax import sharding
    from avat3r_jax.checkpoint import Checkpointer, CheckpointError
    from avat3r_jax.train import objective
    from avat3r_jax.train.trainer import build_model_state, to_global
    from launch.train_data import data_dir_for, grain_iterators

    config, workdir = CONFIG.value, pathlib.Path(WORKDIR.value)
    mesh = sharding.make_mesh(config.mesh)
    graphdef, _, abstract_state, _, _ = build_model_state(config, mesh)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
    try:
        step, state = checkpointer.restore(abstract_state)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    finally:
        checkpointer.close()
    data_dir = data_dir_for(config, workdir)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    # Conditions change config.data only, which shapes the batches but not the evaluation: one jit serves them all.
    evaluate = jax.jit(
        lambda params, batch: objective.evaluate_batch(nnx.merge(graphdef, params), batch, config)[0], out_shardings=replicated
    )

    def scores_of(condition: ml_collections.ConfigDict) -> Iterator[dict[str, np.ndarray]]:
        make_iterator = grain_iterators(condition, data_dir)
        for split in SPLITS.value:
            for local in make_iterator(split, 1):
                with jax.set_mesh(mesh):
                    yield jax.device_get(evaluate(state.params, to_global(local, mesh)))

    results = {}
    for name, condition in configs.items():
        results[name] = mean_scores(scores_of(condition))
        logging.info("%s: %s", name, json.dumps({k: round(v, 4) for k, v in results[name].items()}))
    out = pathlib.Path(OUT.value) if OUT.value else workdir / "heldout.json"
    payload = {"step": step, "splits": SPLITS.value, "conditions": conditions, "results": results}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"step {step}: " + "; ".join(f"{n} PSNR {r['psnr']:.2f} SSIM {r['ssim']:.3f}" for n, r in results.items()))


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    run_app(main)
