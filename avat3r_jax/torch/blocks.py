"""Transformer blocks and the expression encoder in PyTorch, parameter for parameter as in ``avat3r_jax.model``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avat3r_jax.spec import ModelSpec

NORM_EPS = 1e-6  # Flax's LayerNorm/RMSNorm default (PyTorch's LayerNorm default is 1e-5).


def gelu(x: torch.Tensor) -> torch.Tensor:
    """``jax.nn.gelu``'s default: the tanh approximation."""
    return F.gelu(x, approximate="tanh")


def layer_norm(width: int, affine: bool) -> nn.LayerNorm:
    return nn.LayerNorm(width, eps=NORM_EPS, elementwise_affine=affine)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention on ``[B, L, N, D]`` layouts (scale ``D^-1/2``) -> ``[B, Lq, N * D]``."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    def __init__(self, s: ModelSpec):
        super().__init__()
        self.shape = (s.num_heads, s.head_dim)
        self.qkv = nn.Linear(s.width, 3 * s.width)
        self.q_norm = nn.RMSNorm(s.head_dim, eps=NORM_EPS) if s.qk_norm else None
        self.k_norm = nn.RMSNorm(s.head_dim, eps=NORM_EPS) if s.qk_norm else None
        self.out = nn.Linear(s.width, s.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, L, width] -> [B, L, width]``."""
        q, k, v = self.qkv(x).unflatten(-1, (3, *self.shape)).unbind(2)  # each [B, L, N, D]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return self.out(attention(q, k, v))


class CrossAttention(nn.Module):
    def __init__(self, s: ModelSpec):
        super().__init__()
        self.shape = (s.num_heads, s.head_dim)
        self.q = nn.Linear(s.width, s.width)
        self.kv = nn.Linear(s.width, 2 * s.width)
        self.q_norm = nn.RMSNorm(s.head_dim, eps=NORM_EPS) if s.qk_norm else None
        self.k_norm = nn.RMSNorm(s.head_dim, eps=NORM_EPS) if s.qk_norm else None
        self.out = nn.Linear(s.width, s.width)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``x [B, L, width]`` attends to ``context [B, T, width]``."""
        q = self.q(x).unflatten(-1, self.shape)
        k, v = self.kv(context).unflatten(-1, (2, *self.shape)).unbind(2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return self.out(attention(q, k, v))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(gelu(self.up(x)))


class TransformerBlock(nn.Module):
    """Pre-norm: self-attention, then (if ``cross``) cross-attention to the expression tokens, then the MLP."""

    def __init__(self, s: ModelSpec, cross: bool):
        super().__init__()
        self.self_norm = layer_norm(s.width, s.layer_norm_affine)
        self.self_attention = SelfAttention(s)
        self.cross_norm = layer_norm(s.width, s.layer_norm_affine) if cross else None
        self.cross_attention = CrossAttention(s) if cross else None
        self.mlp_norm = layer_norm(s.width, s.layer_norm_affine)
        self.mlp = Mlp(s.width, s.mlp_width)

    def forward(self, x: torch.Tensor, expression_tokens: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attention(self.self_norm(x))
        if self.cross_attention is not None:
            x = x + self.cross_attention(self.cross_norm(x), expression_tokens)
        return x + self.mlp(self.mlp_norm(x))


class ExpressionEncoder(nn.Module):
    """``expression [B, D] -> Linear -> GELU -> Linear -> [B, T, width] -> LayerNorm``."""

    def __init__(self, s: ModelSpec):
        super().__init__()
        self.num_tokens, self.width = s.num_expression_tokens, s.width
        self.hidden = nn.Linear(s.expression_dim, s.width)
        self.to_tokens = nn.Linear(s.width, s.num_expression_tokens * s.width)
        self.norm = layer_norm(s.width, s.layer_norm_affine)

    def forward(self, expression: torch.Tensor) -> torch.Tensor:
        tokens = self.to_tokens(gelu(self.hidden(expression))).unflatten(-1, (self.num_tokens, self.width))
        return self.norm(tokens)
