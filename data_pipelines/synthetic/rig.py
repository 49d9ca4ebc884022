"""A dome of calibrated pinhole cameras around the head (mostly frontal to side views)."""

from __future__ import annotations

import jax
import numpy as np

from avat3r_jax import geometry

_GOLDEN = 0.6180339887498949
# Jitted once per camera count (eagerly, every jnp op inside would compile on its own).
_look_at = jax.jit(geometry.look_at)
_make_intrinsics = jax.jit(geometry.make_intrinsics)


def dome_cameras(
    rng: np.random.Generator,
    num_cameras: int,
    resolution: int,
    *,
    distance: float = 1.0,
    distance_jitter: float = 0.05,
    focal_jitter: float = 0.05,
    focal_ratio: float = 3.0,
    yaw_range_degrees: tuple[float, float] = (-80.0, 80.0),
    elevation_range_degrees: tuple[float, float] = (-15.0, 30.0),
) -> tuple[np.ndarray, np.ndarray]:
    """``K [C, 3, 3]`` and OpenCV ``world_to_cam [C, 4, 4]`` (float32) looking at the head.

    Yaw 0 looks at the face (camera on +z). Yaws spread evenly over ``yaw_range_degrees`` and
    elevations follow a golden-ratio sequence over ``elevation_range_degrees``, each jittered by a few
    degrees; distances and focal lengths are scaled by ``1 + U(-jitter, jitter)``. ``focal_ratio`` is
    the focal length in units of the image size (3.0 frames about 0.33 m at 1 m).
    """
    if num_cameras < 1:
        raise ValueError(f"num_cameras must be >= 1, got {num_cameras}")
    i = np.arange(num_cameras)
    u = (i + 0.5) / num_cameras
    yaw = np.deg2rad(yaw_range_degrees[0] + u * (yaw_range_degrees[1] - yaw_range_degrees[0]) + rng.uniform(-3, 3, num_cameras))
    v = (0.5 + i * _GOLDEN) % 1.0
    lo, hi = elevation_range_degrees
    elevation = np.deg2rad(lo + v * (hi - lo) + rng.uniform(-3, 3, num_cameras))
    radius = distance * (1.0 + rng.uniform(-distance_jitter, distance_jitter, num_cameras))
    direction = np.stack([np.cos(elevation) * np.sin(yaw), np.sin(elevation), np.cos(elevation) * np.cos(yaw)], -1)
    target = np.array([0.0, -0.01, 0.0]) + rng.uniform(-0.01, 0.01, (num_cameras, 3))
    eye = target + radius[:, None] * direction
    world_to_cam = np.asarray(_look_at(eye.astype(np.float32), target.astype(np.float32)), np.float32)
    focal = resolution * focal_ratio * (1.0 + rng.uniform(-focal_jitter, focal_jitter, num_cameras))
    center = resolution / 2.0 + rng.uniform(-0.01, 0.01, (num_cameras, 2)) * resolution
    K = np.asarray(_make_intrinsics(focal, focal, center[:, 0], center[:, 1]), np.float32)
    return K, world_to_cam
