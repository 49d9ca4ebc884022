"""Model size and cost without allocating weights: ``python -m launch.model_info --config=configs/paper.py``.

Prints the parameter count per module (from ``nnx.eval_shape``), the forward FLOPs per example
(XLA's cost analysis of the lowered forward, layers unrolled because XLA counts a scanned loop
body once; next to an analytic count of the matmuls and convolutions), and activation memory as
XLA:CPU's buffer assignment for the forward and for forward+backward (``--memory``). The XLA
numbers use ``attention_impl="xla"`` (the cuDNN/Pallas kernels do not lower on CPU): FLOPs are the
same, but XLA attention materialises the ``[B, heads, L, L]`` logits that flash kernels never
store, so its memory is an upper bound for GPU/TPU runs.
"""

from __future__ import annotations

import collections
import math

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags
from flax import nnx

from avat3r_jax.model import ModelSettings, abstract_model
from avat3r_jax.pytrees import path_names
from avat3r_jax.spec import batch_shapes, num_outputs
from launch.config_cli import CONFIG, run_app

MEMORY = flags.DEFINE_bool("memory", True, "Also compile forward and forward+backward on CPU for XLA's memory analysis.")
BATCH_SIZE = 1


def parameter_counts(params: nnx.State) -> dict[str, int]:
    """Parameters per module of a (possibly abstract) ``nnx.Param`` state: top-level modules, the blocks split into their sub-modules."""
    counts: dict[str, int] = collections.Counter()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = path_names(path)
        top = keys[0]
        if top in ("blocks", "prefix_blocks"):
            inner = next(key for key in keys[2:] if not key.isdigit())
            top = f"{top}.{inner}"
        counts[top] += math.prod(leaf.shape)
    return dict(counts)


def abstract_batch(settings: ModelSettings) -> dict[str, jax.ShapeDtypeStruct]:
    """The model's inputs and expression code for ``BATCH_SIZE`` examples, as shapes."""
    shapes = batch_shapes(settings, BATCH_SIZE)
    return {key: jax.ShapeDtypeStruct(*shapes[key]) for key in (*settings.model_input_keys, "expression")}


def analysis_config(config: ml_collections.ConfigDict, scan_layers: bool) -> ml_collections.ConfigDict:
    """``config`` with XLA attention (lowers on CPU) and the given layer scanning."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.attention_impl = "xla"
    config.model.scan_layers = scan_layers
    return config


def _lower_forward(config: ml_collections.ConfigDict):
    graphdef, state = abstract_model(config)
    batch = abstract_batch(ModelSettings.from_config(config))
    return jax.jit(lambda state, batch: nnx.merge(graphdef, state)(batch)).lower(state, batch), graphdef, state, batch


def xla_forward_flops(config: ml_collections.ConfigDict) -> float:
    """XLA's FLOP count of one example's forward pass (layers unrolled)."""
    lowered = _lower_forward(analysis_config(config, scan_layers=False))[0]
    return float(lowered.cost_analysis()["flops"])


def analytic_forward_flops(settings: ModelSettings) -> dict[str, float]:
    """Multiply-adds x 2 of every matmul and convolution of one example's forward pass, per stage."""
    s = settings
    pixels = s.num_views * s.image_height * s.image_width
    tokens = s.num_tokens
    w, t = s.width, s.num_expression_tokens
    self_attention = 2 * tokens * w * 4 * w + 2 * 2 * tokens * tokens * w
    cross_attention = 2 * tokens * w * 2 * w + 2 * t * w * 2 * w + 2 * 2 * tokens * t * w
    mlp = 2 * 2 * tokens * w * s.mlp_width
    cross_blocks = s.depth - s.cross_attn_from_layer
    head_outputs = num_outputs(s)
    tokenizer = 2 * tokens * s.patch_size**2 * s.pixel_channels * w
    if s.use_features:
        tokenizer += 2 * tokens * s.feature_channels * w  # the feature resize is elementwise, not counted
    return {
        "tokenizer": tokenizer,
        "expression_encoder": 2 * w * (s.expression_dim + t * w),
        "blocks": s.depth * (self_attention + mlp) + cross_blocks * cross_attention,
        "head": 2 * tokens * w * s.patch_size**2 * s.head_channels
        + 2 * pixels * 9 * (s.head_channels + s.pixel_channels) * s.head_channels
        + 2 * pixels * s.head_channels * head_outputs,
    }


def xla_memory(config: ml_collections.ConfigDict) -> dict[str, int]:
    """XLA:CPU temp-buffer bytes of the forward and of forward+backward (the config's scan/remat)."""
    _, graphdef, state, batch = _lower_forward(analysis_config(config, scan_layers=config.model.scan_layers))

    def loss(state, batch):
        g = nnx.merge(graphdef, state)(batch)
        return jnp.sum(g.means) + jnp.sum(g.log_scales) + jnp.sum(g.opacity_logits) + jnp.sum(g.colors)

    forward = jax.jit(lambda state, batch: nnx.merge(graphdef, state)(batch)).lower(state, batch).compile()
    backward = jax.jit(jax.grad(loss)).lower(state, batch).compile()
    return {
        "forward": forward.memory_analysis().temp_size_in_bytes,
        "forward+backward": backward.memory_analysis().temp_size_in_bytes,
    }


def report(config: ml_collections.ConfigDict, memory: bool) -> str:
    settings = ModelSettings.from_config(config)
    tokens = settings.num_tokens
    lines = [
        f"AVAT3R: {settings.num_views} views x {settings.image_height}x{settings.image_width} px, patch {settings.patch_size} "
        f"-> {tokens} tokens, width {settings.width}, depth {settings.depth} (cross-attention from block "
        f"{settings.cross_attn_from_layer}), {settings.num_heads} heads, dtype {settings.dtype_name}",
        "",
        "parameters:",
    ]
    counts = parameter_counts(abstract_model(config)[1])
    for name, count in sorted(counts.items()):
        lines.append(f"  {name:<36} {count:>14,}")
    lines.append(f"  {'total':<36} {sum(counts.values()):>14,}")
    lines += ["", f"forward FLOPs per example (batch {BATCH_SIZE}):"]
    analytic = analytic_forward_flops(settings)
    for name, flops in analytic.items():
        lines.append(f"  analytic {name:<27} {flops / 1e9:>14,.3f} GFLOP")
    lines.append(f"  analytic {'total (matmuls + convs)':<27} {sum(analytic.values()) / 1e9:>14,.3f} GFLOP")
    lines.append(f"  {'XLA cost analysis':<36} {xla_forward_flops(config) / 1e9:>14,.3f} GFLOP")
    if memory:
        lines += ["", "activation memory per example (XLA:CPU temp buffers, XLA attention):"]
        for name, size in xla_memory(config).items():
            lines.append(f"  {name:<36} {size / 2**20:>14,.1f} MiB")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}")
    print(report(CONFIG.value, MEMORY.value))


def run() -> None:
    flags.mark_flag_as_required("config")
    run_app(main)


if __name__ == "__main__":
    run()
