"""Absent input views: a batch keeps ``V`` view slots and ``input_view_valid [B, V]`` says which hold a view;
present views come first (the cuDNN attention path masks absent ones by length).

An absent view contributes nothing: its inputs are replaced by constants (black image, no position
map, no features, a fixed camera) before the tokenizer, so the output cannot depend on what its slot
holds; its tokens are masked out of self-attention as keys (:func:`token_mask`), so no present view
sees it; its pixels' Gaussians get zero opacity (``posmap_valid`` 0, and ``PixelAnchors.valid`` 0
without position maps). A batch with ``k`` present views in the first slots gives the Gaussians of
the same batch cut to ``k`` views, followed by the zero-opacity Gaussians of the absent slots.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from avat3r_jax.spec import Batch

VALIDITY_KEY = "input_view_valid"


def view_validity(batch: Batch) -> jax.Array | None:
    """``input_view_valid [B, V]`` as bool, or None when the batch has none (every view present)."""
    if VALIDITY_KEY not in batch:
        return None
    return batch[VALIDITY_KEY] > 0.5


def absent_camera(height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """The fixed camera of an absent slot: ``K [3, 3]`` (focal ``max(H, W)``, centred) and
    ``world_to_cam [4, 4]`` one metre in front of the world origin (finite rays and depths)."""
    focal = float(max(height, width))
    K = jnp.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]], jnp.float32)
    world_to_cam = jnp.eye(4, dtype=jnp.float32).at[2, 3].set(1.0)
    return K, world_to_cam


def without_absent_views(batch: Batch, valid: jax.Array) -> Batch:
    """``batch`` with the view entries of absent slots (``valid [B, V]`` False) set to constants."""
    height, width = batch["images"].shape[2:4]
    constants = dict(zip(("K", "world_to_cam"), absent_camera(height, width)))
    out = dict(batch)
    for key in ("images", "posmaps", "posmap_valid", "features", "K", "world_to_cam"):
        if key not in batch:
            continue
        value = batch[key]
        where = valid.reshape(valid.shape + (1,) * (value.ndim - 2))
        out[key] = jnp.where(where, value, constants.get(key, 0.0)).astype(value.dtype)
    return out


def token_mask(valid: jax.Array, tokens_per_view: int) -> jax.Array:
    """``[B, V] -> [B, V * tokens_per_view]`` bool, the order of ``patchify``'s tokens."""
    return jnp.repeat(valid, tokens_per_view, axis=1)


def pixel_validity(valid: jax.Array) -> jax.Array:
    """``[B, V] -> [B, V, 1, 1, 1]`` float32, broadcastable over a view's pixels."""
    return valid.astype(jnp.float32)[:, :, None, None, None]
