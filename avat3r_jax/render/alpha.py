"""The per-pixel splat opacity shared by every backend (one formula, one operation order)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from avat3r_jax.render.project import ALPHA_MAX, ALPHA_MIN


def splat_alpha(dx: jax.Array, dy: jax.Array, conic_a, conic_b, conic_c, opacity) -> tuple[jax.Array, jax.Array]:
    """``(alpha, gauss)`` for pixel offsets ``d = pixel - mean`` (broadcastable arrays).

    ``gauss = exp(-q / 2)`` with ``q = d^T [[A, B], [B, C]] d``; ``alpha = min(opacity * gauss, 0.99)``,
    set to 0 where it is under 1/255 (the skip rule).
    """
    q = conic_a * dx * dx + conic_c * dy * dy + 2.0 * conic_b * dx * dy
    gauss = jnp.exp(-0.5 * q)
    alpha = jnp.minimum(opacity * gauss, ALPHA_MAX)
    return jnp.where(alpha >= ALPHA_MIN, alpha, 0.0), gauss
