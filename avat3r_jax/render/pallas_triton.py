"""Pallas kernels for NVIDIA GPUs (Triton lowering; interpret mode on the CPU).

One program per (view, tile, pixel block): a tile's pixels are split into ``S`` blocks of
``group_rows x group_cols``, held one (or a few) per thread of one warp. The kernels walk the
tile's depth-sorted intersections one Gaussian at a time, as a GPU rasterizer does per thread: the
Gaussian's table row is a handful of scalars (broadcast loads, fetched ``chunk`` rows ahead), the
per-pixel state is updated in place with no scans or logarithms, and in the backward pass each
gradient is a sum over the block's pixels (warp shuffles), paid for only by Gaussians that touch a
pixel of the block. Intersection rows are stored column-major, ``[V, TABLE_WIDTH, M]``. The forward
pass stops once every pixel of the block has stopped; the backward pass walks the rows up to the
block's last contributor back to front from the saved state and writes per-intersection gradient
rows ``[V, M, S, TABLE_WIDTH]`` into a zeroed buffer (each (block, row) is owned by one program: no
atomics). A third kernel sums them per Gaussian: one thread per Gaussian walks the slots the binner
emitted for it (contiguous, at most ``max_tiles_per_gaussian``) for as many steps as the busiest
Gaussian of its program needs, reading each intersection's ``S`` blocks in one place.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from avat3r_jax.render.binning import Bins
from avat3r_jax.render.tile_math import (
    NUM_FEATURES,
    TABLE_WIDTH,
    BackwardState,
    SavedPixels,
    backward_step,
    forward_step,
    initial_forward_state,
)


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
    interpret: bool = False
    gaussians_per_program: int = 128  # the per-Gaussian gradient sum: one Gaussian per thread

    def layout(self, rows: jax.Array, tile_ranges: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``[V, M, D]`` rows -> the kernels' ``[V, D, M + 2 chunk]`` (padding keeps every chunk load and prefetch in bounds)."""
        return jnp.pad(jnp.swapaxes(rows, 1, 2), ((0, 0), (0, 0), (0, 2 * self.chunk))), tile_ranges

    def per_gaussian(self, grads: jax.Array, bins: Bins) -> jax.Array:
        """Kernel gradients ``[V, M + 2 chunk, S, D]`` -> per-Gaussian sums ``[V, N, D]`` (in a fixed order: deterministic)."""
        views, count = bins.emit_start.shape
        block = self.gaussians_per_program
        padded = -(-count // block) * block
        pad = lambda x: jnp.pad(x, ((0, 0), (0, padded - count)))  # padding Gaussians own no slots
        per_view = pl.BlockSpec((None, block), lambda v, b: (v, b))
        sums = pl.pallas_call(
            functools.partial(_per_gaussian_kernel, groups=grads.shape[2]),
            grid=(views, padded // block),
            in_specs=[per_view, per_view, pl.no_block_spec, pl.no_block_spec],
            out_specs=[per_view] * TABLE_WIDTH,
            out_shape=[jax.ShapeDtypeStruct((views, padded), jnp.float32)] * TABLE_WIDTH,
            compiler_params=None if self.interpret else self._compiler_params(num_warps=max(1, block // 32)),
            interpret=self.interpret,
            name="splat_gradient_sum",
        )(pad(bins.emit_start), pad(bins.emit_count), bins.sorted_position, grads)
        return jnp.stack(sums, -1)[:, :count]

    def forward(self, data: jax.Array, tile_ranges: jax.Array, tiles_x: int, tile_size: int):
        """-> features ``[V, T, P, F]``, transmittance ``[V, T, P]``, last contributor ``[V, T, P]``."""
        views, num_tiles = data.shape[0], tile_ranges.shape[1] - 1
        kernel = functools.partial(_forward_kernel, tiles_x=tiles_x, tile_size=tile_size, chunk=self.chunk)
        tile_shape = (views, num_tiles, tile_size, tile_size)
        features, transmittance, last = pl.pallas_call(
            kernel,
            grid=(views, num_tiles, self._groups(tile_size)),
            in_specs=[pl.no_block_spec, pl.no_block_spec],
            out_specs=[self._group_block(NUM_FEATURES, tile_size), self._group_block(1, tile_size), self._group_block(1, tile_size)],
            out_shape=[
                jax.ShapeDtypeStruct(_with_rows(tile_shape, NUM_FEATURES), jnp.float32),
                jax.ShapeDtypeStruct(_with_rows(tile_shape, 1), jnp.float32),
                jax.ShapeDtypeStruct(_with_rows(tile_shape, 1), jnp.int32),
            ],
            compiler_params=self._compiler_params(),
            interpret=self.interpret,
            name="splat_forward",
        )(tile_ranges, data)
        flat = lambda x: x.reshape(x.shape[:3] + (tile_size * tile_size,))  # [V, T, rows, P]: tiles are row-major
        return jnp.swapaxes(flat(features), 2, 3), flat(transmittance)[:, :, 0], flat(last)[:, :, 0]

    def backward(self, data, tile_ranges, transmittance, last, grad_features, grad_transmittance, tiles_x: int, tile_size: int):
        """Per-pixel inputs as :meth:`forward` returns them -> gradient rows ``[V, M + 2 chunk, S, D]``."""
        views, num_tiles, groups = data.shape[0], tile_ranges.shape[1] - 1, self._groups(tile_size)
        kernel = functools.partial(_backward_kernel, tiles_x=tiles_x, tile_size=tile_size, chunk=self.chunk)
        as_tiles = lambda x: x.reshape(x.shape[:2] + (-1, tile_size, tile_size))  # [V, T, rows, P] -> [V, T, rows, ts, ts]
        rows_first = (transmittance[:, :, None], last[:, :, None], jnp.swapaxes(grad_features, 2, 3), grad_transmittance[:, :, None])
        per_pixel = [as_tiles(x) for x in rows_first]
        zeros = jnp.zeros((views, data.shape[2], groups, TABLE_WIDTH), jnp.float32)  # rows no program writes
        return pl.pallas_call(
            kernel,
            grid=(views, num_tiles, groups),
            in_specs=[pl.no_block_spec, pl.no_block_spec]
            + [self._group_block(rows, tile_size) for rows in (1, 1, NUM_FEATURES, 1)]
            + [pl.no_block_spec],
            out_specs=pl.no_block_spec,
            out_shape=jax.ShapeDtypeStruct(zeros.shape, jnp.float32),
            input_output_aliases={6: 0},
            compiler_params=self._compiler_params(),
            interpret=self.interpret,
            name="splat_backward",
        )(tile_ranges, data, *per_pixel, zeros)

    def _block(self, tile_size: int) -> tuple[int, int]:
        """The pixel block ``(rows, cols)``, clipped to the tile."""
        block = min(self.group_rows, tile_size), min(self.group_cols, tile_size)
        if tile_size % block[0] or tile_size % block[1]:
            raise ValueError(f"pixel blocks of {block[0]}x{block[1]} must tile the {tile_size}x{tile_size} tile")
        return block

    def _groups(self, tile_size: int) -> int:
        rows, cols = self._block(tile_size)
        return (tile_size // rows) * (tile_size // cols)

    def _group_block(self, rows: int, tile_size: int) -> pl.BlockSpec:
        """One pixel block ``[rows, block rows, block cols]`` of a ``[V, T, rows, ts, ts]`` array."""
        block = self._block(tile_size)
        per_row = tile_size // block[1]
        return pl.BlockSpec((None, None, rows, *block), lambda v, t, s: (v, t, 0, s // per_row, s % per_row))

    def _compiler_params(self, num_warps: int | None = None):
        if self.interpret:
            return None
        from jax.experimental.pallas import triton as plt

        return plt.CompilerParams(num_warps=num_warps or self.num_warps, num_stages=1)


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


def _load_rows(data_ref, view, row, count: int) -> list[list[jax.Array]]:
    """The table columns (scalars) of rows ``row, ..., row + count - 1``."""
    return [[data_ref[view, d, row + k] for d in range(TABLE_WIDTH)] for k in range(count)]


def _forward_kernel(ranges_ref, data_ref, features_ref, transmittance_ref, last_ref, *, tiles_x, tile_size, chunk):
    view, tile = pl.program_id(0), pl.program_id(1)
    start, end = ranges_ref[view, tile], ranges_ref[view, tile + 1]
    pixel_x, pixel_y = _pixels(tile, tiles_x, tile_size, transmittance_ref.shape)

    def step(carry):
        row, state, rows = carry
        upcoming = _load_rows(data_ref, view, row + chunk, chunk)  # prefetch: its latency hides behind this chunk's math
        for k, columns in enumerate(rows):
            state = forward_step(state, columns, row + k - start, row + k < end, pixel_x, pixel_y)
        return row + chunk, state, upcoming

    def not_finished(carry):
        row, state, _ = carry
        return (row < end) & (jnp.min(state.done) == 0)

    initial = (start, initial_forward_state(pixel_x.shape), _load_rows(data_ref, view, start, chunk))
    _, state, _ = jax.lax.while_loop(not_finished, step, initial)
    for f in range(NUM_FEATURES):
        features_ref[pl.ds(f, 1)] = state.features[f]
    transmittance_ref[...] = state.transmittance
    last_ref[...] = state.last


def _backward_kernel(
    ranges_ref,
    data_ref,
    transmittance_ref,
    last_ref,
    grad_features_ref,
    grad_transmittance_ref,
    zeros_ref,
    grads_ref,
    *,
    tiles_x,
    tile_size,
    chunk,
):
    del zeros_ref  # aliased to grads_ref: rows this program does not write stay zero
    view, tile, pixel_group = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    start, end = ranges_ref[view, tile], ranges_ref[view, tile + 1]
    pixel_x, pixel_y = _pixels(tile, tiles_x, tile_size, transmittance_ref.shape)
    saved = SavedPixels(
        last=last_ref[...],
        final_transmittance=transmittance_ref[...],
        grad_features=[grad_features_ref[pl.ds(f, 1)] for f in range(NUM_FEATURES)],
        grad_transmittance=grad_transmittance_ref[...],
    )

    def store_row(position, pixel_grads):
        for d, value in enumerate(pixel_grads):
            grads_ref[view, start + position, pixel_group, jnp.int32(d)] = jnp.sum(value)

    def backward_rows(k, carry):
        state, rows = carry
        first = (busy_chunks - 1 - k) * chunk  # position of the chunk's first row in the tile's list
        upcoming = _load_rows(data_ref, view, jnp.maximum(start + first - chunk, 0), chunk)  # prefetch
        for j in reversed(range(chunk)):
            state, pixel_grads, contributes = backward_step(state, rows[j], first + j, first + j < end - start, pixel_x, pixel_y, saved)
            # Only Gaussians that touch one of the group's pixels pay for the reductions and the stores.
            pl.when(jnp.max(contributes.astype(jnp.int32)) > 0)(functools.partial(store_row, first + j, pixel_grads))
        return state, upcoming

    busy_chunks = pl.cdiv(jnp.max(saved.last), chunk)
    initial = BackwardState(saved.final_transmittance, jnp.zeros_like(saved.final_transmittance))
    rows = _load_rows(data_ref, view, start + jnp.maximum(busy_chunks - 1, 0) * chunk, chunk)
    jax.lax.fori_loop(0, busy_chunks, backward_rows, (initial, rows))


def _per_gaussian_kernel(start_ref, count_ref, position_ref, grads_ref, *sum_refs, groups):
    """Sums the gradient rows of a block of Gaussians: ``start/count [B]`` slots in emission order,
    ``position [V, M]`` each emitted slot's sorted row, ``grads [V, M', S, D]``."""
    view = pl.program_id(0)
    start, count = start_ref[...], count_ref[...]

    def add_slot(k, sums):
        take = k < count
        row = position_ref[view, jnp.where(take, start + k, 0)]  # [B] gathered
        return tuple(total + jnp.where(take, sum(grads_ref[view, row, g, d] for g in range(groups)), 0.0) for d, total in enumerate(sums))

    zeros = tuple(jnp.zeros(start.shape, jnp.float32) for _ in range(TABLE_WIDTH))
    sums = jax.lax.fori_loop(0, jnp.max(count), add_slot, zeros)
    for ref, total in zip(sum_refs, sums):
        ref[...] = total
