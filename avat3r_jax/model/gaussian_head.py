"""Tokens back to full resolution, one Gaussian per input pixel.

The head projects each token to a ``p x p`` patch of ``head_channels`` features (a pixel-shuffle
upsampler), concatenates the full-resolution per-pixel inputs (skip connection), mixes them with
one 3x3 convolution and predicts the raw per-pixel outputs with a 1x1 projection. The convolution's
input is zero-padded to a multiple of ``CONV_CHANNEL_MULTIPLE`` channels (its kernel likewise),
which leaves the function unchanged and spares cuDNN its own padding passes over the
full-resolution activations (measured in docs/PERFORMANCE.md). The outputs (channel layout:
``avat3r_jax.spec.output_layout``) are residuals on :class:`PixelAnchors`: bounded xyz offset, bounded log-scale, quaternion around
identity, opacity logit around ``logit(init_opacity)``, colour residual on the input pixel, SH bands.
The offset/colour/SH (and along-ray) columns of the last projection start at zero, so the
untrained model places coloured Gaussians exactly at its inputs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from avat3r_jax.gaussians import Gaussians
from avat3r_jax.geometry import normalize_quaternion
from avat3r_jax.model.anchors import PixelAnchors
from avat3r_jax.model.layers import add_bias, dense, layer_norm
from avat3r_jax.model.settings import ModelSettings
from avat3r_jax.model.tokenizer import PIXELS, unpatchify
from avat3r_jax.sharding import partitioned, with_logical_constraint
from avat3r_jax.spec import MASKED_OPACITY_LOGIT, num_outputs, output_layout

OUTPUT_INIT_STD = 0.01  # Std of the non-zero columns of the last projection.
CONV_CHANNEL_MULTIPLE = 8  # Tensor-core friendly channel count of the 3x3 convolution's input.


ZERO_INIT_OUTPUTS = ("offset", "color", "sh_rest", "ray_offset")


def _output_kernel_init(layout: dict[str, slice]):
    """Small normal init with the residual columns (offset, colour, SH, along-ray) set to zero."""

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        kernel = OUTPUT_INIT_STD * jax.random.normal(key, shape, dtype)
        for name in ZERO_INIT_OUTPUTS:
            if name in layout:
                kernel = kernel.at[..., layout[name]].set(0.0)
        return kernel

    return init


class GaussianHead(nnx.Module):
    """``tokens [B, V*h*w, width]`` + ``skip [B, V, H, W, C]`` -> raw outputs ``[B, V, H, W, n]`` (float32)."""

    def __init__(self, settings: ModelSettings, *, rngs: nnx.Rngs):
        s, dtype = settings, settings.dtype
        self.settings = s
        layout = output_layout(s)
        channels = s.head_channels
        self.norm = layer_norm(s.width, "embed", dtype=dtype, rngs=rngs, affine=s.layer_norm_affine)
        self.to_pixels = dense(s.width, s.patch_size**2 * channels, ("embed", None), dtype=dtype, rngs=rngs)
        self.mix = nnx.Conv(  # its kernel and bias, applied in __call__ to the channel-padded input
            channels + s.pixel_channels,
            channels,
            (3, 3),
            dtype=dtype,
            param_dtype=jnp.float32,
            kernel_init=partitioned(nnx.initializers.variance_scaling(1.0, "fan_in", "normal"), None, None, None, None),
            bias_init=partitioned(nnx.initializers.zeros_init(), None),
            rngs=rngs,
        )
        self.out = dense(channels, num_outputs(s), (None, None), dtype=dtype, rngs=rngs, kernel_init=_output_kernel_init(layout))

    def __call__(self, tokens: jax.Array, skip: jax.Array) -> jax.Array:
        s = self.settings
        b, v, height, width = skip.shape[:4]
        patches = self.to_pixels(self.norm(tokens))  # [B, V*h*w, p*p*hc]
        pixels = unpatchify(patches, v, s.grid, s.patch_size)  # [B, V, H, W, hc]
        channels = pixels.shape[-1] + skip.shape[-1]
        pad = -channels % CONV_CHANNEL_MULTIPLE
        zeros = jnp.zeros((*skip.shape[:4], pad), s.dtype)
        pixels = jnp.concatenate([pixels, skip.astype(s.dtype), zeros], axis=-1)  # [B, V, H, W, hc + C + pad]
        pixels = with_logical_constraint(pixels, PIXELS)
        kernel = jnp.pad(self.mix.kernel[...], ((0, 0), (0, 0), (0, pad), (0, 0))).astype(s.dtype)  # [3, 3, hc + C + pad, hc]
        mixed = jax.lax.conv_general_dilated(
            pixels.reshape(b * v, height, width, -1), kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )  # [B*V, H, W, hc]: nnx.Conv's function (stride 1, SAME padding) on the padded channels
        hidden = jax.nn.gelu(add_bias(mixed, self.mix.bias[...].astype(s.dtype)))
        raw = self.out(hidden).reshape(b, v, height, width, -1).astype(jnp.float32)
        return with_logical_constraint(raw, PIXELS)


def gaussians_from_raw(raw: jax.Array, anchors: PixelAnchors, settings: ModelSettings) -> Gaussians:
    """Applies the bounded activations to ``raw [B, V, H, W, n]`` -> Gaussians ``[B]`` with ``N = V*H*W``."""
    s = settings
    layout = output_layout(s)
    part = {name: raw[..., piece] for name, piece in layout.items()}
    means = anchors.means + s.max_offset * jnp.tanh(part["offset"])
    if anchors.ray_dirs is not None:
        means = means + anchors.ray_dirs * (s.max_ray_offset * jnp.tanh(part["ray_offset"]))
    lo, hi = s.log_scale_min, s.log_scale_max
    margin = 1e-3 * (hi - lo)
    base = (jnp.clip(anchors.log_scales, lo + margin, hi - margin) - lo) / (hi - lo)  # (0, 1)
    log_scales = lo + (hi - lo) * jax.nn.sigmoid(part["log_scale"] + jnp.log(base) - jnp.log1p(-base))
    identity = jnp.array([1.0, 0.0, 0.0, 0.0], jnp.float32)
    quaternions = normalize_quaternion(part["quaternion"] + identity)
    opacity_logits = part["opacity"][..., 0] + math.log(s.init_opacity / (1.0 - s.init_opacity))
    opacity_logits = jnp.where(anchors.valid[..., 0] > 0.5, opacity_logits, MASKED_OPACITY_LOGIT)
    colors = anchors.colors + part["color"]
    b, n = raw.shape[0], math.prod(raw.shape[1:4])
    flat = lambda x: x.reshape(b, n, *x.shape[4:])  # [B, V, H, W, ...] -> [B, V*H*W, ...]
    sh_rest = part["sh_rest"].reshape(b, n, s.num_sh_rest, 3)
    return Gaussians.create(flat(means), flat(log_scales), flat(quaternions), flat(opacity_logits), flat(colors), sh_rest)
