"""Quaternions (``w, x, y, z`` order, Hamilton convention) and 3D covariances."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def normalize_quaternion(q: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Unit quaternions ``[..., 4]``; the zero quaternion maps to identity instead of NaN."""
    norm_sq = jnp.sum(q * q, axis=-1, keepdims=True)
    identity = jnp.zeros_like(q).at[..., 0].set(1.0)
    safe = jnp.where(norm_sq > eps, q, identity)
    return safe * jax.lax.rsqrt(jnp.sum(safe * safe, axis=-1, keepdims=True))


def quaternion_to_rotation(q: jax.Array) -> jax.Array:
    """Rotation matrices ``[..., 3, 3]`` from (not necessarily unit) quaternions ``[..., 4]``."""
    w, x, y, z = jnp.moveaxis(normalize_quaternion(q), -1, 0)
    rows = [
        jnp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        jnp.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        jnp.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ]
    return jnp.stack(rows, -2)


def rotation_to_quaternion(rotation: jax.Array) -> jax.Array:
    """Unit quaternions ``[..., 4]`` with ``w >= 0`` from rotation matrices ``[..., 3, 3]``.

    Uses the numerically stable branch (largest of ``w, x, y, z``) per matrix.
    """
    m = rotation
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    trace = m00 + m11 + m22
    candidates = jnp.stack(
        [
            jnp.stack([1 + trace, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            jnp.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            jnp.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22, m[..., 1, 2] + m[..., 2, 1]], -1),
            jnp.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m00 - m11 + m22], -1),
        ],
        -2,
    )  # [..., 4, 4]: row i is 4 * q_i * q, exact when q_i is the largest component.
    diag = jnp.stack([1 + trace, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = jnp.argmax(diag, axis=-1)
    q = jnp.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
    q = normalize_quaternion(q)
    return jnp.where(q[..., :1] < 0, -q, q)


def quaternion_multiply(a: jax.Array, b: jax.Array) -> jax.Array:
    """Hamilton product ``a * b`` of quaternions ``[..., 4]`` (rotation ``b`` first, then ``a``)."""
    aw, ax, ay, az = jnp.moveaxis(a, -1, 0)
    bw, bx, by, bz = jnp.moveaxis(b, -1, 0)
    return jnp.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        -1,
    )


def covariance_from_scale_rotation(scales: jax.Array, quaternions: jax.Array) -> jax.Array:
    """3D covariances ``R diag(s^2) R^T [..., 3, 3]`` from scales ``[..., 3]`` and quaternions ``[..., 4]``."""
    rs = quaternion_to_rotation(quaternions) * scales[..., None, :]
    return rs @ jnp.swapaxes(rs, -1, -2)
