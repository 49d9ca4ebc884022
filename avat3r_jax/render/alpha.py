"""The per-pixel splat opacity shared by every backend (one formula, one operation order)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

ALPHA_MIN = 1.0 / 255.0  # Contributions with smaller alpha are skipped.
ALPHA_MAX = 0.99  # Alpha is clamped to this.
T_MIN = 1e-4  # Compositing stops before transmittance falls under this.
LOG2_E = math.log2(math.e)


def splat_alpha(dx: jax.Array, dy: jax.Array, conic_a, conic_b, conic_c, opacity) -> tuple[jax.Array, jax.Array]:
    """``(alpha, gauss)`` for pixel offsets ``d = pixel - mean`` (broadcastable arrays).

    ``gauss = exp(-q / 2)`` with ``q = d^T [[A, B], [B, C]] d``; ``alpha = min(opacity * gauss, ALPHA_MAX)``,
    set to 0 where it is under ``ALPHA_MIN`` (the skip rule).
    """
    q = conic_a * dx * dx + conic_c * dy * dy + 2.0 * conic_b * dx * dy
    return _clamped(opacity, jnp.exp(-0.5 * q))


def exponent_coefficients(conic_a, conic_b, conic_c) -> tuple:
    """Per-Gaussian ``(a2, b2, c2)`` with ``exp(-q / 2) = exp2(dx (a2 dx + b2 dy) + c2 dy^2)``: the
    conic pre-scaled once per Gaussian, so that a pixel pays four multiply-adds and one ``exp2``."""
    return -0.5 * LOG2_E * conic_a, -LOG2_E * conic_b, -0.5 * LOG2_E * conic_c


def splat_alpha_exp2(dx: jax.Array, dy: jax.Array, coefficients, opacity) -> tuple[jax.Array, jax.Array]:
    """:func:`splat_alpha` from :func:`exponent_coefficients` (the same value up to float32 rounding)."""
    a2, b2, c2 = coefficients
    return _clamped(opacity, jnp.exp2(dx * (a2 * dx + b2 * dy) + c2 * dy * dy))


def _clamped(opacity, gauss: jax.Array) -> tuple[jax.Array, jax.Array]:
    alpha = jnp.minimum(opacity * gauss, ALPHA_MAX)
    return jnp.where(alpha >= ALPHA_MIN, alpha, 0.0), gauss
