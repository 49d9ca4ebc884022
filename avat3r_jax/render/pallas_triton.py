"""Pallas kernels for NVIDIA GPUs (Triton lowering; interpret mode on the CPU).

One program per (view, tile, pixel block): a tile's pixels are split into ``S`` blocks of
``group_rows x group_cols``, held one (or a few) per thread of one warp. The kernels walk the
tile's depth-sorted intersections one Gaussian at a time, as a GPU rasterizer does per thread: the
Gaussian's table row is a handful of scalars (broadcast loads, fetched ``chunk`` rows ahead), the
per-pixel state is updated in place with no scans or logarithms, and in the backward pass each
gradient is a sum over the block's pixels (warp shuffles), paid for only by Gaussians that touch a
pixel of the block. The kernels read each intersection's row from the splat table
``[V, N, TABLE_WIDTH]`` itself through the sorted Gaussian ids ``[V, M]``, the ids fetched a chunk
before the rows (``indirect_rows``; the alternative, rows gathered in sorted order and stored
column-major ``[V, TABLE_WIDTH, M]``, costs a gather and a transpose: docs/PERFORMANCE.md). The forward
pass stops once every pixel of the block has stopped; the backward pass walks the rows up to the
block's last contributor back to front from the saved state and writes per-intersection gradient
rows ``[V, M', S, D]`` (each (row, block) is owned by one program: no atomics), each at its
intersection's unsorted slot, where the binner emitted it (``emission_rows``; the ids' unsorted
slots ``[V, M]`` are read a chunk ahead; else at its sorted position). A third kernel sums them per
Gaussian: one thread per depth rank walks its run of unsorted slots (contiguous, at most
``max_tiles_per_gaussian``; at sorted positions each slot's row is found through
``Bins.sorted_position``) for as many steps as the busiest rank of its program needs, reading each
intersection's ``S`` blocks in one place, and stores the sum at its Gaussian's row.

Gradient rows are vectors, split into arrays of ``LANE_PARTS`` lanes (powers of two, as Triton's
blocks need; 40 bytes per row and block): the backward stores each as one vector and the sum reads
one ``[S, lanes]`` block per slot. No zero fill by XLA: each program first writes zeros over all its
rows in masked ``[zero_block_rows, lanes]`` blocks, then (after a barrier) its contributors' rows.
The backward's pixel blocks and warps can differ from the forward's (``backward_block``): its
``S`` sets the gradient buffer's size.

The binner's slots are written by a fourth kernel (:meth:`TritonKernels.write_slots`), where XLA
needs a scatter of first slots, a running max over all slots and gathers by owner: a block of depth
ranks owns one contiguous run of slots, which its program writes a vector of consecutive slots at a
time, each slot finding its rank by a binary search over the block's first slots (``slot_search``;
else one thread per rank stores its own run, for as many steps as the block's busiest rank needs).
The splat table's gradient (projection included) is a fifth kernel, :mod:`project_triton` (``projection_gradient``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from avat3r_jax.render.binning import Bins, RankedSlots, SlotWriter, rank_counts, sorted_rows
from avat3r_jax.render.project_triton import KernelSplatTable
from avat3r_jax.render.tile_math import (
    NUM_FEATURES,
    TABLE_WIDTH,
    BackwardState,
    SavedPixels,
    backward_step,
    forward_step,
    initial_forward_state,
)
from avat3r_jax.render.tiled import SplatTable

LANE_PARTS = (8, 2)  # a vector gradient row's TABLE_WIDTH columns, in parts of power-of-two lanes (one array each)
assert sum(LANE_PARTS) == TABLE_WIDTH


@dataclasses.dataclass(frozen=True)
class PixelBlock:
    """The pixels one program shades: a ``rows x cols`` block of a tile, on ``warps`` warps."""

    rows: int
    cols: int
    warps: int

    def clipped(self, tile_size: int) -> PixelBlock:
        """This block clipped to the tile (which it must divide)."""
        block = dataclasses.replace(self, rows=min(self.rows, tile_size), cols=min(self.cols, tile_size))
        if tile_size % block.rows or tile_size % block.cols:
            raise ValueError(f"pixel blocks of {block.rows}x{block.cols} must tile the {tile_size}x{tile_size} tile")
        return block

    def per_tile(self, tile_size: int) -> int:
        """Blocks ``S`` per tile."""
        return (tile_size // self.rows) * (tile_size // self.cols)

    def spec(self, channels: int, tile_size: int) -> pl.BlockSpec:
        """One pixel block ``[channels, rows, cols]`` of a ``[V, T, channels, ts, ts]`` array."""
        per_row = tile_size // self.cols
        return pl.BlockSpec((None, None, channels, self.rows, self.cols), lambda v, t, s: (v, t, 0, s // per_row, s % per_row))


@dataclasses.dataclass(frozen=True)
class TritonKernels:
    """Forward/backward tile kernels.

    Each program shades a ``group_rows x group_cols`` block of a tile's pixels (a compact block
    meets fewer of the tile's Gaussians than a strip of whole rows); each loop step handles
    ``chunk`` intersections (unrolled) and prefetches the next ``chunk``.
    """

    chunk: int = 4
    num_warps: int = 1
    group_rows: int = 8
    group_cols: int = 8
    backward_block: tuple[int, int, int] | None = None  # (rows, cols, warps) of the backward's programs; None: the forward's
    backward_chunk: int | None = None  # the backward's rows per loop step; None: 2 where a program shades a whole tile, else chunk
    zero_block_rows: int = 32  # the backward zeroes its rows in blocks of this many
    indirect_rows: bool = True  # read the table through the sorted ids (False: gathered, transposed rows)
    interpret: bool = False
    gaussians_per_program: int = 32  # the per-Gaussian gradient sum: depth ranks per program, one per thread
    ranks_per_program: int = 128  # the binner's slot kernel: Gaussians per program
    # The backward writes each gradient row at its intersection's unsorted slot, so the sum walks each depth
    # rank's contiguous run (no sorted-position gather, and the binner's scatters per slot and per Gaussian go unused).
    emission_rows: bool = True
    slot_search: bool = True  # the slot kernel walks its ranks' slots, each finding its rank by a binary search (else one thread per rank)
    projection_gradient: bool = True  # the splat table's gradient as one kernel pass over all views (project_triton; else XLA's autodiff)

    def splat_table(self) -> SplatTable | None:
        """The renderer's splat table: with the kernel gradient (:class:`project_triton.KernelSplatTable`), or None (XLA's)."""
        return KernelSplatTable(interpret=self.interpret) if self.projection_gradient else None

    def slot_writer(self) -> SlotWriter:
        """The binner's slot writer: :meth:`write_slots`."""
        return self.write_slots

    def write_slots(self, ranked: RankedSlots, capacity: int, cols: int) -> tuple[jax.Array, jax.Array]:
        """``binning.SlotWriter`` as a kernel: each thread loops over one Gaussian's tiles and stores them
        (slots past the capacity, and lanes done early, go to a spare slot of their own past the buffer)."""
        views, count = ranked.start.shape
        block = self.ranks_per_program
        if self.slot_search and block & (block - 1):
            raise ValueError(f"the slot search needs a power-of-two ranks_per_program, got {block}")
        padded = -(-count // block) * block
        # Padding ranks emit nothing; with the search their first slot lies past every slot (starts stay sorted).
        fills = dict(width=1, start=jnp.iinfo(jnp.int32).max if self.slot_search else 0)
        pad = lambda x, fill: jnp.pad(x, ((0, 0), (0, padded - count)), constant_values=fill)
        fields = [pad(value, fills.get(name, 0)) for name, value in ranked._asdict().items()]
        per_view = pl.BlockSpec((None, block), lambda v, b: (v, b))
        kernel = _slots_search_kernel if self.slot_search else _slots_kernel
        tile, owner = pl.pallas_call(
            functools.partial(kernel, capacity=capacity, cols=cols),
            grid=(views, padded // block),
            in_specs=[pl.no_block_spec] * len(fields) if self.slot_search else [per_view] * len(fields),
            out_specs=[pl.no_block_spec] * 2,
            out_shape=[jax.ShapeDtypeStruct((views, capacity + block), jnp.int32)] * 2,
            compiler_params=self._compiler_params(max(1, block // 32)),
            interpret=self.interpret,
            name="splat_write_slots",
        )(*fields)
        return tile[:, :capacity], owner[:, :capacity]

    def layout(self, table: jax.Array, bins: Bins) -> tuple[tuple[jax.Array, ...], jax.Array]:
        """The table ``[V, N, D]`` -> what the kernels read (:class:`_RowSource`) and the tile ranges:
        ``(table, ids [V, M])`` with ``indirect_rows``, else ``(rows [V, D, M],)`` (loads past the end of
        ``M`` are clamped to its last entry); with ``emission_rows`` the unsorted slot of each sorted row ``[V, M]`` follows."""
        rows = (table, bins.gaussian_ids) if self.indirect_rows else (jnp.swapaxes(sorted_rows(table, bins), 1, 2),)
        return rows + ((bins.emitted_slot,) if self.emission_rows else ()), bins.tile_ranges

    def per_gaussian(self, grads: tuple[jax.Array, ...], bins: Bins) -> jax.Array:
        """Kernel gradients ``[V, M', S, lanes]`` per lane part -> per-Gaussian sums ``[V, N, D]`` (in a
        fixed order: deterministic). One thread per depth rank adds up the rows of its run of unsorted
        slots (with ``emission_rows`` the rows are there; else it reads each slot's sorted row) and
        stores the sum at its Gaussian's row (padding ranks at rows of their own past ``N``)."""
        views, count = bins.rank_gaussian.shape
        block = self.gaussians_per_program
        padded = -(-count // block) * block
        pad = lambda x: jnp.pad(x, ((0, 0), (0, padded - count)))  # padding ranks own no slots
        spare = jnp.broadcast_to(jnp.arange(count, padded, dtype=jnp.int32), (views, padded - count))
        gaussian = jnp.concatenate([bins.rank_gaussian, spare], 1)
        positions = () if self.emission_rows else (bins.sorted_position,)
        per_view = pl.BlockSpec((None, block), lambda v, b: (v, b))
        sums = pl.pallas_call(
            functools.partial(_per_rank_kernel, through_positions=not self.emission_rows),
            grid=(views, padded // block),
            in_specs=[per_view] * 3 + [pl.no_block_spec] * (len(positions) + len(grads)),
            out_specs=[pl.no_block_spec] * len(LANE_PARTS),
            out_shape=[jax.ShapeDtypeStruct((views, padded, lanes), jnp.float32) for lanes in LANE_PARTS],
            compiler_params=self._compiler_params(max(1, block // 32)),
            interpret=self.interpret,
            name="splat_gradient_sum",
        )(gaussian, pad(bins.rank_start), pad(rank_counts(bins)), *positions, *grads)
        return jnp.concatenate(sums, -1)[:, :count]

    def forward(self, data: tuple[jax.Array, ...], tile_ranges: jax.Array, tiles_x: int, tile_size: int):
        """-> features ``[V, T, P, F]``, transmittance ``[V, T, P]``, last contributor ``[V, T, P]``."""
        views, num_tiles, block = tile_ranges.shape[0], tile_ranges.shape[1] - 1, self.forward_pixels(tile_size)
        data = data[: len(data) - self.emission_rows]  # the rows' sources only
        kernel = functools.partial(_forward_kernel, tiles_x=tiles_x, tile_size=tile_size, chunk=self.chunk, sources=len(data))
        tile_shape = (views, num_tiles, tile_size, tile_size)
        features, transmittance, last = pl.pallas_call(
            kernel,
            grid=(views, num_tiles, block.per_tile(tile_size)),
            in_specs=[pl.no_block_spec] * (1 + len(data)),
            out_specs=[block.spec(NUM_FEATURES, tile_size), block.spec(1, tile_size), block.spec(1, tile_size)],
            out_shape=[
                jax.ShapeDtypeStruct(_with_rows(tile_shape, NUM_FEATURES), jnp.float32),
                jax.ShapeDtypeStruct(_with_rows(tile_shape, 1), jnp.float32),
                jax.ShapeDtypeStruct(_with_rows(tile_shape, 1), jnp.int32),
            ],
            compiler_params=self._compiler_params(block.warps),
            interpret=self.interpret,
            name="splat_forward",
        )(tile_ranges, *data)
        flat = lambda x: x.reshape(x.shape[:3] + (tile_size * tile_size,))  # [V, T, rows, P]: tiles are row-major
        return jnp.swapaxes(flat(features), 2, 3), flat(transmittance)[:, :, 0], flat(last)[:, :, 0]

    def backward(self, data, tile_ranges, transmittance, last, grad_features, grad_transmittance, tiles_x: int, tile_size: int):
        """Per-pixel inputs as :meth:`forward` returns them -> gradient rows ``[V, M', S, lanes]`` per lane part."""
        views, num_tiles, block = tile_ranges.shape[0], tile_ranges.shape[1] - 1, self.backward_pixels(tile_size)
        groups = block.per_tile(tile_size)
        if self.zero_block_rows < 1:
            raise ValueError(f"zero_block_rows must be >= 1, got {self.zero_block_rows}")
        kernel = functools.partial(
            _backward_kernel,
            tiles_x=tiles_x,
            tile_size=tile_size,
            chunk=self.backward_rows_per_step(tile_size),
            zero_rows=self.zero_block_rows,
            barrier=not self.interpret,
            sources=len(data) - self.emission_rows,
            emission=self.emission_rows,
        )
        as_tiles = lambda x: x.reshape(x.shape[:2] + (-1, tile_size, tile_size))  # [V, T, rows, P] -> [V, T, rows, ts, ts]
        rows_first = (transmittance[:, :, None], last[:, :, None], jnp.swapaxes(grad_features, 2, 3), grad_transmittance[:, :, None])
        per_pixel = [as_tiles(x) for x in rows_first]
        in_specs = [pl.no_block_spec] * (1 + len(data)) + [block.spec(rows, tile_size) for rows in (1, 1, NUM_FEATURES, 1)]
        rows = (views, data[-1].shape[-1] + self.zero_block_rows, groups)  # the padding keeps every zero block in bounds
        grads = pl.pallas_call(
            kernel,
            grid=(views, num_tiles, groups),
            in_specs=in_specs,
            out_specs=[pl.no_block_spec] * len(LANE_PARTS),
            out_shape=[jax.ShapeDtypeStruct(rows + (lanes,), jnp.float32) for lanes in LANE_PARTS],
            compiler_params=self._compiler_params(block.warps),
            interpret=self.interpret,
            name="splat_backward",
        )(tile_ranges, *data, *per_pixel)
        return tuple(grads)

    def forward_pixels(self, tile_size: int) -> PixelBlock:
        return PixelBlock(self.group_rows, self.group_cols, self.num_warps).clipped(tile_size)

    def backward_pixels(self, tile_size: int) -> PixelBlock:
        return (
            PixelBlock(*self.backward_block) if self.backward_block else PixelBlock(self.group_rows, self.group_cols, self.num_warps)
        ).clipped(tile_size)

    def backward_rows_per_step(self, tile_size: int) -> int:
        """The backward's chunk. Measured on an H200 (docs/PERFORMANCE.md, fifth round): with one
        8x8 program per 8-pixel tile, 2 rows per step beat 4 (backward kernel 6.70 -> 6.11 ms at the
        training render); at 16-pixel tiles the setting stays the one measured there (``chunk``)."""
        if self.backward_chunk:
            return self.backward_chunk
        return 2 if self.backward_pixels(tile_size).per_tile(tile_size) == 1 else self.chunk

    def _compiler_params(self, num_warps: int):
        if self.interpret:
            return None
        return plt.CompilerParams(num_warps=num_warps, num_stages=1)


def _with_rows(tile_shape: tuple[int, ...], rows: int) -> tuple[int, ...]:
    return tile_shape[:2] + (rows,) + tile_shape[2:]


def _pixels(tile, tiles_x: int, tile_size: int, block: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """Pixel centres ``[1, group_rows, group_cols]`` of the program's block (``block`` is a per-pixel ref's shape)."""
    group_rows, group_cols = block[-2:]
    per_row = tile_size // group_cols
    group = pl.program_id(2)
    shape = (1, group_rows, group_cols)
    x = (tile % tiles_x) * tile_size + (group % per_row) * group_cols + jax.lax.broadcasted_iota(jnp.int32, shape, 2)
    y = (tile // tiles_x) * tile_size + (group // per_row) * group_rows + jax.lax.broadcasted_iota(jnp.int32, shape, 1)
    return x.astype(jnp.float32) + 0.5, y.astype(jnp.float32) + 0.5


@dataclasses.dataclass(frozen=True)
class _RowSource:
    """Where a kernel reads intersection rows: ``(rows [V, D, M],)`` gathered in sorted order, or
    ``(table [V, N, D], ids [V, M])``. A row is named by a handle: its position (clamped to the last
    one: positions past it lie past their tile's list, where the kernels ignore them), or the
    Gaussian id loaded from there, which the kernels fetch one chunk before the row itself."""

    refs: tuple

    def handles(self, view, row, count: int) -> list[jax.Array]:
        """Handles of rows ``row, ..., row + count - 1``."""
        positions = self.refs[-1]
        last = positions.shape[-1] - 1
        clamped = [jnp.minimum(row + k, last) for k in range(count)]
        return clamped if len(self.refs) == 1 else [positions[view, p] for p in clamped]

    def columns(self, view, handles: list[jax.Array]) -> list[list[jax.Array]]:
        """The table columns (scalars) of each handle's row."""
        source = self.refs[0]
        if len(self.refs) == 1:
            return [[source[view, d, h] for d in range(TABLE_WIDTH)] for h in handles]
        return [[source[view, h, d] for d in range(TABLE_WIDTH)] for h in handles]


def _forward_kernel(ranges_ref, *refs, tiles_x, tile_size, chunk, sources):
    source, (features_ref, transmittance_ref, last_ref) = _RowSource(refs[:sources]), refs[sources:]
    view, tile = pl.program_id(0), pl.program_id(1)
    start, end = ranges_ref[view, tile], ranges_ref[view, tile + 1]
    pixel_x, pixel_y = _pixels(tile, tiles_x, tile_size, transmittance_ref.shape)

    def step(carry):
        row, state, rows, upcoming = carry  # this chunk's columns, the next chunk's handles
        after = source.handles(view, row + 2 * chunk, chunk)
        fetched = source.columns(view, upcoming)  # prefetch: its latency hides behind this chunk's math
        for k, columns in enumerate(rows):
            state = forward_step(state, columns, row + k - start, row + k < end, pixel_x, pixel_y)
        return row + chunk, state, fetched, after

    def not_finished(carry):
        row, state, _, _ = carry
        return (row < end) & (jnp.min(state.done) == 0)

    first = source.columns(view, source.handles(view, start, chunk))
    initial = (start, initial_forward_state(pixel_x.shape), first, source.handles(view, start + chunk, chunk))
    _, state, _, _ = jax.lax.while_loop(not_finished, step, initial)
    for f in range(NUM_FEATURES):
        features_ref[pl.ds(f, 1)] = state.features[f]
    transmittance_ref[...] = state.transmittance
    last_ref[...] = state.last


def _backward_kernel(ranges_ref, *refs, tiles_x, tile_size, chunk, zero_rows, barrier, sources, emission):
    source = _RowSource(refs[:sources])
    slot_ref = refs[sources] if emission else None  # [V, M] unsorted slot of each sorted row
    transmittance_ref, last_ref, grad_features_ref, grad_transmittance_ref, *grads_refs = refs[sources + emission :]
    view, tile, pixel_group = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    last_row = slot_ref.shape[-1] - 1 if emission else 0
    # Where sorted rows [count] from ``row`` store their gradients: their unsorted slots, or their own positions.
    destinations = lambda row, count: [slot_ref[view, jnp.minimum(row + k, last_row)] for k in range(count)] if emission else [None] * count
    start, end = ranges_ref[view, tile], ranges_ref[view, tile + 1]
    pixel_x, pixel_y = _pixels(tile, tiles_x, tile_size, transmittance_ref.shape)
    saved = SavedPixels(
        last=last_ref[...],
        final_transmittance=transmittance_ref[...],
        grad_features=[grad_features_ref[pl.ds(f, 1)] for f in range(NUM_FEATURES)],
        grad_transmittance=grad_transmittance_ref[...],
    )
    parts = tuple(zip(grads_refs, _lane_offsets(), LANE_PARTS))  # (ref, first column, lanes) per lane part

    def store_row(position, destination, pixel_grads):
        destination = start + position if destination is None else destination
        sums = [jnp.sum(value) for value in pixel_grads]
        for ref, offset, lanes in parts:
            lane = jax.lax.broadcasted_iota(jnp.int32, (lanes,), 0)
            row = jnp.zeros((lanes,), jnp.float32)
            for d in range(lanes):
                row = jnp.where(lane == d, sums[offset + d], row)
            ref[view, destination, pixel_group, :] = row

    def store_zero_block(i, _):
        first = start + i * zero_rows
        if emission:  # rows past the tile go to the spare rows past M (zeros, never read)
            rows = first + jax.lax.broadcasted_iota(jnp.int32, (zero_rows,), 0)
            slots = jnp.where(rows < end, slot_ref[view, jnp.minimum(rows, last_row)], last_row + 1 + rows - first)
            for ref, _, lanes in parts:
                ref[view, slots, pixel_group, :] = jnp.zeros((zero_rows, lanes), jnp.float32)
            return
        for ref, _, lanes in parts:
            rows = first + jax.lax.broadcasted_iota(jnp.int32, (zero_rows, lanes), 0)
            block = ref.at[view, pl.ds(first, zero_rows), pixel_group, :]
            plt.store(block, jnp.zeros(rows.shape, jnp.float32), mask=rows < end)  # rows past the tile are another program's

    jax.lax.fori_loop(0, pl.cdiv(end - start, zero_rows), store_zero_block, None)
    if barrier:  # the zeros land before this program's (other threads') stores of its contributors
        plt.debug_barrier()

    def backward_rows(k, carry):
        state, rows, targets, upcoming = carry  # this chunk's columns and destinations, the next (earlier) chunk's handles
        first = (busy_chunks - 1 - k) * chunk  # position of the chunk's first row in the tile's list
        after = source.handles(view, jnp.maximum(start + first - 2 * chunk, 0), chunk)
        fetched = source.columns(view, upcoming)  # prefetch
        fetched_targets = destinations(jnp.maximum(start + first - chunk, 0), chunk)
        for j in reversed(range(chunk)):
            state, pixel_grads, contributes = backward_step(state, rows[j], first + j, pixel_x, pixel_y, saved)
            # Only Gaussians that touch one of the group's pixels pay for the reductions and the stores.
            touched = jnp.max(contributes.astype(jnp.int32)) > 0
            pl.when(touched)(functools.partial(store_row, first + j, targets[j], pixel_grads))
        return state, fetched, fetched_targets, after

    busy_chunks = pl.cdiv(jnp.max(saved.last), chunk)
    initial = BackwardState(saved.final_transmittance, jnp.zeros_like(saved.final_transmittance))
    last_chunk = start + jnp.maximum(busy_chunks - 1, 0) * chunk
    rows = source.columns(view, source.handles(view, last_chunk, chunk))
    upcoming = source.handles(view, jnp.maximum(last_chunk - chunk, 0), chunk)
    jax.lax.fori_loop(0, busy_chunks, backward_rows, (initial, rows, destinations(last_chunk, chunk), upcoming))


def _per_rank_kernel(gaussian_ref, start_ref, count_ref, *refs, through_positions: bool):
    """Sums the gradient rows of a block of depth ranks: ``start/count [B]`` their runs of unsorted slots,
    (``through_positions``: ``position [V, M]`` each unsorted slot's sorted row, then) per lane part
    ``grads [V, M', S, lanes]`` -> ``sums [V, N', lanes]`` at rows ``gaussian [B]``. (One ``[V, N', TABLE_WIDTH]`` array
    instead, with no concatenation after, made this kernel slower on the H200: docs/PERFORMANCE.md, eighth round.)"""
    view = pl.program_id(0)
    start, count = start_ref[...], count_ref[...]
    position_ref, refs = (refs[0], refs[1:]) if through_positions else (None, refs)
    grads_refs, sum_refs = refs[: len(LANE_PARTS)], refs[len(LANE_PARTS) :]

    def add_slot(k, totals):
        take = k < count
        row = jnp.where(take, start + k, 0)  # [B] unsorted slots
        row = position_ref[view, row] if through_positions else row
        return tuple(total + jnp.where(take[:, None], jnp.sum(ref[view, row], axis=1), 0.0) for ref, total in zip(grads_refs, totals))

    zeros = tuple(jnp.zeros((start.shape[0], lanes), jnp.float32) for lanes in LANE_PARTS)
    gaussian = gaussian_ref[...]
    for ref, total in zip(sum_refs, jax.lax.fori_loop(0, jnp.max(count), add_slot, zeros)):
        ref[view, gaussian, :] = total


def _slots_kernel(gaussian_ref, start_ref, count_ref, lo_x_ref, lo_y_ref, width_ref, tile_ref, owner_ref, *, capacity, cols):
    """One block of depth ranks ``[B]`` -> their slots' tile ids and owners in ``[V, M + B]``."""
    view = pl.program_id(0)
    gaussian, start, count = gaussian_ref[...], start_ref[...], count_ref[...]
    lo_x, lo_y, width = lo_x_ref[...], lo_y_ref[...], width_ref[...]
    spare = capacity + jax.lax.broadcasted_iota(jnp.int32, start.shape, 0)

    def write(k, _):
        slot = jnp.where((k < count) & (start + k < capacity), start + k, spare)
        tile_ref[view, slot] = (lo_y + k // width) * cols + lo_x + k % width
        owner_ref[view, slot] = gaussian

    jax.lax.fori_loop(0, jnp.max(count), write, None)


def _slots_search_kernel(gaussian_ref, start_ref, count_ref, lo_x_ref, lo_y_ref, width_ref, tile_ref, owner_ref, *, capacity, cols):
    """:func:`_slots_kernel` by slots: the program's ``B`` ranks own one contiguous run of slots, which it
    writes ``B`` consecutive slots per step (coalesced stores, as many steps as the run needs); each slot
    finds its rank by a binary search over the block's sorted first slots (ranks that emit nothing share
    their successor's first slot, and the search takes the last rank of a tie)."""
    view, block = pl.program_id(0), tile_ref.shape[1] - capacity
    first_rank = pl.program_id(1) * block
    lane = jax.lax.broadcasted_iota(jnp.int32, (block,), 0)
    ranks = first_rank + lane
    first = start_ref[view, first_rank]
    count = count_ref[view, ranks]
    end = jnp.minimum(jnp.max(jnp.where(count > 0, start_ref[view, ranks] + count, 0)), capacity)

    def write(i, _):
        slot = first + i * block + lane
        rank = jnp.full((block,), first_rank, jnp.int32)
        step = block // 2
        while step:
            later = rank + step
            rank = jnp.where(start_ref[view, later] <= slot, later, rank)
            step //= 2
        k = slot - start_ref[view, rank]
        width = width_ref[view, rank]
        target = jnp.where(slot < end, slot, capacity + lane)
        tile_ref[view, target] = (lo_y_ref[view, rank] + k // width) * cols + lo_x_ref[view, rank] + k % width
        owner_ref[view, target] = gaussian_ref[view, rank]

    jax.lax.fori_loop(0, pl.cdiv(jnp.maximum(end - first, 0), block), write, None)


def _lane_offsets() -> tuple[int, ...]:
    """The first table column of each lane part."""
    return tuple(sum(LANE_PARTS[:i]) for i in range(len(LANE_PARTS)))
