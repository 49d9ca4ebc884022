"""Multi-head self- and cross-attention through ``jax.nn.dot_product_attention`` or the Pallas TPU kernel.

Layouts: queries/keys/values are ``[B, L, N, D]`` (batch, sequence, heads, head dim), the layout of
``jax.nn.dot_product_attention``. Implementations (``model.attention_impl``):

- ``"xla"``: the portable XLA path (materialises the ``[B, N, Lq, Lk]`` logits),
- ``"cudnn"``: cuDNN flash attention on NVIDIA GPUs (bfloat16/float16 only),
- ``"pallas_tpu"``: the Pallas TPU flash-attention kernel when lowered for a TPU and the XLA path
  for any other platform (``jax.lax.platform_dependent``: the choice is made per lowering platform,
  so a CPU host lowers the kernel for a TPU target); under a mesh it runs per shard through
  ``shard_map``. ``tpu_flash_attention`` is the kernel alone (TPU, or TPU interpret mode in tests).

A ``key_mask [B, Lk]`` (False: the key gets no weight) is honoured by every implementation: a
boolean mask for ``jax.nn.dot_product_attention`` (XLA logits; cuDNN turns it into an additive bias),
and segment ids for the TPU kernel (self-attention only), under which masked queries attend only to
masked keys: rows of masked queries then differ between implementations, unmasked rows do not.

Cross-attention to the few expression tokens always takes the XLA path: its key length (about 4)
is below every flash kernel's block size and its cost is negligible.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from avat3r_jax.model.layers import dense, rms_norm
from avat3r_jax.model.settings import ModelSettings
from avat3r_jax.sharding import logical_to_spec, with_logical_constraint

HEAD_ACTIVATION = ("batch", "tokens", "heads", "kv")
TPU_BLOCK = 128  # Sequence block of the Pallas TPU flash-attention kernel.


def attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str, key_mask: jax.Array | None = None) -> jax.Array:
    """Softmax attention ``[B, Lq, N, D] x [B, Lk, N, D] -> [B, Lq, N, D]`` with scale ``D^-1/2``;
    keys where ``key_mask [B, Lk]`` is False get no weight."""
    if impl == "pallas_tpu":
        return pallas_tpu_attention(q, k, v, key_mask)
    if impl not in ("xla", "cudnn"):
        raise ValueError(f"unknown attention implementation {impl!r}")
    if impl == "cudnn" and key_mask is not None:
        # cuDNN's fused kernel takes a boolean mask only as a full [B, N, Lq, Lk] bias; a padding mask by
        # lengths is native. Absent views occupy the last view slots (view_mask), so valid keys are a prefix.
        return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=prefix_lengths(key_mask), implementation=impl)
    return jax.nn.dot_product_attention(q, k, v, mask=_logit_mask(key_mask), implementation=impl)


def prefix_lengths(key_mask: jax.Array) -> jax.Array:
    """``[B, Lk]`` bool whose True entries form a prefix -> its lengths ``[B]`` int32."""
    return jnp.sum(key_mask.astype(jnp.int32), axis=-1)


def pallas_tpu_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    """The TPU flash-attention kernel on TPU, XLA attention elsewhere; sharded over batch and heads under a mesh."""
    return _per_shard(lambda *args: jax.lax.platform_dependent(*args, tpu=_flash_kernel, default=_xla_attention), q, k, v, key_mask)


def tpu_flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    """The Pallas TPU flash-attention kernel (non-causal) on every platform, sharded under a mesh."""
    return _per_shard(_flash_kernel, q, k, v, key_mask)


def _logit_mask(key_mask: jax.Array | None) -> jax.Array | None:
    """``[B, Lk]`` -> the ``[B, 1, 1, Lk]`` mask ``jax.nn.dot_product_attention`` broadcasts."""
    return None if key_mask is None else key_mask.astype(bool)[:, None, None, :]


def _per_shard(kernel, q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    """``kernel(q, k, v[, key_mask])``, per shard of batch and heads through ``shard_map`` under a mesh.

    The flash kernel tiles sequences in blocks of 128 (its backward pass needs whole blocks), so both
    sequence lengths must be multiples of 128 (4 views at 512 px and patch 16 give 4096 tokens).
    """
    if q.shape[1] % TPU_BLOCK or k.shape[1] % TPU_BLOCK:
        raise ValueError(
            f"attention_impl='pallas_tpu' needs sequence lengths that are multiples of {TPU_BLOCK}, got {q.shape[1]} and {k.shape[1]}"
        )
    if key_mask is not None and q.shape[1] != k.shape[1]:
        raise ValueError("attention_impl='pallas_tpu' takes a key mask in self-attention only (its segment ids mask queries too)")
    args = (q, k, v) if key_mask is None else (q, k, v, key_mask.astype(jnp.int32))
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return kernel(*args)
    q_spec = logical_to_spec(HEAD_ACTIVATION, q.shape, mesh)
    kv_spec = logical_to_spec(HEAD_ACTIVATION, k.shape, mesh)
    specs = (q_spec, kv_spec, kv_spec) + (() if key_mask is None else (logical_to_spec(("batch", "tokens"), key_mask.shape, mesh),))
    return jax.shard_map(kernel, in_specs=specs, out_specs=q_spec, check_vma=False)(*args)


def _flash_kernel(q: jax.Array, k: jax.Array, v: jax.Array, segments: jax.Array | None = None) -> jax.Array:
    """``[B, L, N, D]`` -> the kernel's ``[B, N, L, D]`` and back; ``segments [B, L]`` int32 (1 unmasked)."""
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash  # TPU-only kernel: lazy import.

    segment_ids = None if segments is None else tpu_flash.SegmentIds(q=segments, kv=segments)
    out = tpu_flash.flash_attention(
        *(jnp.swapaxes(t, 1, 2) for t in (q, k, v)), segment_ids=segment_ids, causal=False, sm_scale=q.shape[-1] ** -0.5
    )
    return jnp.swapaxes(out, 1, 2)


