"""Where each input pixel's Gaussian starts: position, size and colour before any prediction.

With position maps, pixel ``(u, v)`` of view ``i`` starts at ``posmaps[i, v, u]``. Untrusted pixels
(``posmap_valid == 0``: low DUSt3R confidence, or background) are masked as in AVAT3R: their Gaussians
get zero opacity, so the rasterizer culls them before binning; so do all pixels of absent views
(``input_view_valid == 0``, see ``view_mask.py``). Without position maps
(the "no posmap" ablation) it starts on its camera ray at the camera depth of the world origin
(the head centre in head space), and the head may move it along the ray. The initial size is
``init_scale_pixels`` pixels: a world-space standard deviation of ``init_scale_pixels * depth / f``
at the pixel's camera depth, so an untrained model renders a hole-free point cloud of its inputs at
any resolution and camera distance.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from avat3r_jax.geometry import camera_rays, pixel_grid, transform_points, unproject_points
from avat3r_jax.model.settings import ModelSettings
from avat3r_jax.model.tokenizer import posmap_validity
from avat3r_jax.model.view_mask import pixel_validity, view_validity
from avat3r_jax.spec import MIN_DEPTH


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PixelAnchors:
    """Per input pixel, float32: ``means [B, V, H, W, 3]``, ``log_scales [B, V, H, W, 1]``,
    ``colors [B, V, H, W, 3]``, unit ``ray_dirs [B, V, H, W, 3]`` (None with position maps) and
    ``valid [B, V, H, W, 1]`` (0 masks the pixel's Gaussian out)."""

    means: jax.Array
    log_scales: jax.Array
    colors: jax.Array
    ray_dirs: jax.Array | None
    valid: jax.Array


def pixel_anchors(batch: dict[str, jax.Array], settings: ModelSettings) -> PixelAnchors:
    images = batch["images"].astype(jnp.float32)
    b, v, height, width = images.shape[:4]
    K = batch["K"].astype(jnp.float32)  # [B, V, 3, 3]
    world_to_cam = batch["world_to_cam"].astype(jnp.float32)  # [B, V, 4, 4]
    valid = jnp.ones((b, v, height, width, 1), jnp.float32)
    if settings.use_posmap:
        valid = posmap_validity(batch)
        means = batch["posmaps"].astype(jnp.float32)
        depth = transform_points(world_to_cam, means.reshape(b, v, height * width, 3))[..., 2]  # [B, V, H*W]
        ray_dirs = None
    else:
        origin_depth = world_to_cam[..., 2, 3]  # [B, V]: camera z of the world origin.
        depth = jnp.broadcast_to(origin_depth[..., None], (b, v, height * width))
        uv = jnp.broadcast_to(pixel_grid(height, width).reshape(-1, 2), (b, v, height * width, 2))
        means = unproject_points(K, world_to_cam, uv, depth).reshape(b, v, height, width, 3)
        ray_dirs = camera_rays(K, world_to_cam, height, width)[1]
    view_valid = view_validity(batch)  # [B, V] or None
    if view_valid is not None:
        valid = valid * pixel_validity(view_valid)
    focal = 0.5 * (K[..., 0, 0] + K[..., 1, 1])  # [B, V]
    log_scales = jnp.log(settings.init_scale_pixels * jnp.maximum(depth, MIN_DEPTH) / focal[..., None])
    return PixelAnchors(means, log_scales.reshape(b, v, height, width, 1), images, ray_dirs, valid)
