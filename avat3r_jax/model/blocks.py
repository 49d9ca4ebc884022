"""Pre-norm transformer blocks and a stack of them (Python loop or scan over stacked layers)."""

from __future__ import annotations

import jax
from flax import nnx

from avat3r_jax.model.attention import CrossAttention, SelfAttention
from avat3r_jax.model.layers import Mlp, layer_norm
from avat3r_jax.model.settings import ModelSettings, checkpoint_policy
from avat3r_jax.sharding import with_logical_constraint

TOKENS = ("batch", "tokens", "embed")


class TransformerBlock(nnx.Module):
    """``x += SelfAttn(LN x)``; ``x += CrossAttn(LN x, expression tokens)`` if ``cross``; ``x += MLP(LN x)``."""

    def __init__(self, settings: ModelSettings, cross: bool, *, rngs: nnx.Rngs):
        s, dtype = settings, settings.dtype
        self.self_norm = layer_norm(s.width, "embed", dtype=dtype, rngs=rngs, affine=s.layer_norm_affine)
        self.self_attention = SelfAttention(s, rngs=rngs)
        self.cross_norm = layer_norm(s.width, "embed", dtype=dtype, rngs=rngs, affine=s.layer_norm_affine) if cross else None
        self.cross_attention = CrossAttention(s, rngs=rngs) if cross else None
        self.mlp_norm = layer_norm(s.width, "embed", dtype=dtype, rngs=rngs, affine=s.layer_norm_affine)
        self.mlp = Mlp(s.width, s.mlp_width, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, expression_tokens: jax.Array | None, key_mask: jax.Array | None = None) -> jax.Array:
        """``x [B, L, width]``, ``expression_tokens [B, T, width]`` (unused without cross-attention),
        ``key_mask [B, L]`` (False: the token is not attended to; None: all are)."""
        x = with_logical_constraint(x + self.self_attention(self.self_norm(x), key_mask), TOKENS)
        if self.cross_attention is not None:
            x = with_logical_constraint(x + self.cross_attention(self.cross_norm(x), expression_tokens), TOKENS)
        return with_logical_constraint(x + self.mlp(self.mlp_norm(x)), TOKENS)


class BlockStack(nnx.Module):
    """``count`` blocks applied in order, with the configured remat policy.

    With ``settings.scan_layers`` the blocks' parameters are stacked on a leading ``layers`` axis
    (created by ``nnx.vmap``) and applied with ``nnx.scan``, so compile time does not grow with
    depth; otherwise they are a list unrolled in Python. Both give the same function.
    """

    def __init__(self, settings: ModelSettings, count: int, cross: bool, *, rngs: nnx.Rngs):
        self.count = count
        self.scan = settings.scan_layers
        self.remat_policy = settings.remat_policy
        if count == 0:
            self.blocks = nnx.List([])
        elif self.scan:

            @nnx.split_rngs(splits=count)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def create(rngs: nnx.Rngs) -> TransformerBlock:
                return TransformerBlock(settings, cross, rngs=rngs)

            self.blocks = create(rngs)
        else:
            self.blocks = nnx.List([TransformerBlock(settings, cross, rngs=rngs) for _ in range(count)])

    def __call__(self, x: jax.Array, expression_tokens: jax.Array | None, key_mask: jax.Array | None = None) -> jax.Array:
        if self.count == 0:
            return x

        def apply(block: TransformerBlock, x: jax.Array) -> jax.Array:
            return block(x, expression_tokens, key_mask)

        if self.remat_policy != "none":
            apply = nnx.remat(apply, policy=checkpoint_policy(self.remat_policy))
        if not self.scan:
            for block in self.blocks:
                x = apply(block, x)
            return x

        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def step(block: TransformerBlock, x: jax.Array) -> jax.Array:
            return apply(block, x)

        return step(self.blocks, x)