def _xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, segments: jax.Array | None = None) -> jax.Array:
    mask = None if segments is None else _logit_mask(segments > 0)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


class SelfAttention(nnx.Module):
    """Dense multi-head self-attention over all tokens of a sample, optional QK-norm."""

    def __init__(self, settings: ModelSettings, *, rngs: nnx.Rngs):
        s, dtype = settings, settings.dtype
        self.impl = s.attention_impl
        self.qkv = dense(s.width, (3, s.num_heads, s.head_dim), ("embed", "qkv", "heads", "kv"), dtype=dtype, rngs=rngs)
        self.q_norm = rms_norm(s.head_dim, "kv", dtype=dtype, rngs=rngs) if s.qk_norm else None
        self.k_norm = rms_norm(s.head_dim, "kv", dtype=dtype, rngs=rngs) if s.qk_norm else None
        self.out = dense((s.num_heads, s.head_dim), s.width, ("heads", "kv", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        """``x [B, L, width] -> [B, L, width]``; tokens where ``key_mask [B, L]`` is False are not attended to."""
        qkv = self.qkv(x)  # [B, L, 3, N, D]
        q, k, v = (with_logical_constraint(qkv[:, :, i], HEAD_ACTIVATION) for i in range(3))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        out = with_logical_constraint(attention(q, k, v, self.impl, key_mask), HEAD_ACTIVATION)
        return self.out(out)


class CrossAttention(nnx.Module):
    """Multi-head attention from the view tokens to the expression tokens, optional QK-norm."""

    def __init__(self, settings: ModelSettings, *, rngs: nnx.Rngs):
        s, dtype = settings, settings.dtype
        self.q = dense(s.width, (s.num_heads, s.head_dim), ("embed", "heads", "kv"), dtype=dtype, rngs=rngs)
        self.kv = dense(s.width, (2, s.num_heads, s.head_dim), ("embed", "qkv", "heads", "kv"), dtype=dtype, rngs=rngs)
        self.q_norm = rms_norm(s.head_dim, "kv", dtype=dtype, rngs=rngs) if s.qk_norm else None
        self.k_norm = rms_norm(s.head_dim, "kv", dtype=dtype, rngs=rngs) if s.qk_norm else None
        self.out = dense((s.num_heads, s.head_dim), s.width, ("heads", "kv", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        """``x [B, L, width]`` attends to ``context [B, T, width]`` -> ``[B, L, width]``."""
        q = with_logical_constraint(self.q(x), HEAD_ACTIVATION)
        kv = self.kv(context)  # [B, T, 2, N, D]
        k, v = kv[:, :, 0], kv[:, :, 1]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        out = with_logical_constraint(attention(q, k, v, "xla"), HEAD_ACTIVATION)
        return self.out(out)
