"""Signed distance primitives and combinators (pure ``jnp``, metres).

Points are ``Vec3 = (x, y, z)``, three arrays of the same shape (structure of arrays): on the CPU
XLA vectorises these element-wise expressions about 50x better than reductions over a trailing
axis of size 3. Centres, radii and sizes are triples of scalars (Python floats or 0-d arrays).

Several primitives (ellipsoid, smooth min) return bounds rather than exact distances; the sphere
tracer steps with a relaxation factor below one to stay safe.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Vec3 = tuple[jax.Array, jax.Array, jax.Array]


def length(v: Vec3) -> jax.Array:
    return jnp.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])


def sub(p: Vec3, c) -> Vec3:
    return (p[0] - c[0], p[1] - c[1], p[2] - c[2])


def sphere(p: Vec3, center, radius) -> jax.Array:
    return length(sub(p, center)) - radius


def ellipsoid(p: Vec3, center, radii) -> jax.Array:
    """Ellipsoid distance estimate ``k0 (k0 - 1) / k1`` (exact on the surface, a good bound near it)."""
    q = sub(p, center)
    k0 = length((q[0] / radii[0], q[1] / radii[1], q[2] / radii[2]))
    k1 = length((q[0] / (radii[0] * radii[0]), q[1] / (radii[1] * radii[1]), q[2] / (radii[2] * radii[2])))
    return k0 * (k0 - 1.0) / jnp.maximum(k1, 1e-9)


def capsule(p: Vec3, a, b, radius) -> jax.Array:
    """Segment ``a -> b`` swept by a sphere of ``radius``."""
    pa, ba = sub(p, a), sub(b, a)
    h = jnp.clip((pa[0] * ba[0] + pa[1] * ba[1] + pa[2] * ba[2]) / (ba[0] * ba[0] + ba[1] * ba[1] + ba[2] * ba[2]), 0.0, 1.0)
    return length((pa[0] - h * ba[0], pa[1] - h * ba[1], pa[2] - h * ba[2])) - radius


def torus_z(p: Vec3, center, major_radius, minor_radius) -> jax.Array:
    """Torus around the z axis through ``center`` (a ring in the xy plane): exact distance."""
    q = sub(p, center)
    ring = jnp.sqrt(q[0] * q[0] + q[1] * q[1]) - major_radius
    return jnp.sqrt(ring * ring + q[2] * q[2]) - minor_radius


def disc_z(p: Vec3, center, radius, half_thickness) -> jax.Array:
    """Capped cylinder along the z axis (a flat disc in the xy plane): exact distance."""
    q = sub(p, center)
    radial = jnp.sqrt(q[0] * q[0] + q[1] * q[1]) - radius
    axial = jnp.abs(q[2]) - half_thickness
    outside = jnp.sqrt(jnp.maximum(radial, 0.0) ** 2 + jnp.maximum(axial, 0.0) ** 2)
    return jnp.minimum(jnp.maximum(radial, axial), 0.0) + outside


def rounded_box(p: Vec3, center, half_size, rounding) -> jax.Array:
    q = [jnp.abs(pi - ci) - (hi - rounding) for pi, ci, hi in zip(p, center, half_size, strict=True)]
    outside = length(tuple(jnp.maximum(qi, 0.0) for qi in q))
    inside = jnp.minimum(jnp.maximum(jnp.maximum(q[0], q[1]), q[2]), 0.0)
    return outside + inside - rounding


def vertical_cylinder(p: Vec3, center, radius, half_height) -> jax.Array:
    """Capped cylinder along the y axis."""
    radial = jnp.sqrt((p[0] - center[0]) ** 2 + (p[2] - center[2]) ** 2) - radius
    axial = jnp.abs(p[1] - center[1]) - half_height
    outside = jnp.sqrt(jnp.maximum(radial, 0.0) ** 2 + jnp.maximum(axial, 0.0) ** 2)
    return jnp.minimum(jnp.maximum(radial, axial), 0.0) + outside


def smooth_min(a: jax.Array, b: jax.Array, k: float) -> jax.Array:
    """Polynomial smooth minimum blending surfaces within ``k`` metres of each other."""
    h = jnp.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def smooth_subtract(a: jax.Array, b: jax.Array, k: float) -> jax.Array:
    """``a`` with ``b`` carved out, blended over ``k`` metres."""
    return -smooth_min(-a, b, k)


def rotation_x(angle) -> jax.Array:
    c, s = jnp.cos(angle), jnp.sin(angle)
    return jnp.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rotation_y(angle) -> jax.Array:
    c, s = jnp.cos(angle), jnp.sin(angle)
    return jnp.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rotation_z(angle) -> jax.Array:
    c, s = jnp.cos(angle), jnp.sin(angle)
    return jnp.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotate_about(p: Vec3, rotation: jax.Array, pivot) -> Vec3:
    """Query point of a shape rotated by ``rotation [3, 3]`` about ``pivot``: ``R^T (p - pivot) + pivot``."""
    q = sub(p, pivot)
    return tuple(rotation[0, i] * q[0] + rotation[1, i] * q[1] + rotation[2, i] * q[2] + pivot[i] for i in range(3))
