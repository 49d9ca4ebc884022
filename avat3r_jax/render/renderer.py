"""Public entry point: render batches of Gaussian avatars into batches of cameras."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from avat3r_jax.gaussians import Gaussians
from avat3r_jax.geometry import Cameras
from avat3r_jax.render.binning import BinStats, bin_gaussians, tiles_touched
from avat3r_jax.render.pallas_tpu import TpuKernels
from avat3r_jax.render.pallas_triton import TritonKernels
from avat3r_jax.render.project import Projection, covariances_3d, project
from avat3r_jax.render.reference import composite_dense
from avat3r_jax.render.tile_math import splat_table
from avat3r_jax.render.tiled import TileKernels, composite_pallas
from avat3r_jax.render.xla_tiles import composite_xla

BACKENDS = ("auto", "pallas", "pallas_interpret", "xla", "reference")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RenderOutput:
    images: jax.Array  # [..., C, H, W, 3] composited over the background
    alpha: jax.Array  # [..., C, H, W, 1] accumulated opacity, 1 - final transmittance
    depth: jax.Array  # [..., C, H, W, 1] expected depth: sum(weight * z) / alpha (0 where alpha is 0)
    stats: BinStats  # fields [..., C] int32


# A compositor maps the scene (means [..., N, 3], covariances [..., N, 3, 3], opacities [..., N], colours
# [..., C, N, 3], K [..., C, 3, 3], world_to_cam [..., C, 4, 4]) and the static settings to the views flattened,
# V = prod(...) * C: (features [V, H, W, F], transmittance [V, H, W], BinStats [V]).
Compositor = Callable[..., tuple[jax.Array, jax.Array, BinStats]]


def rasterize(
    gaussians: Gaussians,
    cameras: Cameras,
    image_size: tuple[int, int],
    background: jax.Array,
    *,
    backend: str = "auto",
    tile_size: int = 16,
    max_tiles_per_gaussian: int = 16,
    near: float = 0.01,
    far: float = 100.0,
    max_intersections: int | None = None,
) -> RenderOutput:
    """Renders ``gaussians`` (batch ``[...]``, ``N`` each) into ``cameras`` (batch ``[..., C]``).

    ``background`` is ``[3]`` or broadcastable to ``[..., C, 3]``. ``backend``: ``auto`` (Pallas on
    GPU/TPU, ``xla`` on CPU), ``pallas``, ``pallas_interpret``, ``xla`` or ``reference``.
    ``max_intersections`` is the per-view buffer of (Gaussian, tile) pairs (default
    ``N * min(max_tiles_per_gaussian, number of tiles)``, which never overflows).
    """
    height, width = _check_inputs(gaussians, cameras, image_size, tile_size, max_tiles_per_gaussian, near, far)
    compositor = _compositor(backend)
    # The rasterizer computes in full float32: on GPUs, matrix products would otherwise default to TF32.
    with jax.default_matmul_precision("highest"):
        return _rasterize(
            gaussians, cameras, (height, width), background, compositor, tile_size, max_tiles_per_gaussian, near, far, max_intersections
        )


def _rasterize(gaussians, cameras, image_size, background, compositor, tile_size, max_tiles_per_gaussian, near, far, max_intersections):
    height, width = image_size
    num_tiles = math.ceil(height / tile_size) * math.ceil(width / tile_size)
    num_gaussians = gaussians.count
    capacity = max_intersections or num_gaussians * min(max_tiles_per_gaussian, num_tiles)

    lead = jnp.broadcast_shapes(gaussians.batch_shape, cameras.batch_shape[:-1])
    views = lead + (cameras.batch_shape[-1],)
    colors = gaussians.colors_from(cameras.centers)  # [..., C, N, 3]
    covariances = covariances_3d(gaussians.scales, gaussians.quaternions)
    composited, transmittance, stats = compositor(
        (gaussians.means, covariances, gaussians.opacities, colors, cameras.K, cameras.world_to_cam),
        (height, width),
        tile_size,
        max_tiles_per_gaussian,
        capacity,
        (near, far),
    )
    composited = composited.reshape(views + (height, width, 4))
    transmittance = transmittance.reshape(views + (height, width, 1))
    background = jnp.broadcast_to(jnp.asarray(background, composited.dtype), views + (3,))
    alpha = 1.0 - transmittance
    images = composited[..., :3] + transmittance * background[..., None, None, :]
    depth = jnp.where(alpha > 0, composited[..., 3:] / jnp.maximum(alpha, 1e-10), 0.0)
    stats = jax.tree.map(lambda s: s.reshape(views), stats)
    return RenderOutput(images=images, alpha=alpha, depth=depth, stats=stats)


def rasterize_with_config(
    gaussians: Gaussians, cameras: Cameras, image_size: tuple[int, int], render_config, background: jax.Array | None = None
) -> RenderOutput:
    """``rasterize`` with the fields of ``config.render`` (see avat3r_jax/config.py); ``background``
    (broadcastable to ``[..., C, 3]``) overrides ``render_config.background``."""
    return rasterize(
        gaussians,
        cameras,
        image_size,
        jnp.asarray(render_config.background if background is None else background, jnp.float32),
        backend=render_config.backend,
        tile_size=render_config.tile_size,
        max_tiles_per_gaussian=render_config.max_tiles_per_gaussian,
        near=render_config.near,
        far=render_config.far,
        max_intersections=render_config.get("max_intersections", None),
    )


# Lowering platforms (``jax.lax.platform_dependent``'s names) a rasterizer backend is chosen for.
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def resolve_backend(backend: str, platform: str | None = None) -> str:
    """``auto`` -> ``pallas`` on GPU/TPU, ``xla`` on CPU (for ``platform``, default: the default
    device's); other names are checked and returned."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown rasterizer backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        platform = jax.default_backend() if platform is None else platform
        return "pallas" if platform in ("gpu", "cuda", "rocm", "tpu") else "xla"
    return backend


def _compositor(backend: str) -> Compositor:
    """The compositor for ``backend``, chosen per lowering platform inside the traced function.

    Where the choice differs between platforms (``auto``, ``pallas``), every
    candidate is traced and ``jax.lax.platform_dependent`` keeps the one for the platform being
    lowered: one ``jax.export`` for ``("cpu", "cuda", "tpu")`` carries the XLA path, the Triton
    kernels and the Mosaic kernels, and a CPU host lowers the TPU kernels for a TPU target.
    """
    resolve_backend(backend)
    by_choice: dict[tuple[str, str], list[str]] = {}
    for platform in PLATFORMS:
        by_choice.setdefault(_kernel_choice(backend, platform), []).append(platform)
    default = _kernel_choice(backend, "default")
    if len(by_choice) == 1 and default in by_choice:
        return _compositor_for(*default)
    branches = {choice: _compositor_for(*choice) for choice in (*by_choice, default)}

    def compositor(scene, image_size, tile_size, max_tiles, capacity, depth_range):
        # One closure per choice: platform_dependent joins platforms that share a callable into one branch.
        static = dict(image_size=image_size, tile_size=tile_size, max_tiles=max_tiles, capacity=capacity, depth_range=depth_range)
        closures = {choice: functools.partial(composite, **static) for choice, composite in branches.items()}
        per_platform = {platform: closures[choice] for choice, platforms in by_choice.items() for platform in platforms}
        return jax.lax.platform_dependent(scene, default=closures[default], **per_platform)

    return compositor


def _kernel_choice(backend: str, platform: str) -> tuple[str, str]:
    """(backend, kernel flavour platform) for a lowering ``platform`` (``default``: any other)."""
    backend = resolve_backend(backend, "cpu" if platform == "default" else platform)
    if backend == "pallas":
        return backend, "tpu" if platform == "tpu" else "cuda"
    if backend == "pallas_interpret":
        # Interpret mode runs as plain XLA anywhere; the flavour is the host's. (Per-platform
        # branches would not lower: the TPU interpreter's callbacks are effects, which a
        # platform_dependent branch that is not lowered still declares.)
        return backend, "tpu" if jax.default_backend() == "tpu" else "cuda"
    return backend, ""


def _compositor_for(backend: str, kernel_platform: str) -> Compositor:
    if backend == "reference":
        return _composite_reference
    if backend == "xla":
        return functools.partial(_composite_tiled, composite_xla, None, None)
    kernels = pallas_kernels(kernel_platform, interpret=backend == "pallas_interpret")
    return functools.partial(_composite_tiled, functools.partial(composite_pallas, kernels), kernels.slot_writer(), kernels.splat_table())


def pallas_kernels(platform: str, interpret: bool) -> TileKernels:
    """The kernel flavour for a lowering ``platform``: Mosaic for ``tpu``, Triton otherwise.

    Both are imported with this module, not on first use: importing the Mosaic kernels registers a
    JAX config option that is part of the trace context, and a first trace that imported them made
    every function jitted before it (the train step) miss its cache on the next call and compile again.
    """
    if platform == "tpu":
        return TpuKernels(interpret=interpret)
    return TritonKernels(interpret=interpret)


def _project_views(scene, image_size, depth_range) -> tuple[Projection, jax.Array, jax.Array]:
    """The scene projected into every view, flattened to ``V`` views: the projection ``[V, N, ...]``,
    opacities ``[V, N]`` and colours ``[V, N, 3]``."""
    means, covariances, opacities, colors, K, world_to_cam = scene
    projection = project(means, covariances, opacities, K, world_to_cam, image_size, *depth_range)
    views = jnp.broadcast_shapes(means.shape[:-2], K.shape[:-3]) + K.shape[-3:-2]
    flat = lambda x, trailing: jnp.broadcast_to(x, views + x.shape[x.ndim - trailing :]).reshape((-1,) + x.shape[x.ndim - trailing :])
    projection = jax.tree.map(lambda x: flat(x, x.ndim - len(views)), projection)
    return projection, flat(opacities[..., None, :], 1), flat(colors, 2)


def _splat_table_xla(scene, image_size, depth_range) -> tuple[Projection, jax.Array]:
    """``tiled.SplatTable`` in XLA ops (differentiated by XLA)."""
    p, opacities, colors = _project_views(scene, image_size, depth_range)
    return p, splat_table(p.means2d, p.conics, opacities, colors, p.depths)


def _composite_tiled(composite, write_slots, table_of, scene, image_size, tile_size, max_tiles, capacity, depth_range):
    p, table = (table_of or _splat_table_xla)(scene, image_size, depth_range)
    bins = bin_gaussians(p.means2d, p.radii, p.depths, p.visible, image_size, tile_size, max_tiles, capacity, depth_range, write_slots)
    return composite(table, bins, image_size, tile_size)


def _composite_reference(scene, image_size, tile_size, max_tiles, capacity, depth_range):
    del capacity  # the dense reference renders every pair, sorted by its own depth order
    p, opacities, colors = _project_views(scene, image_size, depth_range)
    features = jnp.concatenate([colors, p.depths[..., None]], -1)  # RGB, depth
    composited, transmittance = composite_dense(p.means2d, p.conics, opacities, features, p.depths, p.visible, image_size)
    touched = tiles_touched(p.means2d, p.radii, p.visible, image_size, tile_size)
    stats = BinStats(
        intersections=jnp.sum(touched, -1).astype(jnp.int32),
        overflow_gaussians=jnp.sum(touched > max_tiles, -1).astype(jnp.int32),
        dropped_intersections=jnp.zeros(touched.shape[:-1], jnp.int32),
    )
    return composited, transmittance, stats


def _check_inputs(gaussians, cameras, image_size, tile_size, max_tiles, near, far) -> tuple[int, int]:
    if not isinstance(gaussians, Gaussians):
        raise TypeError(f"gaussians must be a Gaussians set, got {type(gaussians).__name__}")
    if not isinstance(cameras, Cameras):
        raise TypeError(f"cameras must be geometry.Cameras, got {type(cameras).__name__}")
    gaussians.validate()
    if len(cameras.batch_shape) < 1:
        raise ValueError(f"cameras need a camera axis: batch shape [..., C], got {cameras.batch_shape}")
    try:
        jnp.broadcast_shapes(gaussians.batch_shape, cameras.batch_shape[:-1])
    except ValueError as error:
        raise ValueError(
            f"Gaussian batch shape {gaussians.batch_shape} does not broadcast with camera batch shape {cameras.batch_shape[:-1]} (+ C)"
        ) from error
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"image_size must be (H, W) with positive sizes, got {image_size}")
    if tile_size < 1 or max_tiles < 1:
        raise ValueError(f"tile_size ({tile_size}) and max_tiles_per_gaussian ({max_tiles}) must be >= 1")
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    return int(image_size[0]), int(image_size[1])
