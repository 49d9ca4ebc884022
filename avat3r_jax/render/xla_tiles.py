"""Plain-XLA tiled compositor: every tile's sorted intersections, cut into chunks, composited at once.

The chunks of all tiles of all views form one flat work list ``[W, CH]`` (a tile owns
``ceil(count / CH)`` consecutive items), so no work is spent on padding to the busiest tile. Each
item composites its chunk densely over the tile's pixels; the transmittance in front of an item
is a segmented (per-tile) exclusive scan of the items' log-transmittances, which also decides the
stop rule. Gradients come from autodiff. Cost and memory scale with the intersection buffer
(``capacity`` rows per view), so size it to the scene.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from avat3r_jax.render.alpha import T_MIN, splat_alpha
from avat3r_jax.render.binning import Bins, BinStats
from avat3r_jax.render.tile_math import NUM_GEOMETRY, pixel_centres, tiles_to_image


def composite_xla(
    table: jax.Array, bins: Bins, image_size: tuple[int, int], tile_size: int, chunk: int = 8
) -> tuple[jax.Array, jax.Array, BinStats]:
    """``table [V, N, D]`` composited through ``bins`` -> features ``[V, H, W, F]``, transmittance ``[V, H, W]``."""
    views, capacity = bins.gaussian_ids.shape
    num_tiles = bins.tile_ranges.shape[1] - 1
    tiles_x = -(-image_size[1] // tile_size)
    pixels = tile_size * tile_size
    items = views * (-(-capacity // chunk) + num_tiles)  # bound on sum over tiles of ceil(count / CH)

    counts = jnp.diff(bins.tile_ranges, axis=1).reshape(-1)  # [V*T]
    item_counts = -(-counts // chunk)
    item_ends = jnp.cumsum(item_counts)
    item_starts = item_ends - item_counts
    first_item = jnp.where(item_counts > 0, item_starts, items)
    owner = jnp.zeros(items, jnp.int32).at[first_item].max(jnp.arange(views * num_tiles, dtype=jnp.int32), mode="drop")
    owner = jax.lax.cummax(owner)  # [W] flat (view, tile) index of each item
    item = jnp.arange(items, dtype=jnp.int32)
    used = item < item_ends[-1]
    rank = item - item_starts[owner]  # which chunk of its tile
    view, tile = owner // num_tiles, owner % num_tiles

    position = rank[:, None] * chunk + jnp.arange(chunk, dtype=jnp.int32)  # [W, CH]
    valid = used[:, None] & (position < counts[owner][:, None])
    slot = jnp.minimum(bins.tile_ranges[view, tile][:, None] + position, capacity - 1)
    rows = table[view[:, None], bins.gaussian_ids[view[:, None], slot]]  # [W, CH, D]
    pixel_x, pixel_y = pixel_centres(tile[:, None, None], tiles_x, tile_size, (items, 1, pixels))

    column = lambda d: rows[:, :, d, None]  # [W, CH, 1]
    alpha, _ = splat_alpha(pixel_x - column(0), pixel_y - column(1), column(2), column(3), column(4), column(5))
    alpha = jnp.where(valid[..., None], alpha, 0.0)  # [W, CH, P]
    log_keep = jnp.log1p(-alpha)
    inclusive = jnp.cumsum(log_keep, axis=1)
    in_front = _segmented_exclusive_sum(inclusive[:, -1], rank == 0)  # [W, P] log-transmittance before the item
    before = in_front[:, None] + inclusive - log_keep  # [W, CH, P]
    contributes = (alpha > 0) & (before + log_keep >= jnp.log(T_MIN))
    weight = jnp.where(contributes, alpha * jnp.exp(before), 0.0)
    item_features = jnp.einsum("wcp,wcf->wpf", weight, rows[:, :, NUM_GEOMETRY:], precision=jax.lax.Precision.HIGHEST)
    item_log_t = jnp.sum(jnp.where(contributes, log_keep, 0.0), axis=1)  # [W, P]

    segments = jnp.where(used, owner, views * num_tiles)  # unused items land in a dropped segment
    features = jax.ops.segment_sum(item_features, segments, num_segments=views * num_tiles)
    transmittance = jnp.exp(jax.ops.segment_sum(item_log_t, segments, num_segments=views * num_tiles))
    features = features.reshape(views, num_tiles, pixels, -1)
    transmittance = transmittance.reshape(views, num_tiles, pixels)
    return tiles_to_image(features, image_size, tile_size), tiles_to_image(transmittance, image_size, tile_size), bins.stats


def _segmented_exclusive_sum(values: jax.Array, starts: jax.Array) -> jax.Array:
    """Exclusive prefix sums of ``values [W, ...]`` restarting where ``starts [W]`` is true."""

    def combine(a, b):
        (a_sum, a_start), (b_sum, b_start) = a, b
        return jnp.where(b_start[:, None], b_sum, a_sum + b_sum), a_start | b_start

    inclusive, _ = jax.lax.associative_scan(combine, (values, starts))
    return inclusive - values
