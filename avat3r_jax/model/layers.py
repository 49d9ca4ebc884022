"""Parameterised layers with logical axis names on every parameter."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from avat3r_jax.sharding import partitioned, with_logical_constraint

Names = Sequence[str | None]

# ViT-style init: normal with std 0.02 for projections (plain normal: truncated_normal compiles slowly on CPU).
DEFAULT_KERNEL_INIT = nnx.initializers.normal(stddev=0.02)


# Bias gradients reduce over at least this many columns at once (see ``add_bias``).
MIN_REDUCTION_COLUMNS = 1024


@jax.custom_vjp
def add_bias(x: jax.Array, bias: jax.Array) -> jax.Array:
    """``x [..., *bias.shape] + bias``, with a bias gradient that XLA:GPU computes at memory speed.

    The bias gradient sums the output gradient over every leading axis (a column reduction). Left to
    itself, XLA fuses that reduction into the kernel producing the gradient (the LayerNorm backward
    and residual adds), and its column-reduction emitter then runs the whole multi-output fusion
    far below memory bandwidth (measured in docs/PERFORMANCE.md, "bias gradients").
    The backward therefore reduces behind an optimisation barrier (the gradient is in memory anyway:
    the matmul backward reads it), in float32, with rows folded into columns until at least
    ``MIN_REDUCTION_COLUMNS`` are reduced at once (only the leading axes are reshaped, so a sharded
    bias axis stays sharded). Same function and gradient as ``x + bias``.
    """
    return x + bias


def _add_bias_fwd(x: jax.Array, bias: jax.Array) -> tuple[jax.Array, jax.Array]:
    return x + bias, bias


def _add_bias_bwd(bias: jax.Array, grad: jax.Array) -> tuple[jax.Array, jax.Array]:
    columns = math.prod(bias.shape)
    rows = grad.size // columns
    fold = 1  # rows folded into columns: [rows, *bias.shape] -> [rows / fold, fold, *bias.shape]
    while fold * columns < MIN_REDUCTION_COLUMNS and rows % (2 * fold) == 0:
        fold *= 2
    folded = jax.lax.optimization_barrier(grad).reshape(rows // fold, fold, *bias.shape)
    partial = jnp.sum(folded, axis=0, dtype=jnp.float32)  # [fold, *bias.shape]
    return grad, jnp.sum(partial, axis=0).astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class Dense(nnx.LinearGeneral):
    """``nnx.LinearGeneral`` over the trailing axes (no batch axes), its bias added by :func:`add_bias`."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """``inputs [..., *in_features] -> [..., *out_features]`` in ``self.dtype``."""
        num_in = len(self.in_features)
        kernel = self.kernel[...].astype(self.dtype)
        contract = (tuple(range(inputs.ndim - num_in, inputs.ndim)), tuple(range(num_in)))
        out = jax.lax.dot_general(inputs.astype(self.dtype), kernel, (contract, ((), ())))
        return out if self.bias is None else add_bias(out, self.bias[...].astype(self.dtype))


def dense(
    in_features: int | Sequence[int],
    out_features: int | Sequence[int],
    kernel_names: Names,
    *,
    dtype: jnp.dtype,
    rngs: nnx.Rngs,
    kernel_init=DEFAULT_KERNEL_INIT,
    use_bias: bool = True,
) -> Dense:
    """A (possibly multi-axis) linear layer; its kernel axes are ``kernel_names`` (in axes, then out axes).

    The bias carries the names of the output axes. Parameters are float32, compute is ``dtype``.
    A :class:`Dense`: the parameters and function of ``nnx.LinearGeneral``, a faster bias gradient.
    """
    in_shape = (in_features,) if isinstance(in_features, int) else tuple(in_features)
    out_shape = (out_features,) if isinstance(out_features, int) else tuple(out_features)
    kernel_names = tuple(kernel_names)
    if len(kernel_names) != len(in_shape) + len(out_shape):
        raise ValueError(f"kernel names {kernel_names} do not match a {in_shape} -> {out_shape} kernel")
    return Dense(
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


def layer_norm(features: int, name: str | None, *, dtype: jnp.dtype, rngs: nnx.Rngs, affine: bool = True) -> nnx.LayerNorm:
    """LayerNorm over the last axis, whose logical name is ``name``; with a scale and bias if ``affine``."""
    return nnx.LayerNorm(
        features,
        use_scale=affine,
        use_bias=affine,
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
