"""DUSt3R's DPT head: four token layers -> a per-pixel map, then the point and confidence activations.

The head (DPT's regression head as DUSt3R configures it) takes four token arrays on the ``h x w``
patch grid of a ``16 h x 16 w`` image: the encoder output and three decoder layers. Each is
projected (1x1 convolution) and brought to its own scale (4x and 2x transposed convolutions with
kernel = stride, identity, a 3x3 stride-2 convolution), projected to ``feature_dim`` (3x3), fused
coarse to fine by refinement blocks (residual 3x3 units, 2x bilinear upsampling with aligned corners,
1x1 output convolution), and turned into ``num_channels`` maps at full resolution. Channels-last
throughout: ``[B, h, w, C]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avat3r_jax.model.layers import dense
from avat3r_jax.sharding import partitioned

# Fan-in scaled plain normal (a truncated normal compiles slowly for the released size's many kernels).
_CONV_INIT = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1, 2), out_axis=3)


def conv3x3(in_features: int, out_features: int, *, dtype: jnp.dtype, rngs: nnx.Rngs, stride: int = 1, use_bias: bool = True) -> nnx.Conv:
    """A 3x3 convolution with one pixel of zero padding (PyTorch's ``padding=1``), channels-last."""
    return nnx.Conv(
        in_features,
        out_features,
        (3, 3),
        strides=stride,
        padding=((1, 1), (1, 1)),
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=partitioned(_CONV_INIT, None, None, None, "channels"),
        bias_init=partitioned(nnx.initializers.zeros_init(), "channels"),
        rngs=rngs,
    )


def conv1x1(in_features: int, out_features: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
    """A 1x1 convolution (a per-pixel linear layer) with bias."""
    return dense(in_features, out_features, (None, "channels"), dtype=dtype, rngs=rngs)


class PatchUpsample(nnx.Module):
    """A transposed convolution whose kernel equals its stride: each pixel becomes a ``factor x factor`` block."""

    def __init__(self, features: int, factor: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.factor = factor
        self.dtype = dtype
        init = partitioned(_CONV_INIT, None, None, None, "channels")
        self.kernel = nnx.Param(init(rngs.params(), (features, factor, factor, features), jnp.float32))
        self.bias = nnx.Param(partitioned(nnx.initializers.zeros_init(), "channels")(rngs.params(), (features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [B, h, w, C] -> [B, factor h, factor w, C]``."""
        b, h, w, _ = x.shape
        blocks = jnp.einsum("bhwc,cyxo->bhywxo", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        out = blocks.reshape(b, h * self.factor, w * self.factor, -1)
        return out + self.bias[...].astype(self.dtype)


def upsample2x(x: jax.Array) -> jax.Array:
    """Bilinear 2x upsampling with aligned corners (``F.interpolate(scale_factor=2, align_corners=True)``), ``[B, h, w, C]``."""
    for axis in (1, 2):
        size = x.shape[axis]
        source = np.arange(2 * size) * ((size - 1) / max(2 * size - 1, 1))  # output pixel -> input coordinate
        low = np.floor(source).astype(np.int32)
        high = np.minimum(low + 1, size - 1)
        frac = jnp.asarray((source - low).astype(np.float32), x.dtype).reshape((-1,) + (1,) * (x.ndim - axis - 1))
        x = jnp.take(x, low, axis=axis) * (1 - frac) + jnp.take(x, high, axis=axis) * frac
    return x


class ResidualConvUnit(nnx.Module):
    """``x + conv2(relu(conv1(relu(x))))``."""

    def __init__(self, features: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.conv1 = conv3x3(features, features, dtype=dtype, rngs=rngs)
        self.conv2 = conv3x3(features, features, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.conv2(jax.nn.relu(self.conv1(jax.nn.relu(x))))


class FusionBlock(nnx.Module):
    """DPT's feature fusion: add a refined skip, refine, upsample 2x, project (1x1)."""

    def __init__(self, features: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.resConfUnit1 = ResidualConvUnit(features, dtype=dtype, rngs=rngs)
        self.resConfUnit2 = ResidualConvUnit(features, dtype=dtype, rngs=rngs)
        self.out_conv = conv1x1(features, features, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, skip: jax.Array | None = None) -> jax.Array:
        """``x [B, h, w, F]`` (+ ``skip`` of the same shape) -> ``[B, 2h, 2w, F]``."""
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        return self.out_conv(upsample2x(self.resConfUnit2(x)))


class DPTHead(nnx.Module):
    """Four token layers ``[B, h * w, C_k]`` -> ``[B, 16 h, 16 w, num_channels]`` (raw, before activations)."""

    def __init__(
        self,
        token_dims: Sequence[int],
        layer_dims: Sequence[int],
        feature_dim: int,
        last_dim: int,
        num_channels: int,
        *,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        d = layer_dims
        self.project = nnx.List([conv1x1(token_dims[k], d[k], dtype=dtype, rngs=rngs) for k in range(4)])
        self.upsample4 = PatchUpsample(d[0], 4, dtype=dtype, rngs=rngs)
        self.upsample2 = PatchUpsample(d[1], 2, dtype=dtype, rngs=rngs)
        self.downsample2 = conv3x3(d[3], d[3], stride=2, dtype=dtype, rngs=rngs)
        self.layer_rn = nnx.List([conv3x3(d[k], feature_dim, use_bias=False, dtype=dtype, rngs=rngs) for k in range(4)])
        self.refinenet = nnx.List([FusionBlock(feature_dim, dtype=dtype, rngs=rngs) for _ in range(4)])  # fine to coarse
        self.head_conv1 = conv3x3(feature_dim, feature_dim // 2, dtype=dtype, rngs=rngs)
        self.head_conv2 = conv3x3(feature_dim // 2, last_dim, dtype=dtype, rngs=rngs)
        self.head_out = conv1x1(last_dim, num_channels, dtype=dtype, rngs=rngs)

    def __call__(self, layers: Sequence[jax.Array], grid: tuple[int, int]) -> jax.Array:
        """``layers``: 4 x ``[B, h * w, C_k]`` on the patch ``grid = (h, w)`` -> ``[B, 16 h, 16 w, num_channels]``."""
        maps = [p(t.reshape(t.shape[0], *grid, t.shape[-1])) for p, t in zip(self.project, layers)]
        maps = [self.upsample4(maps[0]), self.upsample2(maps[1]), maps[2], self.downsample2(maps[3])]
        maps = [rn(m) for rn, m in zip(self.layer_rn, maps)]  # [B, 4h, 4w, F], [B, 2h, 2w, F], [B, h, w, F], [B, h/2, w/2, F]
        path = self.refinenet[3](maps[3])[:, : grid[0], : grid[1]]  # odd grids: crop 2 * ceil(h / 2) back to h
        for k in (2, 1, 0):
            path = self.refinenet[k](path, maps[k])
        out = upsample2x(self.head_conv1(path))
        return self.head_out(jax.nn.relu(self.head_conv2(out)))


def depth_activation(xyz: jax.Array, mode: tuple[str, float, float]) -> jax.Array:
    """DUSt3R's ``reg_dense_depth`` on ``xyz [..., 3]``: keep the direction, map the norm ``d`` (exp: ``expm1(d)``)."""
    kind, low, high = mode
    if (low, high) != (-math.inf, math.inf):
        raise ValueError(f"depth_mode bounds must be (-inf, inf) as in DUSt3R, got {mode}")
    if kind == "linear":
        return xyz
    norm = jnp.linalg.norm(xyz, axis=-1, keepdims=True)
    direction = xyz / jnp.maximum(norm, 1e-8)
    if kind == "square":
        return direction * jnp.square(norm)
    if kind == "exp":
        return direction * jnp.expm1(norm)
    raise ValueError(f"unknown depth_mode {kind!r} (DUSt3R has 'linear', 'square', 'exp')")


def confidence_activation(x: jax.Array, mode: tuple[str, float, float]) -> jax.Array:
    """DUSt3R's ``reg_dense_conf``: ``low + min(exp(x), high - low)`` ('exp') or a scaled sigmoid."""
    kind, low, high = mode
    if kind == "exp":
        return low + jnp.minimum(jnp.exp(x), high - low)
    if kind == "sigmoid":
        return (high - low) * jax.nn.sigmoid(x) + low
    raise ValueError(f"unknown conf_mode {kind!r} (DUSt3R has 'exp', 'sigmoid')")
