"""Sphere tracing of the procedural head with simple shading (independent of the Gaussian rasterizer).

Every pixel's ray goes through its pixel centre (``geometry.camera_rays``), so the hit point of a
foreground pixel projects back onto that centre: the position map is exact by construction.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from avat3r_jax import geometry
from data_pipelines.synthetic import head, sdf

BOUND_CENTER = (0.0, -0.03, 0.0)
BOUND_RADIUS = 0.3  # Encloses the head, hair and neck for every identity and expression.
_HIT_EPSILON = 1e-3  # metres
_RELAXATION = 0.8  # Step fraction of the distance bound (the SDF is only approximately 1-Lipschitz).
# numpy, not jnp: a JAX operation at import time would initialise a backend in every process that
# imports this module (Grain's worker processes re-import the main program).
_FILL_LIGHT = np.array([-0.7, 0.1, 0.45], np.float32) / np.linalg.norm([-0.7, 0.1, 0.45]).astype(np.float32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RenderedViews:
    """Per-pixel outputs of ``C`` cameras."""

    image: jax.Array  # [C, H, W, 3] in [0, 1], composited over the background colour
    alpha: jax.Array  # [C, H, W] 1 on the head, 0 elsewhere
    position: jax.Array  # [C, H, W, 3] world xyz of the surface hit, 0 on the background
    label: jax.Array  # [C, H, W] int32 surface label (head.LABEL_NAMES), BACKGROUND where missed


def _trace(origins: sdf.Vec3, directions: sdf.Vec3, distance_fn, steps: int) -> tuple[jax.Array, jax.Array]:
    """Fixed-step sphere tracing of rays ``[N]`` inside the bounding sphere.

    Returns the depth ``t [N]`` (clamped to where the ray leaves the sphere) and whether the ray
    crosses the sphere at all ``[N]``; callers test the surface distance at ``t`` for a hit.
    """
    offset = sdf.sub(origins, BOUND_CENTER)
    b = offset[0] * directions[0] + offset[1] * directions[1] + offset[2] * directions[2]
    disc = b * b - (offset[0] ** 2 + offset[1] ** 2 + offset[2] ** 2 - BOUND_RADIUS**2)
    root = jnp.sqrt(jnp.maximum(disc, 0.0))
    t_near, t_far = jnp.maximum(-b - root, 0.0), -b + root

    def step(_, t):
        point = tuple(o + t * d for o, d in zip(origins, directions, strict=True))
        return jnp.minimum(t + _RELAXATION * distance_fn(point), t_far)

    t = jax.lax.fori_loop(0, steps, step, t_near)
    return t, (disc > 0) & (t < t_far)


_TETRAHEDRON = ((0.0, 0.0, 0.0), (1.0, -1.0, -1.0), (-1.0, -1.0, 1.0), (-1.0, 1.0, -1.0), (1.0, 1.0, 1.0))


def _surface(p: sdf.Vec3, identity: head.Identity, expression: jax.Array, styled: bool, h: float = 5e-4) -> tuple[jax.Array, jax.Array]:
    """Surface distances ``[6, N]`` at ``p`` and unit normals ``[N, 3]`` from one vmapped evaluation.

    The normals are the tetrahedron finite-difference gradient of the head SDF (offsets ``h``).
    """
    offsets = jnp.array(_TETRAHEDRON)

    def distances(o):
        return head.part_distances(tuple(pi + h * oi for pi, oi in zip(p, o, strict=True)), identity, expression, styled)

    parts = jax.vmap(distances)(offsets)
    values = jnp.min(parts[1:], axis=1)  # [4, N] SDF at the tetrahedron corners
    gradient = values.T @ offsets[1:]
    return parts[0], gradient / jnp.maximum(jnp.linalg.norm(gradient, axis=-1, keepdims=True), 1e-12)


def _shade(albedo: jax.Array, normal: jax.Array, view_dir: jax.Array, label: jax.Array, identity: head.Identity) -> jax.Array:
    """Lambert key + fill light, ambient, and a Blinn-Phong highlight on eyes, lips, teeth and glasses; the key
    light's direction and the lights' colour are the identity's (``head.sample_styling``)."""
    key_light = identity.key_light
    diffuse = 0.3 + 0.6 * jnp.maximum(normal @ key_light, 0.0) + 0.25 * jnp.maximum(normal @ _FILL_LIGHT, 0.0)
    halfway = key_light - view_dir
    halfway = halfway / jnp.linalg.norm(halfway, axis=-1, keepdims=True)
    glossy = (label == head.EYE) | (label == head.LIP) | (label == head.TEETH) | (label == head.GLASSES)
    specular = jnp.where(glossy, 0.35, 0.05) * jnp.maximum(jnp.sum(normal * halfway, -1), 0.0) ** 32
    return jnp.clip(albedo * diffuse[:, None] * identity.light_rgb + specular[:, None], 0.0, 1.0)


