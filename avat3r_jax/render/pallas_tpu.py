"""Pallas kernels for TPU (Mosaic lowering; checked here only in TPU interpret mode).

Rows are stored ``[V, M', TABLE_WIDTH]`` with each tile's range padded to a whole number of
chunks starting at a chunk-aligned row, so every DMA is aligned. Tile starts and counts are
scalar-prefetched into SMEM; chunks are double-buffered from HBM into VMEM by manual async
copies. Prefix sums along the chunk (sublane) axis are products with a triangular matrix on the
MXU at full float32 precision.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from avat3r_jax.render.binning import Bins, gather_per_gaussian, sorted_rows
from avat3r_jax.render.tile_math import (
    NUM_FEATURES,
    TABLE_WIDTH,
    BackwardState,
    SavedPixels,
    backward_chunk,
    forward_chunk,
    initial_forward_state,
    pixel_centres,
)


@dataclasses.dataclass(frozen=True)
class TpuKernels:
    """Forward/backward tile kernels for TPU; ``chunk`` (a multiple of 8) rows per loop step."""

    chunk: int = 64
    interpret: bool = False

    def slot_writer(self) -> None:
        """The binner's slots are written by XLA."""
        return None

    def splat_table(self) -> None:
        """The projection and the splat table are XLA's, gradient included."""
        return None

    def layout(self, table: jax.Array, bins: Bins) -> tuple[jax.Array, jax.Array]:
        """The table ``[V, N, D]`` -> its rows in sorted order, chunk-aligned ``[V, M + T * chunk, D]``, and
        ``[2, V * T]`` (padded starts, counts)."""
        rows = sorted_rows(table, bins)
        destination, padded_starts, counts = self._destinations(rows.shape[1], bins.tile_ranges)
        padded_rows = rows.shape[1] + counts.shape[1] * self.chunk
        data = jax.vmap(lambda r, d: jnp.zeros((padded_rows, TABLE_WIDTH), rows.dtype).at[d].set(r, mode="drop"))(rows, destination)
        return data, jnp.stack([padded_starts.reshape(-1), counts.reshape(-1)])

    def per_gaussian(self, grads: jax.Array, bins: Bins) -> jax.Array:
        """Gradient rows ``[V, M', D]`` in the padded layout -> per-Gaussian sums ``[V, N, D]``."""
        destination, _, _ = self._destinations(bins.gaussian_ids.shape[1], bins.tile_ranges)
        owned = destination < grads.shape[1]
        gathered = jax.vmap(lambda g, d: g[jnp.minimum(d, g.shape[0] - 1)])(grads, destination)
        return gather_per_gaussian(jnp.where(owned[..., None], gathered, 0.0), bins)

    def _destinations(self, num_rows: int, tile_ranges: jax.Array):
        """Padded row of each sorted slot ``[V, M]`` (past the end for unused slots), padded starts and counts ``[V, T]``."""
        counts = jnp.diff(tile_ranges, axis=1)
        padded = -(-counts // self.chunk) * self.chunk
        padded_starts = jnp.cumsum(padded, axis=1) - padded
        slot = jnp.arange(num_rows, dtype=jnp.int32)
        tile = jax.vmap(lambda ends: jnp.searchsorted(ends, slot, side="right"))(tile_ranges[:, 1:])  # [V, M]
        tile = jnp.minimum(tile, counts.shape[1] - 1)
        rank = slot - jnp.take_along_axis(tile_ranges, tile, axis=1)
        destination = jnp.take_along_axis(padded_starts, tile, axis=1) + rank
        unused = slot[None, :] >= tile_ranges[:, -1:]
        return jnp.where(unused, num_rows + counts.shape[1] * self.chunk, destination), padded_starts, counts

    def forward(self, data: jax.Array, kernel_ranges: jax.Array, tiles_x: int, tile_size: int):
        views, num_tiles, pixels = data.shape[0], kernel_ranges.shape[1] // data.shape[0], tile_size * tile_size
        kernel = functools.partial(_forward_kernel, num_tiles=num_tiles, tiles_x=tiles_x, tile_size=tile_size, chunk=self.chunk)
        tile_block = lambda *shape: pl.BlockSpec((None, None, *shape), lambda v, t, ranges: (v, t, 0, 0))
        grid_spec = pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(views, num_tiles),
            in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
            out_specs=[tile_block(NUM_FEATURES, pixels), tile_block(1, pixels), tile_block(1, pixels)],
            scratch_shapes=[pltpu.VMEM((2, self.chunk, TABLE_WIDTH), jnp.float32), pltpu.SemaphoreType.DMA((2,))],
        )
        features, transmittance, last = pl.pallas_call(
            kernel,
            grid_spec=grid_spec,
            out_shape=[
                jax.ShapeDtypeStruct((views, num_tiles, NUM_FEATURES, pixels), jnp.float32),
                jax.ShapeDtypeStruct((views, num_tiles, 1, pixels), jnp.float32),
                jax.ShapeDtypeStruct((views, num_tiles, 1, pixels), jnp.int32),
            ],
            compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
            interpret=pltpu.InterpretParams() if self.interpret else False,
            name="splat_forward_tpu",
        )(kernel_ranges, data)
        return jnp.swapaxes(features, 2, 3), transmittance.reshape(views, num_tiles, pixels), last.reshape(views, num_tiles, pixels)

    def backward(self, data, kernel_ranges, transmittance, last, grad_features, grad_transmittance, tiles_x: int, tile_size: int):
        views, num_tiles, pixels = data.shape[0], kernel_ranges.shape[1] // data.shape[0], tile_size * tile_size
        kernel = functools.partial(_backward_kernel, num_tiles=num_tiles, tiles_x=tiles_x, tile_size=tile_size, chunk=self.chunk)
        tile_block = lambda *shape: pl.BlockSpec((None, None, *shape), lambda v, t, ranges: (v, t, 0, 0))
        grid_spec = pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(views, num_tiles),
            in_specs=[
                pl.BlockSpec(memory_space=pl.ANY),
                tile_block(1, pixels),
                tile_block(1, pixels),
                tile_block(NUM_FEATURES, pixels),
                tile_block(1, pixels),
            ],
            out_specs=pl.BlockSpec(memory_space=pl.ANY),
            scratch_shapes=[
                pltpu.VMEM((2, self.chunk, TABLE_WIDTH), jnp.float32),
                pltpu.VMEM((self.chunk, TABLE_WIDTH), jnp.float32),
                pltpu.SemaphoreType.DMA((3,)),
            ],
        )
        return pl.pallas_call(
            kernel,
            grid_spec=grid_spec,
            out_shape=jax.ShapeDtypeStruct(data.shape, jnp.float32),
            compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
            interpret=pltpu.InterpretParams() if self.interpret else False,
            name="splat_backward_tpu",
        )(
            kernel_ranges,
            data,
            *(x.reshape(views, num_tiles, 1, pixels) for x in (transmittance, last)),
            jnp.swapaxes(grad_features, 2, 3),
            grad_transmittance.reshape(views, num_tiles, 1, pixels),
        )


