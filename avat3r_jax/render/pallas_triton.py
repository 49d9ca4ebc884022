"""Pallas kernels for NVIDIA GPUs (Triton lowering; interpret mode on the CPU).

One program per (view, tile, pixel group): a tile's ``P`` pixels are split into ``S`` groups of
``pixels_per_program``; blocks are ``[CH, group]`` (a chunk of the tile's intersections by the
group's pixels, see tile_math). With one warp per 32-pixel group every scan and sum over the chunk
stays inside a thread and every sum over pixels inside a warp: no shared-memory round trips.
Intersection rows are stored column-major, ``[V, TABLE_WIDTH, M]``, so a chunk of one table column
is a contiguous load. The forward pass walks the tile's range front to back in chunks until every
pixel of the group has stopped; the backward pass walks the chunks that held a contributor back to
front from the saved state and writes per-intersection gradient rows ``[V, S, M, TABLE_WIDTH]``
(each (group, row) is owned by one program: no atomics), summed over groups afterwards.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from avat3r_jax.render.tile_math import (
    NUM_FEATURES,
    TABLE_WIDTH,
    BackwardState,
    backward_chunk,
    forward_chunk,
    initial_forward_state,
    pixel_centres,
)


@dataclasses.dataclass(frozen=True)
class TritonKernels:
    """Forward/backward tile kernels; ``chunk`` intersections are processed per loop step."""

    chunk: int = 8
    num_warps: int = 1
    pixels_per_program: int = 32
    interpret: bool = False

    def layout(self, rows: jax.Array, tile_ranges: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``[V, M, D]`` rows -> the kernels' ``[V, D, M + 2 chunk]`` (padding keeps every chunk load and prefetch in bounds)."""
        return jnp.pad(jnp.swapaxes(rows, 1, 2), ((0, 0), (0, 0), (0, 2 * self.chunk))), tile_ranges

    def unlayout(self, grads: jax.Array, num_rows: int, tile_ranges: jax.Array) -> jax.Array:
        """Kernel gradients ``[V, S, M + 2 chunk, D]`` -> ``[V, M, D]`` (summed over pixel groups), zero on slots no tile owns."""
        owned = jnp.arange(num_rows)[None, :] < tile_ranges[:, -1:]
        return jnp.where(owned[..., None], jnp.sum(grads[:, :, :num_rows], axis=1), 0.0)

    def forward(self, data: jax.Array, tile_ranges: jax.Array, tiles_x: int, tile_size: int):
        """-> features ``[V, T, P, F]``, transmittance ``[V, T, P]``, last contributor ``[V, T, P]``."""
        views, num_tiles, pixels, group = data.shape[0], tile_ranges.shape[1] - 1, tile_size * tile_size, self._group(tile_size)
        kernel = functools.partial(_forward_kernel, tiles_x=tiles_x, tile_size=tile_size, chunk=self.chunk, group=group)
        features, transmittance, last = pl.pallas_call(
            kernel,
            grid=(views, num_tiles, pixels // group),
            in_specs=[pl.no_block_spec, pl.no_block_spec],
            out_specs=[_group_block(NUM_FEATURES, group), _group_block(1, group), _group_block(1, group)],
            out_shape=[
                jax.ShapeDtypeStruct((views, num_tiles, NUM_FEATURES, pixels), jnp.float32),
                jax.ShapeDtypeStruct((views, num_tiles, 1, pixels), jnp.float32),
                jax.ShapeDtypeStruct((views, num_tiles, 1, pixels), jnp.int32),
            ],
            compiler_params=self._compiler_params(),
            interpret=self.interpret,
            name="splat_forward",
        )(tile_ranges, data)
        return jnp.swapaxes(features, 2, 3), transmittance[:, :, 0], last[:, :, 0]

    def backward(self, data, tile_ranges, transmittance, last, grad_features, grad_transmittance, tiles_x: int, tile_size: int):
        """Per-pixel inputs as :meth:`forward` returns them -> gradient rows ``[V, S, M + 2 chunk, D]``."""
        views, num_tiles, pixels, group = data.shape[0], tile_ranges.shape[1] - 1, tile_size * tile_size, self._group(tile_size)
        kernel = functools.partial(_backward_kernel, tiles_x=tiles_x, tile_size=tile_size, chunk=self.chunk, group=group)
        per_pixel = [x[:, :, None, :] for x in (transmittance, last)]
        return pl.pallas_call(
            kernel,
            grid=(views, num_tiles, pixels // group),
            in_specs=[
                pl.no_block_spec,
                pl.no_block_spec,
                _group_block(1, group),
                _group_block(1, group),
                _group_block(NUM_FEATURES, group),
                _group_block(1, group),
            ],
            out_specs=pl.no_block_spec,
            out_shape=jax.ShapeDtypeStruct((views, pixels // group, data.shape[2], TABLE_WIDTH), jnp.float32),
            compiler_params=self._compiler_params(),
            interpret=self.interpret,
            name="splat_backward",
        )(tile_ranges, data, *per_pixel, jnp.swapaxes(grad_features, 2, 3), grad_transmittance[:, :, None, :])

    def _group(self, tile_size: int) -> int:
        group = min(self.pixels_per_program, tile_size * tile_size)
        if (tile_size * tile_size) % group:
            raise ValueError(f"pixels_per_program ({group}) must divide the tile's {tile_size * tile_size} pixels")
        return group

    def _compiler_params(self):
        if self.interpret:
            return None
        from jax.experimental.pallas import triton as plt

        return plt.CompilerParams(num_warps=self.num_warps, num_stages=1)


def _group_block(rows: int, group: int) -> pl.BlockSpec:
    """One pixel group's slice ``[rows, group]`` of a ``[V, T, rows, P]`` array."""
    return pl.BlockSpec((None, None, rows, group), lambda v, t, s: (v, t, 0, s))


def _setup(tile, tiles_x, tile_size, chunk, group):
    """The group's pixel centres ``[1, group]`` and in-chunk offsets ``[CH, 1]``."""
    pixel_x, pixel_y = pixel_centres(tile, tiles_x, tile_size, (1, group), first=pl.program_id(2) * group)
    return pixel_x, pixel_y, jax.lax.broadcasted_iota(jnp.int32, (chunk, 1), 0)


def _cumsum(x: jax.Array) -> jax.Array:
    return jnp.cumsum(x, axis=0)


def _load_chunk(data_ref, view, start, chunk: int) -> list[jax.Array]:
    return [data_ref[view, d, pl.ds(start, chunk)][:, None] for d in range(TABLE_WIDTH)]


def _forward_kernel(ranges_ref, data_ref, features_ref, transmittance_ref, last_ref, *, tiles_x, tile_size, chunk, group):
    view, tile = pl.program_id(0), pl.program_id(1)
    start, end = ranges_ref[view, tile], ranges_ref[view, tile + 1]
    pixel_x, pixel_y, offsets = _setup(tile, tiles_x, tile_size, chunk, group)

    def not_finished(carry):
        row, state = carry
        return (row < end) & (jnp.min(state.done) == 0)

    def step(carry):
        row, state, columns = carry
        upcoming = _load_chunk(data_ref, view, row + chunk, chunk)  # prefetch: its latency hides behind this chunk's math
        position = row - start + offsets
        state = forward_chunk(state, columns, position, position < end - start, pixel_x, pixel_y, _cumsum)
        return row + chunk, state, upcoming

    initial = (start, initial_forward_state((1, group)), _load_chunk(data_ref, view, start, chunk))
    _, state, _ = jax.lax.while_loop(lambda carry: not_finished(carry[:2]), step, initial)
    for f in range(NUM_FEATURES):
        features_ref[pl.ds(f, 1), :] = state.features[f]
    transmittance_ref[...] = state.transmittance
    last_ref[...] = state.last


def _backward_kernel(
    ranges_ref,
    data_ref,
    transmittance_ref,
    last_ref,
    grad_features_ref,
    grad_transmittance_ref,
    grads_ref,
    *,
    tiles_x,
    tile_size,
    chunk,
    group,
):
    from jax.experimental.pallas import triton as plt

    view, tile, pixel_group = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    start, end = ranges_ref[view, tile], ranges_ref[view, tile + 1]
    pixel_x, pixel_y, offsets = _setup(tile, tiles_x, tile_size, chunk, group)
    saved = (
        last_ref[...],
        transmittance_ref[...],
        [grad_features_ref[pl.ds(f, 1), :] for f in range(NUM_FEATURES)],
        grad_transmittance_ref[...],
    )
    busy_chunks = pl.cdiv(jnp.max(saved[0]), chunk)
    all_chunks = pl.cdiv(end - start, chunk)

    def store(chunk_index, grads):  # [CH, 1] columns into the [M, D] rows: no transpose needed
        row = start + chunk_index * chunk
        mask = chunk_index * chunk + offsets < end - start
        for d in range(TABLE_WIDTH):
            plt.store(grads_ref.at[view, pixel_group, pl.ds(row, chunk), pl.ds(d, 1)], grads[d], mask=mask)

    def backward_step(k, carry):
        state, columns = carry
        chunk_index = busy_chunks - 1 - k
        upcoming = _load_chunk(data_ref, view, jnp.maximum(start + (chunk_index - 1) * chunk, 0), chunk)  # prefetch
        position = chunk_index * chunk + offsets
        state, grads = backward_chunk(state, columns, position, position < end - start, pixel_x, pixel_y, *saved, _cumsum)
        store(chunk_index, grads)
        return state, upcoming

    final_transmittance = saved[1]
    initial = BackwardState(final_transmittance, jnp.zeros_like(final_transmittance))
    first = _load_chunk(data_ref, view, start + jnp.maximum(busy_chunks - 1, 0) * chunk, chunk)
    jax.lax.fori_loop(0, busy_chunks, backward_step, (initial, first))
    zeros = [jnp.zeros((chunk, 1), jnp.float32)] * TABLE_WIDTH

    def zero_step(chunk_index, carry):  # rows behind every pixel's last contributor get no gradient
        store(chunk_index, zeros)
        return carry

    jax.lax.fori_loop(busy_chunks, all_chunks, zero_step, 0)
