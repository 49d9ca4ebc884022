"""Pallas kernels for NVIDIA GPUs (Triton lowering; interpret mode on the CPU).

One program per (view, tile). Intersection rows are stored column-major, ``[V, TABLE_WIDTH, M]``,
so a chunk of one table column is a contiguous load. The forward pass walks the tile's range
front to back in chunks until every pixel has stopped; the backward pass walks the chunks that
held a contributor back to front from the saved state and writes per-intersection gradients
(each range is owned by one program: no atomics). ``pixel_major`` picks the 2D block layout
``[P, CH]`` instead of ``[CH, P]`` (see tile_math), which changes which reductions stay inside a
warp.
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

    chunk: int = 16
    num_warps: int = 4
    pixel_major: bool = False
    interpret: bool = False

    def layout(self, rows: jax.Array, tile_ranges: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``[V, M, D]`` rows -> the kernels' ``[V, D, M + chunk]`` (padding keeps every chunk load in bounds)."""
        return jnp.pad(jnp.swapaxes(rows, 1, 2), ((0, 0), (0, 0), (0, self.chunk))), tile_ranges

    def unlayout(self, grads: jax.Array, num_rows: int, tile_ranges: jax.Array) -> jax.Array:
        """Kernel-layout gradients -> ``[V, M, D]``, zero on slots no tile owns."""
        grads = jnp.swapaxes(grads[:, :, :num_rows], 1, 2)
        owned = jnp.arange(num_rows)[None, :] < tile_ranges[:, -1:]
        return jnp.where(owned[..., None], grads, 0.0)

    def forward(self, data: jax.Array, tile_ranges: jax.Array, tiles_x: int, tile_size: int):
        """-> features ``[V, T, P, F]``, transmittance ``[V, T, P]``, last contributor ``[V, T, P]``."""
        views, num_tiles, pixels = data.shape[0], tile_ranges.shape[1] - 1, tile_size * tile_size
        row, features_block = self._pixel_block(pixels)
        kernel = functools.partial(_forward_kernel, tiles_x=tiles_x, tile_size=tile_size, chunk=self.chunk, axis=self._chunk_axis)
        features, transmittance, last = pl.pallas_call(
            kernel,
            grid=(views, num_tiles),
            in_specs=[pl.no_block_spec, pl.no_block_spec],
            out_specs=[_tile_block(features_block), _tile_block(row), _tile_block(row)],
            out_shape=[
                jax.ShapeDtypeStruct((views, num_tiles, *features_block), jnp.float32),
                jax.ShapeDtypeStruct((views, num_tiles, *row), jnp.float32),
                jax.ShapeDtypeStruct((views, num_tiles, *row), jnp.int32),
            ],
            compiler_params=self._compiler_params(),
            interpret=self.interpret,
            name="splat_forward",
        )(tile_ranges, data)
        features = features if self.pixel_major else jnp.swapaxes(features, 2, 3)
        return features, transmittance.reshape(views, num_tiles, pixels), last.reshape(views, num_tiles, pixels)

    def backward(self, data, tile_ranges, transmittance, last, grad_features, grad_transmittance, tiles_x: int, tile_size: int):
        """Per-pixel inputs as :meth:`forward` returns them -> gradients in the kernel layout ``[V, D, M + chunk]``."""
        views, num_tiles, pixels = data.shape[0], tile_ranges.shape[1] - 1, tile_size * tile_size
        row, features_block = self._pixel_block(pixels)
        as_row = lambda x: x.reshape(views, num_tiles, *row)
        grad_features = grad_features if self.pixel_major else jnp.swapaxes(grad_features, 2, 3)
        kernel = functools.partial(_backward_kernel, tiles_x=tiles_x, tile_size=tile_size, chunk=self.chunk, axis=self._chunk_axis)
        return pl.pallas_call(
            kernel,
            grid=(views, num_tiles),
            in_specs=[
                pl.no_block_spec,
                pl.no_block_spec,
                _tile_block(row),
                _tile_block(row),
                _tile_block(features_block),
                _tile_block(row),
            ],
            out_specs=pl.no_block_spec,
            out_shape=jax.ShapeDtypeStruct(data.shape, jnp.float32),
            compiler_params=self._compiler_params(),
            interpret=self.interpret,
            name="splat_backward",
        )(tile_ranges, data, as_row(transmittance), as_row(last), grad_features, as_row(grad_transmittance))

    @property
    def _chunk_axis(self) -> int:
        return 1 if self.pixel_major else 0

    def _pixel_block(self, pixels: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Block shapes of one tile's per-pixel values and of its F feature values."""
        if self.pixel_major:
            return (pixels, 1), (pixels, NUM_FEATURES)
        return (1, pixels), (NUM_FEATURES, pixels)

    def _compiler_params(self):
        if self.interpret:
            return None
        from jax.experimental.pallas import triton as plt

        return plt.CompilerParams(num_warps=self.num_warps, num_stages=1)


def _tile_block(shape: tuple[int, int]) -> pl.BlockSpec:
    return pl.BlockSpec((None, None, *shape), lambda v, t: (v, t, 0, 0))


def _setup(tile, tiles_x, tile_size, chunk, axis):
    """Pixel centres, in-chunk offsets (both shaped for the layout) and the cumsum along the chunk axis."""
    pixels = tile_size * tile_size
    pixel_shape = (1, pixels) if axis == 0 else (pixels, 1)
    chunk_shape = (chunk, 1) if axis == 0 else (1, chunk)
    pixel_x, pixel_y = pixel_centres(tile, tiles_x, tile_size, pixel_shape, axis=1 - axis)
    offsets = jax.lax.broadcasted_iota(jnp.int32, chunk_shape, axis)
    return pixel_x, pixel_y, offsets, pixel_shape, functools.partial(jnp.cumsum, axis=axis)


def _load_chunk(data_ref, view, start, chunk: int, axis: int) -> list[jax.Array]:
    rows = [data_ref[view, d, pl.ds(start, chunk)] for d in range(TABLE_WIDTH)]
    return [r[:, None] if axis == 0 else r[None, :] for r in rows]


def _feature_slot(f: int, axis: int):
    return (pl.ds(f, 1), slice(None)) if axis == 0 else (slice(None), pl.ds(f, 1))


def _forward_kernel(ranges_ref, data_ref, features_ref, transmittance_ref, last_ref, *, tiles_x, tile_size, chunk, axis):
    view, tile = pl.program_id(0), pl.program_id(1)
    start, end = ranges_ref[view, tile], ranges_ref[view, tile + 1]
    pixel_x, pixel_y, offsets, pixel_shape, cumsum = _setup(tile, tiles_x, tile_size, chunk, axis)

    def not_finished(carry):
        row, state = carry
        return (row < end) & (jnp.min(state.done) == 0)

    def step(carry):
        row, state = carry
        position = row - start + offsets
        columns = _load_chunk(data_ref, view, row, chunk, axis)
        state = forward_chunk(state, columns, position, position < end - start, pixel_x, pixel_y, cumsum, axis)
        return row + chunk, state

    _, state = jax.lax.while_loop(not_finished, step, (start, initial_forward_state(pixel_shape)))
    for f in range(NUM_FEATURES):
        features_ref[_feature_slot(f, axis)] = state.features[f]
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
    axis,
):
    from jax.experimental.pallas import triton as plt

    view, tile = pl.program_id(0), pl.program_id(1)
    start, end = ranges_ref[view, tile], ranges_ref[view, tile + 1]
    pixel_x, pixel_y, offsets, _, cumsum = _setup(tile, tiles_x, tile_size, chunk, axis)
    last = last_ref[...]
    final_transmittance = transmittance_ref[...]
    grad_features = [grad_features_ref[_feature_slot(f, axis)] for f in range(NUM_FEATURES)]
    grad_transmittance = grad_transmittance_ref[...]
    busy_chunks = pl.cdiv(jnp.max(last), chunk)
    all_chunks = pl.cdiv(end - start, chunk)
    lane = jax.lax.broadcasted_iota(jnp.int32, (1, chunk), 1)

    def store(chunk_index, grads):
        row = start + chunk_index * chunk
        mask = chunk_index * chunk + lane < end - start
        for d in range(TABLE_WIDTH):
            value = grads[d].reshape(1, chunk)
            plt.store(grads_ref.at[view, pl.ds(d, 1), pl.ds(row, chunk)], value, mask=mask)

    def backward_step(k, state):
        chunk_index = busy_chunks - 1 - k
        row = start + chunk_index * chunk
        position = chunk_index * chunk + offsets
        state, grads = backward_chunk(
            state,
            _load_chunk(data_ref, view, row, chunk, axis),
            position,
            position < end - start,
            pixel_x,
            pixel_y,
            last,
            final_transmittance,
            grad_features,
            grad_transmittance,
            cumsum,
            axis,
        )
        store(chunk_index, grads)
        return state

    initial = BackwardState(transmittance=final_transmittance, behind=jnp.zeros_like(final_transmittance))
    jax.lax.fori_loop(0, busy_chunks, backward_step, initial)
    zeros = [jnp.zeros((1, chunk), jnp.float32)] * TABLE_WIDTH

    def zero_step(chunk_index, carry):  # rows behind every pixel's last contributor get no gradient
        store(chunk_index, zeros)
        return carry

    jax.lax.fori_loop(busy_chunks, all_chunks, zero_step, 0)
