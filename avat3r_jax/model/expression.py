"""The expression code mapped to a few tokens that the blocks cross-attend to."""

from __future__ import annotations

import jax
from flax import nnx

from avat3r_jax.model.layers import dense, layer_norm
from avat3r_jax.model.settings import ModelSettings
from avat3r_jax.sharding import with_logical_constraint


class ExpressionEncoder(nnx.Module):
    """``expression [B, D] -> Linear -> GELU -> Linear -> [B, T, width] -> LayerNorm``."""

    def __init__(self, settings: ModelSettings, *, rngs: nnx.Rngs):
        s, dtype = settings, settings.dtype
        self.num_tokens, self.width, self.dtype = s.num_expression_tokens, s.width, dtype
        self.hidden = dense(s.expression_dim, s.width, (None, "embed"), dtype=dtype, rngs=rngs)
        self.to_tokens = dense(s.width, (s.num_expression_tokens, s.width), ("embed", "expression_tokens", None), dtype=dtype, rngs=rngs)
        self.norm = layer_norm(s.width, "embed", dtype=dtype, rngs=rngs, affine=s.layer_norm_affine)

    def __call__(self, expression: jax.Array) -> jax.Array:
        tokens = self.to_tokens(jax.nn.gelu(self.hidden(expression.astype(self.dtype))))  # [B, T, width]
        return with_logical_constraint(self.norm(tokens), ("batch", "expression_tokens", "embed"))
