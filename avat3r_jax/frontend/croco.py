"""CroCo's transformer parts as DUSt3R uses them: 2D RoPE, ViT encoder blocks, cross-attending decoder blocks.

Layouts: tokens ``[B, L, C]`` in row-major patch order (``L = h * w``), attention heads
``[B, L, N, D]``. Every block is pre-norm (LayerNorm eps 1e-6) with an exact-erf GELU MLP, as in
CroCo; RoPE rotates the first half of each head's channels by the patch row and the second half by
the patch column (base 100 for DUSt3R's ``RoPE100``), within each half by the rotate-half rule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avat3r_jax.model.attention import HEAD_ACTIVATION, attention
from avat3r_jax.model.layers import dense, layer_norm
from avat3r_jax.sharding import with_logical_constraint

TOKENS = ("batch", "tokens", "embed")


def rope_tables(grid: tuple[int, int], head_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """``cos, sin [h * w, head_dim]`` (float32) of 2D RoPE for a ``grid = (h, w)`` of patches."""
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {head_dim}")
    half = head_dim // 2
    inv_freq = 1.0 / base ** (np.arange(0, half, 2, dtype=np.float64) / half)  # [half / 2]
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    angles = [np.outer(axis.reshape(-1), inv_freq) for axis in (rows, cols)]  # 2 x [L, half / 2]
    angles = np.concatenate([np.concatenate([a, a], axis=-1) for a in angles], axis=-1)  # [L, head_dim]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """``x [B, L, N, D]`` rotated by ``cos, sin [L, D]`` (each half of ``D`` by the rotate-half rule)."""
    quarter = x.shape[-1] // 4
    parts = [x[..., k * quarter : (k + 1) * quarter] for k in range(4)]  # row half = 0, 1; column half = 2, 3
    rotated = jnp.concatenate([-parts[1], parts[0], -parts[3], parts[2]], axis=-1)
    out = x.astype(jnp.float32) * cos[:, None] + rotated.astype(jnp.float32) * sin[:, None]
    return out.astype(x.dtype)


class Mlp(nnx.Module):
    """``fc1 -> GELU (exact erf, as torch.nn.GELU) -> fc2``, hidden axis tensor-parallel."""

    def __init__(self, width: int, hidden: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.fc1 = dense(width, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = dense(hidden, width, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [B, L, width] -> [B, L, width]``."""
        hidden = with_logical_constraint(jax.nn.gelu(self.fc1(x), approximate=False), ("batch", "tokens", "mlp"))
        return self.fc2(hidden)


class RopeSelfAttention(nnx.Module):
    """Multi-head self-attention with 2D RoPE on queries and keys (CroCo's ``Attention``)."""

    def __init__(self, width: int, num_heads: int, *, dtype: jnp.dtype, attention_impl: str, rngs: nnx.Rngs):
        head_dim = width // num_heads
        self.impl = attention_impl
        self.qkv = dense(width, (3, num_heads, head_dim), ("embed", "qkv", "heads", "kv"), dtype=dtype, rngs=rngs)
        self.proj = dense((num_heads, head_dim), width, ("heads", "kv", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        """``x [B, L, width]``, RoPE tables ``[L, D]`` -> ``[B, L, width]``."""
        qkv = self.qkv(x)  # [B, L, 3, N, D]
        q, k, v = (with_logical_constraint(qkv[:, :, i], HEAD_ACTIVATION) for i in range(3))
        out = attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, self.impl)
        return self.proj(with_logical_constraint(out, HEAD_ACTIVATION))


class RopeCrossAttention(nnx.Module):
    """Multi-head attention from one view's tokens to the other's, 2D RoPE on both (CroCo's ``CrossAttention``)."""

    def __init__(self, width: int, num_heads: int, *, dtype: jnp.dtype, attention_impl: str, rngs: nnx.Rngs):
        head_dim = width // num_heads
        self.impl = attention_impl
        heads = (num_heads, head_dim)
        self.projq = dense(width, heads, ("embed", "heads", "kv"), dtype=dtype, rngs=rngs)
        self.projk = dense(width, heads, ("embed", "heads", "kv"), dtype=dtype, rngs=rngs)
        self.projv = dense(width, heads, ("embed", "heads", "kv"), dtype=dtype, rngs=rngs)
        self.proj = dense(heads, width, ("heads", "kv", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, memory: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        """``x [B, L, width]`` attends to ``memory [B, L, width]`` (same patch grid) -> ``[B, L, width]``."""
        q, k, v = (
            with_logical_constraint(layer(src), HEAD_ACTIVATION)
            for layer, src in ((self.projq, x), (self.projk, memory), (self.projv, memory))
        )
        out = attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, self.impl)
        return self.proj(with_logical_constraint(out, HEAD_ACTIVATION))


class EncoderBlock(nnx.Module):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, *, dtype: jnp.dtype, attention_impl: str, rngs: nnx.Rngs):
        self.norm1 = layer_norm(width, "embed", dtype=dtype, rngs=rngs)
        self.attn = RopeSelfAttention(width, num_heads, dtype=dtype, attention_impl=attention_impl, rngs=rngs)
        self.norm2 = layer_norm(width, "embed", dtype=dtype, rngs=rngs)
        self.mlp = Mlp(width, int(width * mlp_ratio), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        """``x [B, L, width] -> [B, L, width]``."""
        x = x + self.attn(self.norm1(x), cos, sin)
        return with_logical_constraint(x + self.mlp(self.norm2(x)), TOKENS)


class DecoderBlock(nnx.Module):
    """Self-attention, cross-attention to the other view's (normalised) tokens, MLP; each pre-norm."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, *, dtype: jnp.dtype, attention_impl: str, rngs: nnx.Rngs):
        self.norm1 = layer_norm(width, "embed", dtype=dtype, rngs=rngs)
        self.attn = RopeSelfAttention(width, num_heads, dtype=dtype, attention_impl=attention_impl, rngs=rngs)
        self.norm_y = layer_norm(width, "embed", dtype=dtype, rngs=rngs)
        self.norm2 = layer_norm(width, "embed", dtype=dtype, rngs=rngs)
        self.cross_attn = RopeCrossAttention(width, num_heads, dtype=dtype, attention_impl=attention_impl, rngs=rngs)
        self.norm3 = layer_norm(width, "embed", dtype=dtype, rngs=rngs)
        self.mlp = Mlp(width, int(width * mlp_ratio), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, other: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        """``x, other [B, L, width]`` (this view's and the other view's tokens) -> this view's ``[B, L, width]``."""
        x = x + self.attn(self.norm1(x), cos, sin)
        x = x + self.cross_attn(self.norm2(x), self.norm_y(other), cos, sin)
        return with_logical_constraint(x + self.mlp(self.norm3(x)), TOKENS)
