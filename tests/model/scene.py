"""A synthetic input batch for the model tests: a textured sphere seen by cameras on an orbit.

Every pixel's ray hits the sphere (the cameras are close and narrow), so position maps are exact
ray-sphere intersections and images are the texture at those points.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from avat3r_jax.geometry import camera_rays, intrinsics_from_fov, orbit_cameras
from avat3r_jax.spec import ModelSpec, batch_shapes
from configs import tiny

RADIUS = 0.15  # metres, about a head
DISTANCE = 0.5  # camera distance from the centre
FOV_Y = 20.0  # degrees: narrow enough that the sphere fills the frame


def rngs(seed: int) -> nnx.Rngs:
    """Model-init randomness from an ``rbg`` key: its per-shape init ops compile about twice as fast on CPU."""
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def tiny_config(**model_overrides) -> ml_collections.ConfigDict:
    """configs/tiny.py (32x32, 2 views, width 64, depth 2) with ``model.*`` overrides."""
    config = tiny.get_config()
    for key, value in model_overrides.items():
        config.model[key] = value
    return config


def sphere_texture(points: np.ndarray, phase: float) -> np.ndarray:
    """A smooth RGB texture in [0.15, 0.85] on world points ``[..., 3]``."""
    return 0.5 + 0.35 * np.sin(40.0 * points + phase + np.array([0.0, 2.0, 4.0]))


def sphere_batch(config: ml_collections.ConfigDict, batch_size: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """A model batch: per example a random orbit start and texture phase; random features/expression."""
    rng = np.random.default_rng(seed)
    d = config.data
    views, height, width = d.num_input_views, d.image_height, d.image_width
    K = np.broadcast_to(np.asarray(intrinsics_from_fov(FOV_Y, height, width)), (batch_size, views, 3, 3))
    world_to_cam, posmaps, images = [], [], []
    for _ in range(batch_size):
        start = rng.uniform(0.0, 360.0)
        w2c = np.asarray(orbit_cameras(views, DISTANCE, float(rng.uniform(-15, 15)), azimuth_range_degrees=(start, start + 40.0 * views)))
        origins, dirs = (np.asarray(x, np.float64) for x in camera_rays(jnp.asarray(K[0]), jnp.asarray(w2c), height, width))
        b = np.sum(origins * dirs, -1)
        disc = b * b - (np.sum(origins * origins, -1) - RADIUS**2)
        assert (disc > 0).all(), "every ray must hit the sphere"
        points = origins + (-b - np.sqrt(disc))[..., None] * dirs
        world_to_cam.append(w2c)
        posmaps.append(points)
        images.append(sphere_texture(points, rng.uniform(0, 2 * np.pi)))
    f32 = lambda x: np.asarray(x, np.float32)
    shapes = batch_shapes(ModelSpec.from_config(config), batch_size)
    return {
        "images": f32(images),
        "posmaps": f32(posmaps),
        "posmap_valid": np.ones(*shapes["posmap_valid"]),
        "features": f32(rng.normal(size=shapes["features"].shape)),
        "K": f32(K),
        "world_to_cam": f32(world_to_cam),
        "expression": f32(rng.normal(size=shapes["expression"].shape)),
    }
