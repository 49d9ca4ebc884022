"""Per-pixel inputs of the input views and their patch tokens."""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from avat3r_jax.geometry import plucker_rays
from avat3r_jax.model.layers import DEFAULT_KERNEL_INIT, dense, layer_norm
from avat3r_jax.model.settings import ModelSettings
from avat3r_jax.sharding import partitioned, with_logical_constraint

PIXELS = ("batch", "views", "height", "width", "channels")


def pixel_inputs(batch: dict[str, jax.Array], settings: ModelSettings) -> jax.Array:
    """The per-pixel input ``[B, V, H, W, C]`` (float32) of ``settings.pixel_channels`` channels.

    RGB mapped to [-1, 1]; then (``use_posmap``) the position map divided by the head-space scale
    and zeroed where ``posmap_valid`` is 0, followed by the validity itself; then (``use_plucker``)
    the Plücker ray map (unit direction, moment).
    """
    images = batch["images"].astype(jnp.float32)
    height, width = images.shape[2:4]
    parts = [images * 2.0 - 1.0]
    if settings.use_posmap:
        valid = posmap_validity(batch)
        parts += [batch["posmaps"].astype(jnp.float32) / settings.posmap_scale * valid, valid]
    if settings.use_plucker:
        K, world_to_cam = batch["K"].astype(jnp.float32), batch["world_to_cam"].astype(jnp.float32)
        parts.append(plucker_rays(K, world_to_cam, height, width))
    return jnp.concatenate(parts, axis=-1)


def posmap_validity(batch: dict[str, jax.Array]) -> jax.Array:
    """``posmap_valid [B, V, H, W, 1]`` as float32, all ones when the batch has none."""
    if "posmap_valid" in batch:
        return batch["posmap_valid"].astype(jnp.float32)
    return jnp.ones(batch["posmaps"].shape[:-1] + (1,), jnp.float32)


def patchify(x: jax.Array, patch: int) -> jax.Array:
    """``[B, V, H, W, C] -> [B, V * (H/p) * (W/p), p * p * C]`` (views, then rows, then columns)."""
    return einops.rearrange(x, "b v (h p) (w q) c -> b (v h w) (p q c)", p=patch, q=patch)


def unpatchify(tokens: jax.Array, views: int, grid: tuple[int, int], patch: int) -> jax.Array:
    """Inverse of :func:`patchify`: ``[B, V * h * w, p * p * C] -> [B, V, h p, w p, C]``."""
    return einops.rearrange(tokens, "b (v h w) (p q c) -> b v (h p) (w q) c", v=views, h=grid[0], w=grid[1], p=patch, q=patch)


class Tokenizer(nnx.Module):
    """Patch tokens ``[B, V * h * w, width]`` of the per-pixel inputs, features and view identity."""

    def __init__(self, settings: ModelSettings, *, rngs: nnx.Rngs):
        s, dtype = settings, settings.dtype
        self.settings = s
        self.patch_embed = dense(s.patch_size**2 * s.pixel_channels, s.width, (None, "embed"), dtype=dtype, rngs=rngs)
        if s.use_features:
            self.feature_norm = layer_norm(s.feature_channels, None, dtype=dtype, rngs=rngs, affine=s.layer_norm_affine)
            self.feature_proj = dense(s.feature_channels, s.width, (None, "embed"), dtype=dtype, rngs=rngs)
        else:
            self.feature_norm = self.feature_proj = None
        if s.use_view_embedding:
            init = partitioned(DEFAULT_KERNEL_INIT, "views", "embed")
            self.view_embedding = nnx.Param(init(rngs.params(), (s.num_views, s.width), jnp.float32))
        else:
            self.view_embedding = None

    def __call__(self, pixels: jax.Array, features: jax.Array | None) -> jax.Array:
        """``pixels [B, V, H, W, C]``, ``features [B, V, h', w', F]`` (any size; None without features)."""
        s = self.settings
        num_views = pixels.shape[1]
        tokens = self.patch_embed(patchify(pixels.astype(s.dtype), s.patch_size))  # [B, V*h*w, width]
        if self.feature_proj is not None:
            tokens = tokens + self.feature_proj(self.feature_norm(self._features_on_grid(features)))
        if self.view_embedding is not None:
            if num_views > s.num_views:
                raise ValueError(f"{num_views} input views but the view embedding has data.num_input_views={s.num_views}")
            per_view = self.view_embedding[...][:num_views].astype(s.dtype)  # [V, width]
            tokens = tokens + jnp.repeat(per_view, s.grid[0] * s.grid[1], axis=0)[None]
        return with_logical_constraint(tokens, ("batch", "tokens", "embed"))

    def _features_on_grid(self, features: jax.Array) -> jax.Array:
        """Bilinearly resizes ``[B, V, h', w', F]`` to the patch grid -> tokens ``[B, V*h*w, F]``."""
        s = self.settings
        b, v = features.shape[:2]
        resized = jax.image.resize(features.astype(jnp.float32), (b, v, *s.grid, s.feature_channels), method="linear")
        return einops.rearrange(resized, "b v h w f -> b (v h w) f").astype(s.dtype)
