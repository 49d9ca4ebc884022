"""One pass over a whole config before any work: every field with a type or a bound, in one line.

``validate_config(config)`` raises ``ConfigValueError`` naming each bad field (``data.batch_size
must be an integer >= 1, got -1``); the command-line entry points call it right after parsing, so a
bad value fails before a dataset is generated or a program compiled. The model's own consistency
checks (``ModelSettings.problems``) run last, once the fields they divide by are known to be sane.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from avat3r_jax.model.settings import ModelSettings
from avat3r_jax.render.renderer import BACKENDS
from avat3r_jax.spec import EXPRESSION_INJECTIONS

Check = Callable[[Any], str | None]  # value -> what is wrong with it, or None


class ConfigValueError(ValueError):
    """A config field with a value out of its type or bounds."""


def count(minimum: int = 1) -> Check:
    def check(value):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            return f"must be an integer >= {minimum}"
        return None

    return check


def real(low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False) -> Check:
    """A finite number in the interval (``low_open``/``high_open`` exclude the ends)."""
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    interval = f" in {left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    interval = "" if low is None and high is None else interval

    def check(value):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
            return f"must be a finite number{interval}"
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        return f"must be a finite number{interval}" if below or above else None

    return check


def one_of(options: tuple[str, ...]) -> Check:
    return lambda value: None if value in options else f"must be one of {list(options)}"


def of_type(kind: type) -> Check:
    return lambda value: None if isinstance(value, kind) and not (kind is int and isinstance(value, bool)) else f"must be a {kind.__name__}"


def rgb(value) -> str | None:
    """Three finite numbers in [0, 1]."""
    ok = isinstance(value, (tuple, list)) and len(value) == 3 and all(real(0.0, 1.0)(v) is None for v in value)
    return None if ok else "must be three numbers in [0, 1] (an RGB colour such as (1.0, 1.0, 1.0))"


def mesh_axis(value) -> str | None:
    """A device-mesh axis size: -1 (absorbs the remaining devices) or a positive count."""
    return None if value == -1 or count()(value) is None else "must be -1 or an integer >= 1"


def probabilities(value) -> str | None:
    """Empty, or non-negative numbers summing to 1."""
    ok = isinstance(value, (tuple, list)) and all(real(0.0, 1.0)(p) is None for p in value)
    ok = ok and (not value or abs(sum(value) - 1.0) < 1e-6)
    return None if ok else "must be () or non-negative numbers summing to 1"


FEATURE_SOURCES = ("records", "random_encoder")

FIELD_CHECKS: dict[str, Check] = {
    "seed": of_type(int),
    "data.dir": of_type(str),
    "data.name": of_type(str),
    "data.image_height": count(),
    "data.image_width": count(),
    "data.num_input_views": count(),
    "data.num_target_views": count(),
    "data.different_frame_prob": real(0.0, 1.0),
    "data.feature_channels": count(),
    "data.feature_height": count(),
    "data.feature_width": count(),
    "data.expression_dim": count(),
    "data.batch_size": count(),
    "data.num_workers": count(0),
    "data.num_threads": count(),
    "data.prefetch_batches": count(0),
    "data.shuffle_seed": of_type(int),
    "data.view_count_probs": probabilities,
    "data.feature_source": one_of(FEATURE_SOURCES),
    "data.feature_encoder_seed": of_type(int),
    "data.corruption.depth_noise": real(0.0),
    "data.corruption.misalign_degrees": real(0.0, 90.0),
    "data.corruption.misalign_translation": real(0.0),
    "data.corruption.misalign_log_scale": real(0.0),
    "data.corruption.hole_fraction": real(0.0, 1.0, high_open=True),
    "data.corruption.hole_radius": real(0.5),
    "data.synthetic.subjects": count(),
    "data.synthetic.frames": count(),
    "data.synthetic.cameras": count(),
    "data.synthetic.resolution": count(),
    "data.synthetic.posmap_noise": real(0.0),
    "data.synthetic.distance_jitter": real(0.0, 1.0, high_open=True),
    "data.synthetic.focal_jitter": real(0.0, 1.0, high_open=True),
    "data.synthetic.val_subjects": count(0),
    "data.synthetic.test_subjects": count(0),
    "data.synthetic.heldout_frames": count(0),
    "data.synthetic.render_steps": count(),
    "data.synthetic.seed": of_type(int),
    "data.synthetic.beard_prob": real(0.0, 1.0),
    "data.synthetic.lighting_jitter": real(0.0, 2.0),
    "data.synthetic.hair_style_prob": real(0.0, 1.0),
    "data.synthetic.dyed_hair_prob": real(0.0, 1.0),
    "data.synthetic.glasses_prob": real(0.0, 1.0),
    "data.synthetic.head_shape_jitter": real(0.0, 1.5),
    "data.synthetic.expression_cycles": real(0.0, 8.0, low_open=True),
    "model.patch_size": count(),
    "model.width": count(),
    "model.depth": count(),
    "model.num_heads": count(),
    "model.mlp_ratio": real(0.0, low_open=True),
    "model.qk_norm": of_type(bool),
    "model.layer_norm_affine": of_type(bool),
    "model.num_expression_tokens": count(),
    "model.cross_attn_from_layer": count(0),
    "model.expression_injection": one_of(EXPRESSION_INJECTIONS),
    "model.use_posmap": of_type(bool),
    "model.use_features": of_type(bool),
    "model.use_plucker": of_type(bool),
    "model.use_view_embedding": of_type(bool),
    "model.posmap_scale": real(0.0, low_open=True),
    "model.head_channels": count(),
    "model.max_offset": real(0.0),
    "model.max_ray_offset": real(0.0),
    "model.log_scale_min": real(),
    "model.log_scale_max": real(),
    "model.init_scale_pixels": real(0.0, low_open=True),
    "model.init_opacity": real(0.0, 1.0, low_open=True, high_open=True),
    "model.sh_degree": count(0),
    "model.dtype": of_type(str),
    "model.attention_impl": of_type(str),
    "model.remat_policy": of_type(str),
    "model.scan_layers": of_type(bool),
    "render.backend": one_of(BACKENDS),
    "render.tile_size": count(),
    "render.max_tiles_per_gaussian": count(),
    "render.max_intersections": count(0),
    "render.examples_per_pass": count(0),
    "render.near": real(0.0, low_open=True),
    "render.far": real(0.0, low_open=True),
    "render.background": rgb,
    "train.num_steps": count(),
    "train.learning_rate": real(0.0, low_open=True),
    "train.warmup_steps": count(0),
    "train.end_learning_rate_factor": real(0.0, 1.0),
    "train.weight_decay": real(0.0),
    "train.adam_b1": real(0.0, 1.0, high_open=True),
    "train.adam_b2": real(0.0, 1.0, high_open=True),
    "train.grad_clip_norm": real(),
    "train.grad_accum_steps": count(),
    "train.l1_weight": real(0.0),
    "train.ssim_weight": real(0.0),
    "train.alpha_weight": real(0.0),
    "train.random_background": of_type(bool),
    "train.perceptual_weight": real(0.0),
    "train.perceptual_weights_path": of_type(str),
    "train.max_consecutive_nonfinite": count(),
    "train.log_every": count(),
    "train.eval_every": count(0),
    "train.eval_batches": count(),
    "train.checkpoint_every": count(0),
    "train.keep_checkpoints": count(),
    "train.time_budget": real(0.0),
    "mesh.data": mesh_axis,
    "mesh.fsdp": mesh_axis,
    "mesh.tensor": mesh_axis,
}


def _get(config: Mapping[str, Any], path: str) -> Any:
    node = config
    for key in path.split("."):
        node = node[key]
    return node


def _relations(config: Mapping[str, Any]) -> list[tuple[bool, str]]:
    """Checks between fields (each already of its type and bounds)."""
    data, train, render, synthetic = config["data"], config["train"], config["render"], config["data"]["synthetic"]
    mesh = [config["mesh"][axis] for axis in ("data", "fsdp", "tensor")]
    return [
        (
            data.batch_size % train.grad_accum_steps == 0,
            f"data.batch_size ({data.batch_size}) must be a multiple of train.grad_accum_steps ({train.grad_accum_steps})",
        ),
        (
            train.warmup_steps < train.num_steps,
            f"train.warmup_steps ({train.warmup_steps}) must be below train.num_steps ({train.num_steps})",
        ),
        (render.far > render.near, f"render.far ({render.far}) must be beyond render.near ({render.near})"),
        (mesh.count(-1) <= 1, f"at most one of mesh.data/fsdp/tensor may be -1, got {mesh}"),
        (
            synthetic.val_subjects + synthetic.test_subjects < synthetic.subjects,
            f"data.synthetic.val_subjects + test_subjects ({synthetic.val_subjects} + {synthetic.test_subjects}) must leave "
            f"training subjects out of data.synthetic.subjects ({synthetic.subjects})",
        ),
        (
            synthetic.heldout_frames < synthetic.frames,
            f"data.synthetic.heldout_frames ({synthetic.heldout_frames}) must be below data.synthetic.frames ({synthetic.frames})",
        ),
        (
            len(data.view_count_probs) in (0, data.num_input_views),
            f"data.view_count_probs needs one probability per view count 1..data.num_input_views ({data.num_input_views}), "
            f"got {len(data.view_count_probs)}",
        ),
        (
            data.feature_source != "random_encoder"
            or (data.image_height % data.feature_height == 0 and data.image_width % data.feature_width == 0),
            f"data.feature_source='random_encoder' averages pixels into feature cells: data.image_height/width "
            f"({data.image_height}x{data.image_width}) must be multiples of data.feature_height/width "
            f"({data.feature_height}x{data.feature_width})",
        ),
        (
            train.perceptual_weight == 0 or bool(train.perceptual_weights_path),
            "train.perceptual_weight > 0 needs train.perceptual_weights_path (a local .npz of VGG16 weights)",
        ),
    ]


def config_problems(config: Mapping[str, Any]) -> list[str]:
    """Every problem of ``config``, one message each (empty when it is valid)."""
    problems = []
    for path, check in FIELD_CHECKS.items():
        try:
            value = _get(config, path)
        except (KeyError, AttributeError):
            problems.append(f"{path} is missing")
            continue
        wrong = check(value)
        if wrong:
            problems.append(f"{path} {wrong}, got {value!r}")
    if problems:
        return problems
    problems = [message for ok, message in _relations(config) if not ok]
    try:
        ModelSettings.from_config(config)  # Raises on its first inconsistency.
    except ValueError as error:
        problems.append(str(error))
    return problems


def validate_config(config: Mapping[str, Any]) -> None:
    """Raises ``ConfigValueError`` with every problem of ``config`` in one line."""
    problems = config_problems(config)
    if problems:
        raise ConfigValueError("bad config: " + "; ".join(problems))
