"""Plain-XLA tiled compositor: per tile, a fixed window of its sorted intersections, chunk by chunk.

Every tile of every view advances one chunk per step of a ``lax.scan``; a step whose chunk lies
past every tile's window, or finds every pixel stopped, is skipped with ``lax.cond``. Gradients
come from autodiff, with each step rematerialised (only the per-pixel state is saved per step).
Intersections past a tile's window are not rendered and are counted as dropped.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from avat3r_jax.render.binning import Bins, BinStats
from avat3r_jax.render.tile_math import TABLE_WIDTH, ForwardState, forward_chunk, initial_forward_state, pixel_centres, tiles_to_image

_ELEMENTS_PER_STEP = 1 << 22  # bound on the [V, tiles, CH, P] arrays of one step


def composite_xla(
    table: jax.Array, bins: Bins, image_size: tuple[int, int], tile_size: int, window: int
) -> tuple[jax.Array, jax.Array, BinStats]:
    """``table [V, N, TABLE_WIDTH]`` composited through ``bins`` -> features ``[V, H, W, F]``,
    transmittance ``[V, H, W]`` and the stats with window overflow added to the dropped count."""
    views = table.shape[0]
    num_tiles = bins.tile_ranges.shape[1] - 1
    pixels = tile_size * tile_size
    chunk = max(1, min(window, _ELEMENTS_PER_STEP // (views * num_tiles * pixels)))
    steps = -(-window // chunk)
    starts = bins.tile_ranges[:, :-1, None, None]  # [V, T, 1, 1]
    counts = jnp.diff(bins.tile_ranges, axis=1)  # [V, T]
    limit = jnp.minimum(counts, window)[:, :, None, None]
    pixel_x, pixel_y = pixel_centres(
        jnp.arange(num_tiles)[:, None, None], -(-image_size[1] // tile_size), tile_size, (num_tiles, 1, pixels)
    )
    offsets = jnp.arange(chunk, dtype=jnp.int32)[:, None]  # [CH, 1]
    gather_rows = jax.vmap(lambda rows, index: rows[index])

    @jax.checkpoint
    def composite_step(state: ForwardState, step) -> ForwardState:
        position = step * chunk + offsets  # [CH, 1]
        valid = position < limit  # [V, T, CH, 1]
        slots = jnp.minimum(starts + position, bins.gaussian_ids.shape[1] - 1)[..., 0]  # [V, T, CH]
        ids = jnp.take_along_axis(bins.gaussian_ids, slots.reshape(views, -1), axis=1)
        rows = gather_rows(table, ids).reshape(views, num_tiles, chunk, TABLE_WIDTH)
        columns = [rows[..., d, None] for d in range(TABLE_WIDTH)]
        return forward_chunk(state, columns, position, valid, pixel_x, pixel_y, functools.partial(jnp.cumsum, axis=-2))

    longest = jnp.max(limit)

    def scan_step(state: ForwardState, step):
        active = (step * chunk < longest) & (jnp.min(state.done) == 0)
        return jax.lax.cond(active, composite_step, lambda s, _: s, state, step), None

    state, _ = jax.lax.scan(scan_step, initial_forward_state((views, num_tiles, 1, pixels)), jnp.arange(steps))
    features = jnp.stack(state.features, -1)[:, :, 0]  # [V, T, P, F]
    stats = BinStats(
        intersections=bins.stats.intersections - _overflow(counts, window),
        overflow_gaussians=bins.stats.overflow_gaussians,
        dropped_intersections=bins.stats.dropped_intersections + _overflow(counts, window),
    )
    return (
        tiles_to_image(features, image_size, tile_size),
        tiles_to_image(state.transmittance[:, :, 0], image_size, tile_size),
        stats,
    )


def _overflow(counts: jax.Array, window: int) -> jax.Array:
    return jnp.sum(jnp.maximum(counts - window, 0), axis=1).astype(jnp.int32)
