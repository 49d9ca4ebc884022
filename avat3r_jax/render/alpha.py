"""The per-pixel splat opacity shared by every backend (one formula, one operation order)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

ALPHA_MIN = 1.0 / 255.0  # Contributions with smaller alpha are skipped.
ALPHA_MAX = 0.99  # Alpha is clamped to this.
T_MIN = 1e-4  # Compositing stops before transmittance falls under this.


def splat_alpha(dx: jax.Array, dy: jax.Array, conic_a, conic_b, conic_c, opacity) -> tuple[jax.Array, jax.Array]:
    """``(alpha, gauss)`` for pixel offsets ``d = pixel - mean`` (broadcastable arrays).

    ``gauss = exp(-q / 2)`` with ``q = d^T [[A, B], [B, C]] d``; ``alpha = min(opacity * gauss, ALPHA_MAX)``,
    set to 0 where it is under ``ALPHA_MIN`` (the skip rule).
    """
    q = conic_a * dx * dx + conic_c * dy * dy + 2.0 * conic_b * dx * dy
    gauss = jnp.exp(-0.5 * q)
    alpha = jnp.minimum(opacity * gauss, ALPHA_MAX)
    return jnp.where(alpha >= ALPHA_MIN, alpha, 0.0), gauss
