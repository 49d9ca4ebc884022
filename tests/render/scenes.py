"""Random test scenes for the rasterizer tests (tiny sizes: interpret mode and dense references are slow)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from avat3r_jax.gaussians import Gaussians
from avat3r_jax.geometry import Cameras, intrinsics_from_fov, orbit_cameras

IMAGE_SIZE = (20, 28)  # non-square, neither side a multiple of 16


def random_cameras(rng: np.random.Generator, num_cameras: int, image_size=IMAGE_SIZE, batch=(), radius: float = 2.5) -> Cameras:
    """Cameras on a jittered orbit around the origin, batch ``batch + (C,)``."""
    height, width = image_size
    shape = tuple(batch) + (num_cameras,)
    elevation = float(rng.uniform(-20, 20))
    w2c = np.asarray(orbit_cameras(int(np.prod(shape)), radius, elevation, azimuth_range_degrees=(10.0, 370.0)))
    K = np.asarray(intrinsics_from_fov(40.0, height, width))
    K = np.broadcast_to(K, w2c.shape[:-2] + (3, 3)).copy()
    K[..., :2, 2] += rng.uniform(-1.5, 1.5, size=K.shape[:-2] + (2,))  # off-centre principal points
    return Cameras(jnp.asarray(K.reshape(shape + (3, 3)), jnp.float32), jnp.asarray(w2c.reshape(shape + (4, 4)), jnp.float32))


def random_gaussians(rng: np.random.Generator, n: int, batch=(), spread: float = 1.2, behind: Cameras | None = None) -> Gaussians:
    """Anisotropic Gaussians in a ball of radius ``spread`` (wide enough to straddle the image border).

    With ``behind``, the last few Gaussians are moved behind (and around) those cameras' centres.
    """
    shape = tuple(batch) + (n,)
    direction = rng.normal(size=shape + (3,))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    means = direction * spread * rng.uniform(0.0, 1.0, size=shape + (1,)) ** (1 / 3)
    if behind is not None:
        centers = np.asarray(behind.centers).reshape(-1, 3)
        count = min(3, n)
        means[..., n - count :, :] = 1.2 * centers[np.arange(count) % len(centers)] + rng.normal(scale=0.05, size=(count, 3))
    log_scales = np.log(rng.uniform(0.02, 0.18, size=shape + (3,)))
    quaternions = rng.normal(size=shape + (4,))
    opacity_logits = rng.normal(0.5, 1.5, size=shape)
    colors = rng.uniform(0.0, 1.0, size=shape + (3,))
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return Gaussians.create(f32(means), f32(log_scales), f32(quaternions), f32(opacity_logits), f32(colors))
