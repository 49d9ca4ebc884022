"""Per-pixel camera rays and their Plücker coordinates."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from avat3r_jax.geometry.cameras import invert_rigid, pixel_grid


def camera_rays(K: jax.Array, world_to_cam: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """Ray origins and unit directions in world space, each ``[..., H, W, 3]``, through pixel centres."""
    uv = pixel_grid(height, width, K.dtype)  # [H, W, 2]
    k_inv = jnp.linalg.inv(K[..., :2, :2])  # [..., 2, 2]
    xy = jnp.einsum("...ij,...hwj->...hwi", k_inv, uv - K[..., None, None, :2, 2])
    cam_dirs = jnp.concatenate([xy, jnp.ones_like(xy[..., :1])], -1)
    c2w = invert_rigid(world_to_cam)
    dirs = jnp.einsum("...ij,...hwj->...hwi", c2w[..., :3, :3], cam_dirs)
    dirs = dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True)
    origins = jnp.broadcast_to(c2w[..., None, None, :3, 3], dirs.shape)
    return origins, dirs


def plucker_rays(K: jax.Array, world_to_cam: jax.Array, height: int, width: int) -> jax.Array:
    """Plücker ray map ``[..., H, W, 6]``: unit direction ``d`` then moment ``o x d``."""
    origins, dirs = camera_rays(K, world_to_cam, height, width)
    return jnp.concatenate([dirs, jnp.cross(origins, dirs)], -1)