def _render(
    identity: head.Identity,
    expression: jax.Array,
    K: jax.Array,
    world_to_cam: jax.Array,
    background: jax.Array,
    height: int,
    width: int,
    steps: int,
    styled: bool,
) -> RenderedViews:
    """``render_views`` unjitted: all ``C * H * W`` rays of one (identity, expression) as one flat batch;
    ``styled``: whether to evaluate the style pieces (``head.has_style_pieces``)."""
    num_cameras = K.shape[0]
    origins, directions = geometry.camera_rays(K, world_to_cam, height, width)  # [C, H, W, 3] each
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
    distance_fn = functools.partial(head.head_sdf, identity=identity, expression=expression, styled=styled)
    t, in_bounds = _trace(tuple(origins.T), tuple(directions.T), distance_fn, steps)
    points = origins + t[:, None] * directions
    p = tuple(points.T)
    parts, normals = _surface(p, identity, expression, styled)
    hit = in_bounds & (jnp.min(parts, 0) < _HIT_EPSILON)
    label = jnp.where(hit, jnp.asarray(head.SURFACE_LABELS)[jnp.argmin(parts, 0)], head.BACKGROUND)
    color = _shade(head.albedo(p, label, identity, expression), normals, directions, label, identity)
    image = jnp.where(hit[:, None], color, background)
    shape = (num_cameras, height, width)
    return RenderedViews(
        image=image.reshape(*shape, 3),
        alpha=hit.astype(jnp.float32).reshape(shape),
        position=jnp.where(hit[:, None], points, 0.0).reshape(*shape, 3),
        label=label.astype(jnp.int32).reshape(shape),
    )


# XLA:CPU's full (default) optimisation whatever XLA_FLAGS set (the test suite compiles at level 0):
# the sphere tracing loops run 64 steps of the whole SDF per pixel. The library's own programs take
# theirs from avat3r_jax.compile_options; data_pipelines uses only geometry and spec of the library.
_CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 3}


@functools.cache
def _jitted(batched: bool):
    """``_render`` jitted (vmapped over identities, expressions and cameras if ``batched``), built at the
    first call: the platform is not looked up at import (see ``_FILL_LIGHT``)."""
    fn = jax.vmap(_render, in_axes=(0, 0, 0, 0, None, None, None, None, None)) if batched else _render
    options = _CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else {}
    return jax.jit(fn, static_argnums=(5, 6, 7, 8), compiler_options=options)


def render_views(
    identity: head.Identity,
    expression: jax.Array,
    K: jax.Array,
    world_to_cam: jax.Array,
    background: jax.Array,
    *,
    height: int,
    width: int,
    steps: int = 64,
) -> RenderedViews:
    """Renders one identity in one expression ``[P]`` from cameras ``K [C, 3, 3]``, ``world_to_cam [C, 4, 4]``.

    Returns ``RenderedViews`` with leading dim ``[C]``; ``background [3]`` fills missed pixels. Jitted
    per shape and per whether the identity has style pieces (without, their SDF is not evaluated).
    """
    styled = head.has_style_pieces(identity)
    return _jitted(batched=False)(identity, expression, K, world_to_cam, background, height, width, steps, styled)


def render_batch(
    identities: head.Identity,
    expressions: jax.Array,
    K: jax.Array,
    world_to_cam: jax.Array,
    background: jax.Array,
    *,
    height: int,
    width: int,
    steps: int = 64,
) -> RenderedViews:
    """``render_views`` of ``B`` (identity, expression, cameras) in one jitted call on the default device.

    Every ``identities`` field has a leading ``[B]``; ``expressions [B, P]``, ``K [B, C, 3, 3]``,
    ``world_to_cam [B, C, 4, 4]``, ``background [3]``. Returns ``RenderedViews`` with leading ``[B, C]``.
    """
    styled = head.has_style_pieces(identities)
    return _jitted(batched=True)(identities, expressions, K, world_to_cam, background, height, width, steps, styled)