def _mxu_cumsum(x: jax.Array) -> jax.Array:
    """Inclusive prefix sum along axis 0 of ``[CH, P]`` as a lower-triangular matrix product."""
    rows = jax.lax.broadcasted_iota(jnp.int32, (x.shape[0], x.shape[0]), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (x.shape[0], x.shape[0]), 1)
    lower = (rows >= cols).astype(jnp.float32)
    return jnp.dot(lower, x, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def _chunk_copy(data_hbm, buffer, semaphores, view, start, index, slot, chunk):
    row = pl.multiple_of(start + index * chunk, chunk)
    return pltpu.make_async_copy(data_hbm.at[view, pl.ds(row, chunk), :], buffer.at[slot], semaphores.at[slot])


def _columns(buffer, slot) -> list[jax.Array]:
    rows = buffer[slot]  # [CH, D]
    return [rows[:, d : d + 1] for d in range(TABLE_WIDTH)]


def _forward_kernel(
    ranges_ref, data_hbm, features_ref, transmittance_ref, last_ref, buffer, semaphores, *, num_tiles, tiles_x, tile_size, chunk
):
    view, tile = pl.program_id(0), pl.program_id(1)
    start, count = ranges_ref[0, view * num_tiles + tile], ranges_ref[1, view * num_tiles + tile]
    num_chunks = pl.cdiv(count, chunk)
    pixel_x, pixel_y = pixel_centres(tile, tiles_x, tile_size, (1, tile_size * tile_size))
    offsets = jax.lax.broadcasted_iota(jnp.int32, (chunk, 1), 0)
    copy = functools.partial(_chunk_copy, data_hbm, buffer, semaphores, view, start, chunk=chunk)

    @pl.when(num_chunks > 0)
    def _():
        copy(0, 0).start()

    def not_finished(carry):
        index, state = carry
        return (index < num_chunks) & (jnp.min(state.done) == 0)

    def step(carry):
        index, state = carry
        slot = index % 2
        copy(index, slot).wait()

        @pl.when(index + 1 < num_chunks)
        def _():
            copy(index + 1, 1 - slot).start()

        position = index * chunk + offsets
        state = forward_chunk(state, _columns(buffer, slot), position, position < count, pixel_x, pixel_y, _mxu_cumsum)
        return index + 1, state

    index, state = jax.lax.while_loop(not_finished, step, (jnp.int32(0), initial_forward_state((1, tile_size * tile_size))))

    @pl.when(index < num_chunks)  # stopped early: drain the prefetch in flight
    def _():
        copy(index, index % 2).wait()

    for f in range(NUM_FEATURES):
        features_ref[f : f + 1, :] = state.features[f]
    transmittance_ref[...] = state.transmittance
    last_ref[...] = state.last


def _backward_kernel(
    ranges_ref,
    data_hbm,
    transmittance_ref,
    last_ref,
    grad_features_ref,
    grad_transmittance_ref,
    grads_hbm,
    buffer,
    out_buffer,
    semaphores,
    *,
    num_tiles,
    tiles_x,
    tile_size,
    chunk,
):
    view, tile = pl.program_id(0), pl.program_id(1)
    start, count = ranges_ref[0, view * num_tiles + tile], ranges_ref[1, view * num_tiles + tile]
    pixel_x, pixel_y = pixel_centres(tile, tiles_x, tile_size, (1, tile_size * tile_size))
    offsets = jax.lax.broadcasted_iota(jnp.int32, (chunk, 1), 0)
    saved = SavedPixels(
        last=last_ref[...],
        final_transmittance=transmittance_ref[...],
        grad_features=[grad_features_ref[f : f + 1, :] for f in range(NUM_FEATURES)],
        grad_transmittance=grad_transmittance_ref[...],
    )
    busy_chunks = pl.cdiv(jnp.max(saved.last), chunk)
    copy = functools.partial(_chunk_copy, data_hbm, buffer, semaphores, view, start, chunk=chunk)

    def write(index):
        row = pl.multiple_of(start + index * chunk, chunk)
        out = pltpu.make_async_copy(out_buffer, grads_hbm.at[view, pl.ds(row, chunk), :], semaphores.at[2])
        out.start()
        out.wait()

    @pl.when(busy_chunks > 0)
    def _():
        copy(busy_chunks - 1, 0).start()

    def step(k, state):
        index = busy_chunks - 1 - k
        slot = k % 2
        copy(index, slot).wait()

        @pl.when(index > 0)
        def _():
            copy(index - 1, 1 - slot).start()

        position = index * chunk + offsets
        state, grads = backward_chunk(state, _columns(buffer, slot), position, position < count, pixel_x, pixel_y, saved, _mxu_cumsum)
        for d in range(TABLE_WIDTH):
            out_buffer[:, d : d + 1] = grads[d]
        write(index)
        return state

    initial = BackwardState(transmittance=saved.final_transmittance, behind=jnp.zeros_like(saved.final_transmittance))
    jax.lax.fori_loop(0, busy_chunks, step, initial)

    out_buffer[...] = jnp.zeros_like(out_buffer)  # rows behind every pixel's last contributor get no gradient

    def zero_step(index, carry):
        write(index)
        return carry

    jax.lax.fori_loop(busy_chunks, pl.cdiv(count, chunk), zero_step, 0)
