"""Rendered procedural heads as "photos" with their true cameras, shared by the front-end and launch tests."""

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from data_pipelines.synthetic import head, render, rig


@dataclasses.dataclass(frozen=True)
class Shoot:
    """Photos of one procedural head: ``images [V, S, S, 3]``, ``alpha [V, S, S]``, true head-frame maps and cameras."""

    images: np.ndarray
    alpha: np.ndarray
    position: np.ndarray  # [V, S, S, 3] true surface points (head frame, 0 off the head)
    K: np.ndarray  # [V, 3, 3]
    world_to_cam: np.ndarray  # [V, 4, 4]


@functools.lru_cache(maxsize=4)
def shoot(views: int = 4, size: int = 48, seed: int = 3) -> Shoot:
    """``views`` photos of one random head from the training rig (cached: rendering compiles once per shape)."""
    rng = np.random.default_rng(seed)
    identity = head.sample_identity(rng)
    K, world_to_cam = rig.dome_cameras(rng, views, size)
    rendered = render.render_views(
        identity, jnp.asarray(head.NEUTRAL_EXPRESSION), K, world_to_cam, jnp.ones(3), height=size, width=size, steps=32
    )
    return Shoot(
        np.asarray(rendered.image), np.asarray(rendered.alpha), np.asarray(rendered.position), np.asarray(K), np.asarray(world_to_cam)
    )
