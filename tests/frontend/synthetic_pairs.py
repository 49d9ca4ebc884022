"""Synthetic DUSt3R pair predictions with known truth: a head-sized ellipsoid inside a background dome.

Cameras orbit the head at 1 m with focal 3x the image width (the procedural dataset's rig); every pixel
hits the head or the dome, so true world point maps are exact. Pair predictions are those points in
view i's camera frame, perturbed: a random similarity per pair (log-uniform scale in [0.5, 2], by default a
0.5 degree rotation and 1 cm translation), Gaussian noise, and confidences high on the head and low on the dome.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from avat3r_jax import geometry
from avat3r_jax.frontend.pairs import PairPredictions, ordered_pairs

HEAD_RADII = np.array([0.08, 0.11, 0.095])  # metres
DOME_RADIUS = 0.5


@dataclasses.dataclass(frozen=True)
class Scene:
    K: np.ndarray  # [V, 3, 3] float64
    world_to_cam: np.ndarray  # [V, 4, 4]
    points: np.ndarray  # [V, H, W, 3] world
    head: np.ndarray  # [V, H, W] bool


def _ray_ellipsoid(origin, direction):
    o, d = origin / HEAD_RADII, direction / HEAD_RADII
    a, b, c = (d * d).sum(-1), 2 * (o * d).sum(-1), (o * o).sum(-1) - 1
    disc = b * b - 4 * a * c
    return np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.nan)


def _ray_dome(origin, direction):  # unit directions, origin inside the dome: the far hit
    b, c = 2 * (origin * direction).sum(-1), (origin * origin).sum(-1) - DOME_RADIUS**2
    return (-b + np.sqrt(b * b - 4 * c)) / 2


@functools.partial(jax.jit, static_argnums=0)
def _orbit(num_views: int) -> jax.Array:
    return geometry.orbit_cameras(num_views, 1.0, 10.0, azimuth_range_degrees=(-50.0, 50.0))


def make_scene(num_views: int, height: int = 24, width: int = 32, seed: int = 0, principal_offset=(0.0, 0.0)) -> Scene:
    rng = np.random.default_rng(seed)
    w2c = np.asarray(_orbit(num_views), np.float64)
    focal = 3.0 * width * (1 + rng.uniform(-0.05, 0.05, num_views))
    K = np.zeros((num_views, 3, 3))
    K[:, 0, 0], K[:, 1, 1], K[:, 2, 2] = focal, focal, 1.0
    K[:, :2, 2] = np.array([width / 2, height / 2]) + principal_offset
    v_idx, u_idx = np.mgrid[:height, :width]
    uv = np.stack([u_idx, v_idx], -1) + 0.5  # pixel centres at +0.5
    points, head = [], []
    for v in range(num_views):
        c2w = np.linalg.inv(w2c[v])
        rays = np.concatenate([(uv - K[v, :2, 2]) / focal[v], np.ones((height, width, 1))], -1) @ c2w[:3, :3].T
        rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
        origin = np.broadcast_to(c2w[:3, 3], rays.shape)
        t_head = _ray_ellipsoid(origin, rays)
        hit = np.isfinite(t_head)
        points.append(origin + np.where(hit, t_head, _ray_dome(origin, rays))[..., None] * rays)
        head.append(hit)
    return Scene(K, w2c, np.stack(points), np.stack(head))


def _rotation(rng, max_degrees):
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(0, max_degrees))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def pair_predictions(
    scene: Scene, seed: int = 0, noise_m: float = 0.002, rotation_degrees: float = 0.5, translation_m: float = 0.01
) -> PairPredictions:
    """All ordered pairs of the scene's views; dome pixels get 5x the noise and low confidence."""
    rng = np.random.default_rng(seed)
    pairs = ordered_pairs(len(scene.world_to_cam))
    out = {k: [] for k in ("pts_i", "conf_i", "pts_j", "conf_j")}
    for i, j in pairs:
        scale = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
        rotation, translation = _rotation(rng, rotation_degrees), rng.normal(size=3) * translation_m
        for side, v in (("i", i), ("j", j)):
            cam = scene.points[v] @ scene.world_to_cam[i, :3, :3].T + scene.world_to_cam[i, :3, 3]
            cam = cam + rng.normal(size=cam.shape) * np.where(scene.head[v], noise_m, 5 * noise_m)[..., None]
            out["pts_" + side].append(scale * (cam @ rotation.T + translation))
            logit = np.where(scene.head[v], rng.normal(1.5, 0.5, scene.head[v].shape), rng.normal(-1.0, 0.5, scene.head[v].shape))
            out["conf_" + side].append(1 + np.exp(logit))
    return PairPredictions(**{k: jnp.asarray(np.stack(x), jnp.float32) for k, x in out.items()}, pairs=pairs)
