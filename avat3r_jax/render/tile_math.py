"""Compositing math for one chunk of a tile's depth-sorted intersections, shared by every tiled backend.

Layout: 2D blocks ``[CH, P]``, a chunk's intersections by the tile's pixels; per-Gaussian values
are ``[CH, 1]`` columns, per-pixel state ``[1, P]`` rows. (The transposed ``[P, CH]`` layout was
slower in the Triton kernels, see docs/PERFORMANCE.md.) A splat table row packs one Gaussian as
seen from one view::

    (mean_x, mean_y, conic_a, conic_b, conic_c, opacity, feature_0, ..., feature_{F-1})

The Pallas kernels (Triton and TPU) and the plain-XLA path call these functions on their own
arrays, so the alpha rules and the gradient formulas exist once. ``cumsum`` is passed in because
the kernels differ in how they scan along the chunk axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from avat3r_jax.render.alpha import ALPHA_MAX, T_MIN, splat_alpha

NUM_GEOMETRY = 6  # table columns before the features
NUM_FEATURES = 4  # RGB + depth
TABLE_WIDTH = NUM_GEOMETRY + NUM_FEATURES
OPACITY_COLUMN = NUM_GEOMETRY - 1
COLOR_COLUMNS = slice(NUM_GEOMETRY, NUM_GEOMETRY + 3)
DEPTH_COLUMN = TABLE_WIDTH - 1  # the last feature: camera-space depth, composited for the depth map

Cumsum = Callable[[jax.Array], jax.Array]  # inclusive prefix sum along axis 0


def splat_table(means2d: jax.Array, conics: jax.Array, opacities: jax.Array, colors: jax.Array, depths: jax.Array) -> jax.Array:
    """The rows ``[..., TABLE_WIDTH]`` from ``means2d [..., 2]``, ``conics [..., 3]``, ``opacities [...]``,
    ``colors [..., 3]`` and ``depths [...]``."""
    return jnp.concatenate([means2d, conics, opacities[..., None], colors, depths[..., None]], -1)


def pixel_centres(tile: jax.Array, tiles_x: int, tile_size: int, shape: Sequence[int], first=0) -> tuple[jax.Array, jax.Array]:
    """Pixel-centre coordinates ``(x, y)`` of tile ``tile``'s pixels ``first, first + 1, ...`` (row-major
    in the tile), each of ``shape`` whose last axis runs over the pixels."""
    p = first + jax.lax.broadcasted_iota(jnp.int32, tuple(shape), len(shape) - 1)
    x = (tile % tiles_x) * tile_size + p % tile_size
    y = (tile // tiles_x) * tile_size + p // tile_size
    return x.astype(jnp.float32) + 0.5, y.astype(jnp.float32) + 0.5


class ForwardState(NamedTuple):
    transmittance: jax.Array  # per-pixel: product of (1 - alpha) over the contributors so far
    done: jax.Array  # per-pixel int32, 1 once the stop rule fired (int, not bool: portable loop carry)
    last: jax.Array  # per-pixel int32: 1 + position (in the tile's list) of the last contributor
    features: tuple[jax.Array, ...]  # F per-pixel arrays: sum of weight * feature


def initial_forward_state(shape: Sequence[int]) -> ForwardState:
    shape = tuple(shape)
    return ForwardState(
        transmittance=jnp.ones(shape, jnp.float32),
        done=jnp.zeros(shape, jnp.int32),
        last=jnp.zeros(shape, jnp.int32),
        features=tuple(jnp.zeros(shape, jnp.float32) for _ in range(NUM_FEATURES)),
    )


def forward_chunk(
    state: ForwardState,
    columns: Sequence[jax.Array],
    position: jax.Array,
    valid: jax.Array,
    pixel_x: jax.Array,
    pixel_y: jax.Array,
    cumsum: Cumsum,
) -> ForwardState:
    """Composites one chunk front to back.

    ``columns``: the ``TABLE_WIDTH`` per-Gaussian table columns; ``position``: each row's position
    in the tile's list; ``valid``: rows that belong to the tile; ``cumsum`` scans axis 0.
    """
    mean_x, mean_y, conic_a, conic_b, conic_c, opacity = columns[:NUM_GEOMETRY]
    alpha, _ = splat_alpha(pixel_x - mean_x, pixel_y - mean_y, conic_a, conic_b, conic_c, opacity)
    alpha = jnp.where(valid, alpha, 0.0)  # [CH, P] or [P, CH]
    log_keep = jnp.log1p(-alpha)
    inclusive = cumsum(log_keep)
    before = state.transmittance * jnp.exp(inclusive - log_keep)  # transmittance in front of each Gaussian
    # Stop rule: Gaussian i contributes while the transmittance after it stays >= T_MIN.
    contributes = (state.done == 0) & (before * (1.0 - alpha) >= T_MIN) & (alpha > 0)
    weight = jnp.where(contributes, alpha * before, 0.0)
    total = lambda x: jnp.sum(x, axis=0, keepdims=True)
    features = tuple(acc + total(weight * column) for acc, column in zip(state.features, columns[NUM_GEOMETRY:]))
    return ForwardState(
        transmittance=state.transmittance * jnp.exp(total(jnp.where(contributes, log_keep, 0.0))),
        done=jnp.maximum(state.done, (state.transmittance * jnp.exp(total(log_keep)) < T_MIN).astype(jnp.int32)),
        last=jnp.maximum(state.last, jnp.max(jnp.where(contributes, position + 1, 0), axis=0, keepdims=True)),
        features=features,
    )


class SavedPixels(NamedTuple):
    """Per-pixel inputs of the backward pass: the forward's saved state and its outputs' cotangents."""

    last: jax.Array  # 1 + position of the last contributor
    final_transmittance: jax.Array
    grad_features: Sequence[jax.Array]  # F cotangents of the composited features
    grad_transmittance: jax.Array


class BackwardState(NamedTuple):
    transmittance: jax.Array  # per-pixel transmittance after the chunk being processed
    behind: jax.Array  # per-pixel sum over later contributors of (g . feature) * alpha * T


def backward_chunk(
    state: BackwardState,
    columns: Sequence[jax.Array],
    position: jax.Array,
    valid: jax.Array,
    pixel_x: jax.Array,
    pixel_y: jax.Array,
    saved: SavedPixels,
    cumsum: Cumsum,
) -> tuple[BackwardState, tuple[jax.Array, ...]]:
    """Gradients of one chunk (chunks are visited back to front), reduced over the tile's pixels.

    Returns the new state and ``TABLE_WIDTH`` per-Gaussian gradients (one per table column).
    """
    last, final_transmittance, grad_features, grad_transmittance = saved
    mean_x, mean_y, conic_a, conic_b, conic_c, opacity = columns[:NUM_GEOMETRY]
    dx, dy = pixel_x - mean_x, pixel_y - mean_y
    alpha, gauss = splat_alpha(dx, dy, conic_a, conic_b, conic_c, opacity)
    contributes = valid & (position < last) & (alpha > 0)
    alpha = jnp.where(contributes, alpha, 0.0)  # [..., CH, P]
    log_keep = jnp.log1p(-alpha)
    inclusive = cumsum(log_keep)
    chunk_total = jnp.sum(log_keep, axis=0, keepdims=True)
    before = state.transmittance * jnp.exp(inclusive - log_keep - chunk_total)  # transmittance in front of each Gaussian
    visibility = alpha * before
    grad_dot_feature = sum(g * column for g, column in zip(grad_features, columns[NUM_GEOMETRY:]))
    contribution = visibility * grad_dot_feature
    contribution_total = jnp.sum(contribution, axis=0, keepdims=True)
    behind = state.behind + contribution_total - cumsum(contribution)  # later contributors of each Gaussian's pixel
    grad_alpha = grad_dot_feature * before - (behind + grad_transmittance * final_transmittance) / (1.0 - alpha)
    unclamped = contributes & (opacity * gauss < ALPHA_MAX)
    grad_q = jnp.where(unclamped, -0.5 * alpha * grad_alpha, 0.0)  # d alpha / d q = -alpha / 2
    reduce = lambda x: jnp.sum(x, axis=1, keepdims=True)
    grads = _conic_and_feature_grads(grad_q, grad_alpha, unclamped, gauss, visibility, dx, dy, columns, grad_features, reduce)
    new_state = BackwardState(transmittance=state.transmittance * jnp.exp(-chunk_total), behind=state.behind + contribution_total)
    return new_state, grads


def forward_step(
    state: ForwardState, columns: Sequence[jax.Array], position: jax.Array, valid: jax.Array, pixel_x: jax.Array, pixel_y: jax.Array
) -> ForwardState:
    """Composites one Gaussian (scalar ``columns``, ``position``, ``valid``) over per-pixel state.

    The sequential form of :func:`forward_chunk` for kernels that hold a pixel per thread: no scan,
    no logarithms; the same stop rule (contribute while the transmittance after stays >= T_MIN).
    A row that is not ``valid`` gets opacity 0 (one scalar select, not one per pixel): its alpha is 0.
    """
    mean_x, mean_y, conic_a, conic_b, conic_c, opacity = columns[:NUM_GEOMETRY]
    opacity = jnp.where(valid, opacity, 0.0)
    alpha, _ = splat_alpha(pixel_x - mean_x, pixel_y - mean_y, conic_a, conic_b, conic_c, opacity)
    after = state.transmittance * (1.0 - alpha)
    contributes = (state.done == 0) & (after >= T_MIN) & (alpha > 0)
    weight = jnp.where(contributes, alpha * state.transmittance, 0.0)
    return ForwardState(
        transmittance=jnp.where(contributes, after, state.transmittance),
        done=jnp.maximum(state.done, (after < T_MIN).astype(jnp.int32)),
        last=jnp.where(contributes, position + 1, state.last),
        features=tuple(acc + weight * column for acc, column in zip(state.features, columns[NUM_GEOMETRY:])),
    )


def backward_step(
    state: BackwardState,
    columns: Sequence[jax.Array],
    position: jax.Array,
    pixel_x: jax.Array,
    pixel_y: jax.Array,
    saved: SavedPixels,
) -> tuple[BackwardState, tuple[jax.Array, ...], jax.Array]:
    """One Gaussian of :func:`backward_chunk` (visited back to front), sequential form.

    Per-pixel arrays as in :func:`backward_chunk`; ``columns`` and ``position`` are the Gaussian's
    scalars. Rows past the tile's list need no mask: their positions are at least every pixel's
    ``last``. The transmittance in front of the Gaussian is recovered by one division.
    Returns the new state, the ``TABLE_WIDTH`` per-pixel gradient terms (their sums over the pixels
    are the Gaussian's gradients) and the per-pixel mask of where the Gaussian contributes (all
    terms are zero elsewhere).
    """
    last, final_transmittance, grad_features, grad_transmittance = saved
    mean_x, mean_y, conic_a, conic_b, conic_c, opacity = columns[:NUM_GEOMETRY]
    dx, dy = pixel_x - mean_x, pixel_y - mean_y
    alpha, gauss = splat_alpha(dx, dy, conic_a, conic_b, conic_c, opacity)
    contributes = (position < last) & (alpha > 0)
    alpha = jnp.where(contributes, alpha, 0.0)
    inverse_keep = 1.0 / (1.0 - alpha)
    before = state.transmittance * inverse_keep
    visibility = alpha * before
    grad_dot_feature = sum(g * column for g, column in zip(grad_features, columns[NUM_GEOMETRY:]))
    grad_alpha = grad_dot_feature * before - (state.behind + grad_transmittance * final_transmittance) * inverse_keep
    unclamped = contributes & (opacity * gauss < ALPHA_MAX)
    grad_q = jnp.where(unclamped, -0.5 * alpha * grad_alpha, 0.0)
    pixel_grads = _conic_and_feature_grads(grad_q, grad_alpha, unclamped, gauss, visibility, dx, dy, columns, grad_features, lambda x: x)
    return BackwardState(transmittance=before, behind=state.behind + visibility * grad_dot_feature), pixel_grads, contributes


def _conic_and_feature_grads(grad_q, grad_alpha, unclamped, gauss, visibility, dx, dy, columns, grad_features, reduce):
    """Per-Gaussian gradients of the table columns from the per-pixel ``d loss / d q`` and ``d loss / d alpha``."""
    conic_a, conic_b, conic_c = columns[2:5]
    return (
        reduce(-2.0 * grad_q * (conic_a * dx + conic_b * dy)),
        reduce(-2.0 * grad_q * (conic_b * dx + conic_c * dy)),
        reduce(grad_q * dx * dx),
        reduce(2.0 * grad_q * dx * dy),
        reduce(grad_q * dy * dy),
        reduce(jnp.where(unclamped, grad_alpha * gauss, 0.0)),
        *(reduce(visibility * g) for g in grad_features),
    )


def tiles_to_image(tiles: jax.Array, image_size: tuple[int, int], tile_size: int) -> jax.Array:
    """``[V, num_tiles, P, ...]`` (row-major tiles, row-major pixels) -> ``[V, H, W, ...]`` cropped to the image."""
    height, width = image_size
    rows, cols = -(-height // tile_size), -(-width // tile_size)
    trailing = tiles.shape[3:]
    grid = tiles.reshape((tiles.shape[0], rows, cols, tile_size, tile_size) + trailing)
    grid = jnp.swapaxes(grid, 2, 3).reshape((tiles.shape[0], rows * tile_size, cols * tile_size) + trailing)
    return grid[:, :height, :width]


def image_to_tiles(image: jax.Array, tile_size: int) -> jax.Array:
    """Inverse of :func:`tiles_to_image`: ``[V, H, W, ...]`` -> ``[V, num_tiles, P, ...]``, zero-padded."""
    views, height, width = image.shape[:3]
    trailing = image.shape[3:]
    rows, cols = -(-height // tile_size), -(-width // tile_size)
    pad = [(0, 0), (0, rows * tile_size - height), (0, cols * tile_size - width)] + [(0, 0)] * len(trailing)
    grid = jnp.pad(image, pad).reshape((views, rows, tile_size, cols, tile_size) + trailing)
    return jnp.swapaxes(grid, 2, 3).reshape((views, rows * cols, tile_size * tile_size) + trailing)
