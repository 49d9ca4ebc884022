"""Tile binning with static shapes: (tile, depth)-sorted Gaussian/tile intersections per view.

Each visible Gaussian covers a rectangle of tiles (from its footprint box). It emits at most
``max_tiles_per_gaussian`` of them (row-major from the top-left) into a buffer of ``capacity``
slots, filled in depth order so that one stable sort by tile yields (tile, depth) order. Both sorts
run once for all views (keys ``view * span + depth bits`` and ``view * (tiles + 1) + tile``). What
does not fit is counted in :class:`BinStats`, never dropped silently. The slots are written by a
:data:`SlotWriter` from each depth rank's run (:class:`RankedSlots`): XLA ops by default, a kernel
where the flavour has one (``TritonKernels.write_slots``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BinStats:
    """Per-view counts ``[V]`` (int32)."""

    intersections: jax.Array  # (Gaussian, tile) pairs that are rendered
    overflow_gaussians: jax.Array  # Gaussians touching more tiles than max_tiles_per_gaussian
    dropped_intersections: jax.Array  # pairs not rendered: tile overflow, buffer overflow (and the xla window cap)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Bins:
    """Sorted intersections of ``V`` views over ``num_tiles`` tiles, ``M`` buffer slots each."""

    gaussian_ids: jax.Array  # [V, M] int32, sorted by (tile, depth); slots past tile_ranges[-1] hold 0
    tile_ranges: jax.Array  # [V, num_tiles + 1] int32: tile t owns slots [ranges[t], ranges[t + 1])
    stats: BinStats
    # Where each Gaussian's intersections went, for gathering per-intersection values back per Gaussian:
    # Gaussian n filled the unsorted slots [emit_start[n], emit_start[n] + emit_count[n]), and unsorted
    # slot j holds the intersection at sorted position sorted_position[j].
    emit_start: jax.Array  # [V, N] int32
    emit_count: jax.Array  # [V, N] int32, at most max_tiles_per_gaussian; 0 for Gaussians not rendered
    sorted_position: jax.Array  # [V, M] int32
    # The same per depth rank, and the other direction: rank r is Gaussian rank_gaussian[r] and filled the
    # unsorted slots [rank_start[r], rank_start[r] + rank_counts(bins)[r]); sorted position p came from unsorted slot emitted_slot[p].
    rank_gaussian: jax.Array  # [V, N] int32
    rank_start: jax.Array  # [V, N] int32, non-decreasing (each rank's run follows the one before)
    emitted_slot: jax.Array  # [V, M] int32
    max_tiles_per_gaussian: int = dataclasses.field(metadata=dict(static=True))  # the bound on emit_count


def sorted_rows(table: jax.Array, bins: Bins) -> jax.Array:
    """The splat table ``[V, N, D]`` gathered into per-intersection rows ``[V, M, D]`` in sorted order."""
    return jax.vmap(lambda rows, ids: rows[ids])(table, bins.gaussian_ids)


def rank_counts(bins: Bins) -> jax.Array:
    """Slots ``[V, N]`` each depth rank filled: from one first slot to the next (the last rank's run ends
    at the view's rendered total), cut at the buffer's end. Derived, not stored: one array fewer kept
    from the forward pass for the backward."""
    capacity = bins.gaussian_ids.shape[1]
    start = bins.rank_start
    end = jnp.concatenate([start[:, 1:], bins.stats.intersections[:, None]], 1)
    return jnp.minimum(end, capacity) - jnp.minimum(start, capacity)


def gather_per_gaussian(values: jax.Array, bins: Bins) -> jax.Array:
    """Sums per-intersection ``values [V, M, D]`` (in sorted order) per Gaussian -> ``[V, N, D]``.

    A gather with a fixed summation order: deterministic, unlike a scatter-add.
    """

    def one_view(values, start, count, sorted_position):
        k = jnp.arange(bins.max_tiles_per_gaussian, dtype=jnp.int32)
        take = k < count[:, None]  # [N, K]
        rows = values[sorted_position[jnp.where(take, start[:, None] + k, 0)]]  # [N, K, D]
        return jnp.sum(jnp.where(take[..., None], rows, 0.0), axis=1)

    return jax.vmap(one_view)(values, bins.emit_start, bins.emit_count, bins.sorted_position)


def tile_grid(image_size: tuple[int, int], tile_size: int) -> tuple[int, int]:
    """Number of tile rows and columns covering ``(H, W)``."""
    height, width = image_size
    return math.ceil(height / tile_size), math.ceil(width / tile_size)


def tile_rectangles(
    means2d: jax.Array, radii: jax.Array, visible: jax.Array, image_size: tuple[int, int], tile_size: int
) -> tuple[jax.Array, jax.Array]:
    """Tile rectangles ``[..., N, 2]`` as (min corner, exclusive max corner) in (column, row) tile units.

    Empty (zero area) for invisible Gaussians.
    """
    rows, cols = tile_grid(image_size, tile_size)
    limit = jnp.array([cols, rows], jnp.int32)
    lo = jnp.clip(jnp.floor((means2d - radii) / tile_size).astype(jnp.int32), 0, limit)
    hi = jnp.clip(jnp.floor((means2d + radii) / tile_size).astype(jnp.int32) + 1, 0, limit)
    hi = jnp.where(visible[..., None], hi, lo)
    return lo, hi


def tiles_touched(means2d, radii, visible, image_size, tile_size) -> jax.Array:
    """Number of tiles ``[..., N]`` (int32) each Gaussian's footprint covers."""
    lo, hi = tile_rectangles(means2d, radii, visible, image_size, tile_size)
    extent = jnp.maximum(hi - lo, 0)
    return extent[..., 0] * extent[..., 1]


def bin_gaussians(
    means2d: jax.Array,
    radii: jax.Array,
    depths: jax.Array,
    visible: jax.Array,
    image_size: tuple[int, int],
    tile_size: int,
    max_tiles_per_gaussian: int,
    capacity: int,
    depth_range: tuple[float, float] | None = None,
    write_slots: SlotWriter | None = None,
) -> Bins:
    """Bins ``V`` views: ``means2d [V, N, 2]``, ``radii [V, N, 2]``, ``depths [V, N]``, ``visible [V, N]``.

    ``depth_range``: ``(near, far)`` bounds on the depths of visible Gaussians (as :func:`project`
    culls them), which lets all views' depths go through one sort. ``write_slots``: what fills the
    slots (default :func:`write_slots_xla`; a kernel flavour may bring its own).
    """
    if capacity < 1 or max_tiles_per_gaussian < 1:
        raise ValueError(f"capacity ({capacity}) and max_tiles_per_gaussian ({max_tiles_per_gaussian}) must be >= 1")
    rows, cols = tile_grid(image_size, tile_size)
    means2d, radii, depths, visible = jax.lax.stop_gradient((means2d, radii, depths, visible))
    by_depth = sort_by_depth(depths, visible, depth_range)
    ranked = jax.vmap(lambda m, r, o, v: _rank_view(m, r, o, v, image_size, tile_size, max_tiles_per_gaussian, capacity))(
        means2d, radii, by_depth, visible
    )
    tile, owner = (write_slots or write_slots_xla)(ranked.slots, capacity, cols)
    used = jnp.arange(capacity, dtype=jnp.int32) < ranked.total[:, None]  # [V, M]
    tile = jnp.where(used, tile, rows * cols)  # unused slots sort last
    order, sorted_tile = sort_slots_by_tile(tile, rows * cols)
    finish = lambda r, o, order, t: _finish_view(r, o, order, t, rows * cols, max_tiles_per_gaussian)
    return jax.vmap(finish)(ranked, owner, order, sorted_tile)


# Largest key and flat index of a single sort over all views; past it each view is sorted alone.
FLAT_SORT_LIMIT = 2**31 - 1
# Flat tile keys below this go through the sort as uint16 (a radix sort then makes 2 passes instead of 4).
SHORT_KEY_LIMIT = 2**16
# jnp.searchsorted's method for the tile ranges: the binary search unrolled into one pass ("scan" is a
# while loop of log2(M) steps, each its own small kernels on the GPU).
TILE_SEARCH = "scan_unrolled"


def sort_by_depth(depths: jax.Array, visible: jax.Array, depth_range: tuple[float, float] | None) -> jax.Array:
    """Each view's Gaussians ``[V, N]`` (int32 indices) front to back, invisible ones last (stable).

    Positive float32 depths sort like their int32 bit patterns. Within ``depth_range`` those
    patterns span fewer than ``2**27`` values (near 0.01, far 100), so with the view in the high
    part of the key one 1D sort orders all views, where XLA would run ``V`` batched sorts.
    """
    views, count = depths.shape
    bits = jax.lax.bitcast_convert_type(depths.astype(jnp.float32), jnp.int32)
    if depth_range is not None:
        if not 0 < depth_range[0] < depth_range[1]:
            raise ValueError(f"depth_range must be (near, far) with 0 < near < far, got {depth_range}")
        lowest, highest = (int(np.float32(d).view(np.int32)) for d in depth_range)
        span = highest - lowest + 2  # visible keys 0 .. highest - lowest, then the invisible key
        if max(views * span, views * count) <= FLAT_SORT_LIMIT:
            key = jnp.where(visible, jnp.clip(bits - lowest, 0, span - 2), span - 1)
            view = jnp.arange(views, dtype=jnp.int32)[:, None]
            order = jnp.argsort((view * span + key).reshape(-1), stable=True).astype(jnp.int32)
            return order.reshape(views, count) - view * count
    key = jnp.where(visible, bits, jnp.iinfo(jnp.int32).max)
    return jnp.argsort(key, axis=-1, stable=True).astype(jnp.int32)


def sort_slots_by_tile(tile: jax.Array, num_tiles: int) -> tuple[jax.Array, jax.Array]:
    """The stable order ``[V, M]`` (slot indices within each view) that sorts each view's slots by
    ``tile [V, M]`` (ids ``0 .. num_tiles``; ``num_tiles`` marks unused slots), and the sorted tiles.

    One 1D sort of ``view * (num_tiles + 1) + tile`` keys over all views: every view keeps its own
    block of ``M`` sorted slots, and one long sort is cheaper on a GPU than ``V`` batched ones. Keys
    that fit in 16 bits are sorted as uint16 (at 8 views of 64 x 64 tiles: 32,776 keys), which halves
    the radix sort's passes. The sorted keys come out of the same sort, so the sorted tiles need no gather.
    """
    views, slots = tile.shape
    if max(views * (num_tiles + 1), views * slots) > FLAT_SORT_LIMIT:
        index = jax.lax.broadcasted_iota(jnp.int32, tile.shape, 1)
        sorted_tile, order = jax.lax.sort((tile, index), dimension=1, num_keys=1, is_stable=True)
        return order, sorted_tile
    view = jnp.arange(views, dtype=jnp.int32)[:, None]
    keys = (view * (num_tiles + 1) + tile).reshape(-1)
    if views * (num_tiles + 1) <= SHORT_KEY_LIMIT:
        keys = keys.astype(jnp.uint16)
    sorted_keys, order = jax.lax.sort((keys, jnp.arange(views * slots, dtype=jnp.int32)), num_keys=1, is_stable=True)
    sorted_tile = sorted_keys.astype(jnp.int32).reshape(views, slots) - view * (num_tiles + 1)
    return order.reshape(views, slots) - view * slots, sorted_tile


class RankedSlots(NamedTuple):
    """What each Gaussian emits, per depth rank ``[V, N]`` (rank ``i``: the ``i``-th nearest Gaussian).

    Rank ``i`` fills slots ``start[i], ..., start[i] + count[i] - 1`` (those below the capacity) with
    tiles ``(lo_y + k // width) * cols + lo_x + k % width`` for ``k < count[i]``: its tile rectangle row-major.
    """

    gaussian: jax.Array  # int32 Gaussian index of each rank
    start: jax.Array  # int32 first slot
    count: jax.Array  # int32 slots emitted (before the capacity cut)
    lo_x: jax.Array  # int32 tile column of the rectangle's first tile
    lo_y: jax.Array  # int32 tile row
    width: jax.Array  # int32 rectangle width in tiles, >= 1


# (ranked slots [V, N], capacity, tile columns) -> tile id [V, M] and owning Gaussian [V, M] of every slot
# below the emitted total (values past it are arbitrary).
SlotWriter = Callable[[RankedSlots, int, int], tuple[jax.Array, jax.Array]]


def write_slots_xla(ranked: RankedSlots, capacity: int, cols: int) -> tuple[jax.Array, jax.Array]:
    """:data:`SlotWriter` in XLA ops: each slot finds its rank by a scatter of first slots and a running max."""

    def one_view(r: RankedSlots):
        num_gaussians = r.start.shape[0]
        # Slot j belongs to the last rank whose first slot is <= j.
        first_slot = jnp.where(r.count > 0, r.start, capacity)
        owner_rank = jnp.zeros(capacity, jnp.int32).at[first_slot].max(jnp.arange(num_gaussians, dtype=jnp.int32), mode="drop")
        owner_rank = jax.lax.cummax(owner_rank)
        k = jnp.arange(capacity, dtype=jnp.int32) - r.start[owner_rank]  # which of the owner's tiles
        width = r.width[owner_rank]
        tile = (r.lo_y[owner_rank] + k // width) * cols + r.lo_x[owner_rank] + k % width
        return tile, r.gaussian[owner_rank]

    return jax.vmap(one_view)(ranked)


class _Ranked(NamedTuple):
    """One view's emission plan before the slots are written."""

    slots: RankedSlots  # per rank [N]
    total: jax.Array  # int32 slots emitted in all (may exceed the capacity)
    in_buffer: jax.Array  # [N] int32 slots that fit per depth rank
    stats: BinStats


def _rank_view(means2d, radii, by_depth, visible, image_size, tile_size, max_tiles, capacity) -> _Ranked:
    lo, hi = tile_rectangles(means2d, radii, visible, image_size, tile_size)
    extent = jnp.maximum(hi - lo, 0)  # [N, 2]
    touched = extent[:, 0] * extent[:, 1]

    # Emit in depth order (by_depth [N]): a stable sort by tile afterwards then gives (tile, depth) order.
    emitted = jnp.minimum(touched, max_tiles)[by_depth]
    ends = jnp.cumsum(emitted)
    starts = ends - emitted
    total = ends[-1]
    rendered = jnp.minimum(total, capacity)
    stats = BinStats(
        intersections=rendered.astype(jnp.int32),
        overflow_gaussians=jnp.sum(touched > max_tiles).astype(jnp.int32),
        dropped_intersections=(jnp.sum(touched) - rendered).astype(jnp.int32),
    )
    lo, extent = lo[by_depth], extent[by_depth]
    slots = RankedSlots(
        gaussian=by_depth,
        start=starts.astype(jnp.int32),
        count=emitted.astype(jnp.int32),
        lo_x=lo[:, 0],
        lo_y=lo[:, 1],
        width=jnp.maximum(extent[:, 0], 1),
    )
    in_buffer = jnp.clip(capacity - starts, 0, emitted).astype(jnp.int32)
    return _Ranked(slots=slots, total=total.astype(jnp.int32), in_buffer=in_buffer, stats=stats)


def _finish_view(ranked: _Ranked, owner, order, sorted_tile, num_tiles: int, max_tiles: int) -> Bins:
    """One view's :class:`Bins` from its slots' owners ``[M]``, their tile-sorted ``order [M]`` and sorted tiles ``[M]``."""
    by_depth = ranked.slots.gaussian
    num_gaussians, capacity = by_depth.shape[0], order.shape[0]
    by_gaussian = lambda per_rank: jnp.zeros(num_gaussians, jnp.int32).at[by_depth].set(per_rank, unique_indices=True)
    slot = jnp.arange(capacity, dtype=jnp.int32)
    # Tile t owns the sorted slots with tile id t: binary searches of the T + 1 boundaries.
    tiles = jnp.arange(num_tiles + 1, dtype=jnp.int32)
    tile_ranges = jnp.searchsorted(sorted_tile, tiles, side="left", method=TILE_SEARCH).astype(jnp.int32)
    return Bins(
        gaussian_ids=jnp.where(sorted_tile < num_tiles, owner[order], 0),  # unused slots (tile id num_tiles) sort last
        tile_ranges=tile_ranges,
        stats=ranked.stats,
        emit_start=by_gaussian(ranked.slots.start),
        emit_count=by_gaussian(ranked.in_buffer),
        sorted_position=jnp.zeros(capacity, jnp.int32).at[order].set(slot, unique_indices=True),
        rank_gaussian=by_depth,
        rank_start=ranked.slots.start,
        emitted_slot=order,
        max_tiles_per_gaussian=max_tiles,
    )
