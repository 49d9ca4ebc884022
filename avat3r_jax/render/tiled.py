"""The Pallas compositor with its ``custom_vjp``: gather rows, run the tile kernels, reduce gradients.

Forward: the splat table ``[V, N, D]`` and the bins are laid out for the kernel flavour (per-intersection
rows gathered in (tile, depth) order, or the table with the sorted Gaussian ids the kernels read it
through), and composited per tile. Backward: the
backward kernel writes one gradient row per intersection, and the flavour adds each Gaussian's rows
up in a fixed order (deterministic: no atomics, no scatter-add).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

import jax

from avat3r_jax.render.binning import Bins, BinStats, SlotWriter
from avat3r_jax.render.project import Projection
from avat3r_jax.render.tile_math import tiles_to_image

# (scene as renderer.Compositor takes it, image size, (near, far)) -> the projection [V, N, ...] and the splat table [V, N, TABLE_WIDTH].
SplatTable = Callable[[tuple, tuple[int, int], tuple[float, float]], tuple[Projection, jax.Array]]


class TileKernels(Protocol):
    """A kernel flavour (Triton on GPU, Mosaic on TPU); a hashable static value."""

    def slot_writer(self) -> SlotWriter | None:
        """The binner's slot writer for this flavour (None: XLA's)."""

    def splat_table(self) -> SplatTable | None:
        """How the renderer projects the scene and builds the splat table for this flavour (None: XLA, differentiated by XLA)."""

    def layout(self, table: jax.Array, bins: Bins) -> tuple[object, jax.Array]:
        """The splat table ``[V, N, D]`` and the bins -> what the kernels read (arrays), their tile ranges."""

    def per_gaussian(self, grads: jax.Array, bins: Bins) -> jax.Array:
        """The backward kernel's gradient rows -> per-Gaussian sums ``[V, N, D]``."""

    def forward(self, data, kernel_ranges, tiles_x: int, tile_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """-> features ``[V, T, P, F]``, transmittance ``[V, T, P]``, last contributor ``[V, T, P]``."""

    def backward(
        self, data, kernel_ranges, transmittance, last, grad_features, grad_transmittance, tiles_x: int, tile_size: int
    ) -> jax.Array: ...


def composite_pallas(
    kernels: TileKernels, table: jax.Array, bins: Bins, image_size: tuple[int, int], tile_size: int
) -> tuple[jax.Array, jax.Array, BinStats]:
    """``table [V, N, D]`` -> features ``[V, H, W, F]``, transmittance ``[V, H, W]``, stats."""
    tiles_x = -(-image_size[1] // tile_size)
    features, transmittance = _composite(kernels, tiles_x, tile_size, table, bins)
    return tiles_to_image(features, image_size, tile_size), tiles_to_image(transmittance, image_size, tile_size), bins.stats


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _composite(kernels: TileKernels, tiles_x: int, tile_size: int, table, bins: Bins):
    return _composite_forward(kernels, tiles_x, tile_size, table, bins)[0]


def _composite_forward(kernels, tiles_x, tile_size, table, bins):
    data, kernel_ranges = kernels.layout(table, bins)
    features, transmittance, last = kernels.forward(data, kernel_ranges, tiles_x, tile_size)
    return (features, transmittance), (data, kernel_ranges, transmittance, last, bins)


def _composite_backward(kernels, tiles_x, tile_size, residuals, cotangents):
    data, kernel_ranges, transmittance, last, bins = residuals
    grad_features, grad_transmittance = cotangents
    grads = kernels.backward(data, kernel_ranges, transmittance, last, grad_features, grad_transmittance, tiles_x, tile_size)
    return kernels.per_gaussian(grads, bins), None  # None: no cotangent for the integer bins


_composite.defvjp(_composite_forward, _composite_backward)
