"""Parameterised layers with logical axis names on every parameter."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from avat3r_jax.sharding import partitioned, with_logical_constraint

Names = Sequence[str | None]

# ViT-style init: normal with std 0.02 for projections (plain normal: truncated_normal compiles slowly on CPU).
DEFAULT_KERNEL_INIT = nnx.initializers.normal(stddev=0.02)


def dense(
    in_features: int | Sequence[int],
    out_features: int | Sequence[int],
    kernel_names: Names,
    *,
    dtype: jnp.dtype,
    rngs: nnx.Rngs,
    kernel_init=DEFAULT_KERNEL_INIT,
    use_bias: bool = True,
) -> nnx.LinearGeneral:
    """A (possibly multi-axis) linear layer; its kernel axes are ``kernel_names`` (in axes, then out axes).

    The bias carries the names of the output axes. Parameters are float32, compute is ``dtype``.
    """
    in_shape = (in_features,) if isinstance(in_features, int) else tuple(in_features)
    out_shape = (out_features,) if isinstance(out_features, int) else tuple(out_features)
    kernel_names = tuple(kernel_names)
    if len(kernel_names) != len(in_shape) + len(out_shape):
        raise ValueError(f"kernel names {kernel_names} do not match a {in_shape} -> {out_shape} kernel")
    return nnx.LinearGeneral(
        in_shape,
        out_shape,
        axis=tuple(range(-len(in_shape), 0)),
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=partitioned(kernel_init, *kernel_names),
        bias_init=partitioned(nnx.initializers.zeros_init(), *kernel_names[len(in_shape) :]),
        rngs=rngs,
    )


def layer_norm(features: int, name: str | None, *, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over the last axis, whose logical name is ``name``."""
    return nnx.LayerNorm(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=partitioned(nnx.initializers.ones_init(), name),
        bias_init=partitioned(nnx.initializers.zeros_init(), name),
        rngs=rngs,
    )


def rms_norm(features: int, name: str | None, *, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.RMSNorm:
    """RMSNorm over the last axis (used for QK-norm), whose logical name is ``name``."""
    return nnx.RMSNorm(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=partitioned(nnx.initializers.ones_init(), name),
        rngs=rngs,
    )


class Mlp(nnx.Module):
    """Token MLP: ``Linear -> GELU -> Linear``, hidden axis tensor-parallel."""

    def __init__(self, width: int, hidden: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.up = dense(width, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.down = dense(hidden, width, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [B, L, width]`` (token activations) -> ``[B, L, width]``."""
        hidden = with_logical_constraint(jax.nn.gelu(self.up(x)), ("batch", "tokens", "mlp"))
        return self.down(hidden)
