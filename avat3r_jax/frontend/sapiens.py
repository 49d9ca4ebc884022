"""Sapiens ViT backbones (Khirodkar et al., ECCV 2024) in Flax NNX, and their released checkpoints.

The architecture, as the released code builds it (facebookresearch/sapiens, ``pretrain/``: mmpretrain's
``VisionTransformer`` through ``MAEViT`` with ``final_norm=True``):

- patch embedding: a 16x16 stride-16 convolution with bias; an input whose sides are not multiples of
  16 is padded with zeros at the bottom and right first (mmcv ``AdaptivePadding``, ``"corner"``);
- a class token and a learned position embedding over the class token plus the pretraining grid
  (64 x 64 for the 1024 x 1024 pretraining images); the grid part is resized to the input's patch grid
  with PyTorch's bicubic interpolation (``align_corners=False``, a = -0.75, no antialiasing);
- pre-norm blocks ``x += proj(MHSA(LN1 x))`` (qkv with bias) and ``x += fc2(GELU(fc1(LN2 x)))`` with
  the exact (erf) GELU, MLP 4x the width, every LayerNorm with eps 1e-6;
- a final LayerNorm (``ln1``) over all tokens; the feature map is the patch tokens without the
  class token, ``[B, h, w, C]`` (``out_type="featmap"``, channels last here).

Input normalisation (:func:`extract_features`): RGB in [0, 255] minus ``IMAGE_MEAN`` over
``IMAGE_STD``, the pretraining config's ``data_preprocessor`` (``to_rgb=True``).

Checkpoints: :mod:`avat3r_jax.frontend.sapiens_checkpoint`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avat3r_jax.model.attention import HEAD_ACTIVATION, SelfAttention
from avat3r_jax.model.layers import DEFAULT_KERNEL_INIT, Mlp, dense, layer_norm
from avat3r_jax.sharding import partitioned, with_logical_constraint

# Pretraining config data_preprocessor (pretrain/configs/sapiens_mae/*): RGB, 0-255 scale.
IMAGE_MEAN = (123.675, 116.28, 103.53)
IMAGE_STD = (58.395, 57.12, 57.375)

# name -> (width, depth, heads): mmpretrain VisionTransformer.arch_zoo['sapiens_*'], MLP 4x width.
RELEASED = {"0.3b": (1024, 24, 16), "0.6b": (1280, 32, 16), "1b": (1536, 40, 24), "2b": (1920, 48, 32)}
PRETRAIN_GRID = (64, 64)  # 1024 x 1024 pretraining images at patch 16.

TOKENS = ("batch", "tokens", "embed")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class SapiensSettings:
    """Static settings of one backbone; hashable. Provides the fields ``SelfAttention`` reads."""

    width: int
    depth: int
    num_heads: int
    mlp_width: int
    patch_size: int = 16
    pretrain_grid: tuple[int, int] = PRETRAIN_GRID  # patch grid of the stored position embedding
    dtype_name: str = "float32"  # compute dtype; parameters are always float32
    attention_impl: str = "xla"  # "xla" or "cudnn" (bfloat16 only), see avat3r_jax.model.attention
    # Attention runs on heads zero-padded to a multiple of this (cuDNN flash attention needs 8;
    # Sapiens-2B's heads have 60 dims); the function is unchanged. 1: no padding.
    attention_head_multiple: int = 8

    @classmethod
    def released(cls, name: str, **overrides: Any) -> SapiensSettings:
        """One of the released sizes ``'0.3b' | '0.6b' | '1b' | '2b'`` (``overrides``: dtype_name, ...)."""
        if name not in RELEASED:
            raise ValueError(f"unknown Sapiens size {name!r}; released sizes: {', '.join(RELEASED)}")
        width, depth, heads = RELEASED[name]
        return cls(width=width, depth=depth, num_heads=heads, mlp_width=4 * width, **overrides).validated()

    @classmethod
    def tiny(cls, **overrides: Any) -> SapiensSettings:
        """A 2-block, width-32 backbone for tests (same structure, pretraining grid 4 x 4)."""
        defaults = dict(width=32, depth=2, num_heads=4, mlp_width=128, pretrain_grid=(4, 4))
        return cls(**{**defaults, **overrides}).validated()

    def validated(self) -> SapiensSettings:
        """``self``, or ``ValueError`` naming the first inconsistent field."""
        checks = [
            (self.width % self.num_heads == 0, f"width {self.width} is not a multiple of num_heads {self.num_heads}"),
            (
                min(self.depth, self.patch_size, self.attention_head_multiple) >= 1,
                f"depth {self.depth}, patch_size {self.patch_size}, attention_head_multiple {self.attention_head_multiple}: "
                "each must be positive",
            ),
            (self.dtype_name in DTYPES, f"dtype_name must be one of {DTYPES}, got {self.dtype_name!r}"),
            (self.attention_impl in ("xla", "cudnn"), f"attention_impl must be 'xla' or 'cudnn', got {self.attention_impl!r}"),
            (
                self.attention_impl != "cudnn" or self.dtype_name == "bfloat16",
                "attention_impl='cudnn' needs dtype_name='bfloat16' (cuDNN flash attention has no float32 kernel)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SapiensSettings: {message}")
        return self

    @property
    def dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype_name)

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def qk_norm(self) -> bool:
        return False  # Sapiens has none; read by SelfAttention.

    @property
    def name(self) -> str | None:
        """The released size with these width/depth/heads, or None."""
        return next((n for n, shape in RELEASED.items() if shape == (self.width, self.depth, self.num_heads)), None)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of a ``height x width`` input (sides padded up to the patch size)."""
        return -(-height // self.patch_size), -(-width // self.patch_size)


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``[out_size, in_size]`` float64 weights of PyTorch's 1-D bicubic resize (align_corners=False).

    Keys' cubic convolution with a = -0.75, source coordinate ``(i + 0.5) * in / out - 0.5``, taps
    clamped to the border, no antialiasing (``torch.nn.functional.interpolate(mode="bicubic")``).
    """
    a = -0.75

    def near(t):  # |t| <= 1
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t):  # 1 < |t| < 2
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    matrix = np.zeros((out_size, in_size))
    for i in range(out_size):
        source = (i + 0.5) * in_size / out_size - 0.5
        base = int(np.floor(source))
        t = source - base
        for offset, weight in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            matrix[i, min(max(base + offset, 0), in_size - 1)] += weight
    return matrix


def resize_position_grid(grid: jax.Array, out_shape: tuple[int, int]) -> jax.Array:
    """``grid [h0, w0, C] -> [h, w, C]`` by :func:`bicubic_matrix` along each axis (identity if equal)."""
    if tuple(grid.shape[:2]) == tuple(out_shape):
        return grid
    rows = jnp.asarray(bicubic_matrix(grid.shape[0], out_shape[0]), grid.dtype)
    cols = jnp.asarray(bicubic_matrix(grid.shape[1], out_shape[1]), grid.dtype)
    return jnp.einsum("ah,bw,hwc->abc", rows, cols, grid, precision=jax.lax.Precision.HIGHEST)


class ErfMlp(Mlp):
    """The project's token MLP with the exact (erf) GELU of Sapiens' FFN (``nn.GELU``)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [B, L, width] -> [B, L, width]``."""
        hidden = with_logical_constraint(jax.nn.gelu(self.up(x), approximate=False), ("batch", "tokens", "mlp"))
        return self.down(hidden)


class SapiensAttention(SelfAttention):
    """The project's self-attention (its ``qkv``/``out`` parameters) on heads zero-padded for the kernel.

    Zero query/key dims add nothing to the scores and zero value dims give zero outputs (dropped),
    so with the scale kept at ``head_dim^-1/2`` the function is exactly Sapiens' attention.
    """

    def __init__(self, settings: SapiensSettings, *, rngs: nnx.Rngs):
        super().__init__(settings, rngs=rngs)
        self.head_dim = settings.head_dim
        self.padding = -settings.head_dim % settings.attention_head_multiple

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [B, L, width] -> [B, L, width]``."""
        qkv = self.qkv(x)  # [B, L, 3, N, D]
        qkv = jnp.pad(qkv, ((0, 0),) * 4 + ((0, self.padding),))  # [B, L, 3, N, D + padding]
        q, k, v = (with_logical_constraint(qkv[:, :, i], HEAD_ACTIVATION) for i in range(3))
        out = jax.nn.dot_product_attention(q, k, v, scale=self.head_dim**-0.5, implementation=self.impl)
        return self.out(with_logical_constraint(out[..., : self.head_dim], HEAD_ACTIVATION))


class SapiensBlock(nnx.Module):
    """``x += Attn(LN1 x)``; ``x += MLP(LN2 x)``."""

    def __init__(self, settings: SapiensSettings, *, rngs: nnx.Rngs):
        s = settings
        self.norm1 = layer_norm(s.width, "embed", dtype=s.dtype, rngs=rngs)
        self.attention = SapiensAttention(s, rngs=rngs)
        self.norm2 = layer_norm(s.width, "embed", dtype=s.dtype, rngs=rngs)
        self.mlp = ErfMlp(s.width, s.mlp_width, dtype=s.dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [B, L, width] -> [B, L, width]``."""
        x = with_logical_constraint(x + self.attention(self.norm1(x)), TOKENS)
        return with_logical_constraint(x + self.mlp(self.norm2(x)), TOKENS)


class Sapiens(nnx.Module):
    """A Sapiens backbone: normalised images ``[B, H, W, 3]`` -> last feature map ``[B, h, w, C]``.

    Blocks are stacked on a leading ``layers`` axis and applied with ``nnx.scan`` (compile time does
    not grow with depth). Parameters float32, compute in ``settings.dtype``.
    """

    def __init__(self, settings: SapiensSettings, *, rngs: nnx.Rngs):
        s = self.settings = settings.validated()
        p, dtype = s.patch_size, s.dtype
        self.patch_embed = dense((p, p, 3), s.width, (None, None, "channels", "embed"), dtype=dtype, rngs=rngs)
        init = partitioned(DEFAULT_KERNEL_INIT, "embed")
        self.cls_token = nnx.Param(init(rngs.params(), (s.width,), jnp.float32))
        init = partitioned(DEFAULT_KERNEL_INIT, "tokens", "embed")
        self.pos_embed = nnx.Param(init(rngs.params(), (1 + s.pretrain_grid[0] * s.pretrain_grid[1], s.width), jnp.float32))

        @nnx.split_rngs(splits=s.depth)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def create(rngs: nnx.Rngs) -> SapiensBlock:
            return SapiensBlock(s, rngs=rngs)

        self.blocks = create(rngs)
        self.final_norm = layer_norm(s.width, "embed", dtype=dtype, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        """Normalised ``images [B, H, W, 3]`` (see :func:`normalize`) -> features ``[B, h, w, C]`` in ``dtype``."""
        s = self.settings
        b, height, width, _ = images.shape
        h, w = s.grid(height, width)
        padded = jnp.pad(images, ((0, 0), (0, h * s.patch_size - height), (0, w * s.patch_size - width), (0, 0)))
        patches = padded.reshape(b, h, s.patch_size, w, s.patch_size, 3).transpose(0, 1, 3, 2, 4, 5)  # [B, h, w, p, p, 3]
        tokens = self.patch_embed(patches).reshape(b, h * w, s.width)  # [B, h*w, C]
        pos = self.pos_embed[...]  # [1 + h0*w0, C]
        pos_grid = resize_position_grid(pos[1:].reshape(*s.pretrain_grid, s.width), (h, w)).reshape(h * w, s.width)
        cls = jnp.broadcast_to((self.cls_token[...] + pos[0]).astype(s.dtype), (b, 1, s.width))
        x = jnp.concatenate([cls, tokens + pos_grid.astype(s.dtype)], axis=1)  # [B, 1 + h*w, C]
        x = with_logical_constraint(x, TOKENS)

        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def run(block: SapiensBlock, x: jax.Array) -> jax.Array:
            return block(x)

        x = self.final_norm(run(self.blocks, x))
        return x[:, 1:].reshape(b, h, w, s.width)


def normalize(images: jax.Array) -> jax.Array:
    """RGB ``images [..., 3]`` in [0, 1] -> Sapiens' input: ``(255 x - IMAGE_MEAN) / IMAGE_STD``."""
    mean, std = jnp.asarray(IMAGE_MEAN, jnp.float32), jnp.asarray(IMAGE_STD, jnp.float32)
    return (images.astype(jnp.float32) * 255.0 - mean) / std


@nnx.jit
def _features(model: Sapiens, images: jax.Array) -> jax.Array:
    return model(normalize(images)).astype(jnp.float32)


def extract_features(model: Sapiens, images: jax.Array | np.ndarray) -> jax.Array:
    """``images [B, H, W, 3]`` float RGB in [0, 1] -> float32 features ``[B, h, w, C]`` (jitted per shape).

    ``h, w`` = ``ceil(H / 16), ceil(W / 16)``; Sapiens was pretrained on 1024 x 1024 and its demos
    run 1024 x 768 (H x W).
    """
    shape = tuple(np.shape(images))
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"extract_features expects images [B, H, W, 3], got shape {shape}")
    if isinstance(images, np.ndarray) and not np.isfinite(images).all():
        raise ValueError("extract_features: images hold NaN or infinite values")
    return _features(model, jnp.asarray(images))


def forward_flops(settings: SapiensSettings, height: int, width: int) -> float:
    """Multiply-adds x 2 of every matmul of one ``height x width`` image's forward pass (analytic).

    Per block ``24 L C^2`` (qkv, output, MLP at 4x) plus ``4 L^2 C`` (scores and values), ``L`` =
    patches + class token; plus the patch embedding. Elementwise work (norms, GELU, softmax) is not
    counted.
    """
    s = settings
    h, w = s.grid(height, width)
    tokens, c = h * w + 1, s.width
    block = 2 * tokens * c * (3 * c + c + 2 * s.mlp_width) + 4 * tokens * tokens * c
    return float(s.depth * block + 2 * h * w * s.patch_size**2 * 3 * c)
