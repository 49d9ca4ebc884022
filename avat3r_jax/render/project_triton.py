"""The splat table with its gradient as one Triton kernel: per Gaussian, every view in one pass.

XLA differentiates :func:`project.project` pair by pair: its forward writes per-(view, Gaussian)
intermediates ``[V, N]`` for the backward, whose fusions read them back and sum the mean and
covariance gradients over the views (about 1.2 ms at the training render on an H200,
docs/PERFORMANCE.md). Here the forward is ``project`` and :func:`tile_math.splat_table` as XLA
computes them, keeping only the inputs, and the backward is a kernel that reads the table's
cotangent ``[V, N, TABLE_WIDTH]`` (the per-Gaussian gradient sums). Each thread holds one Gaussian,
loops over the views, evaluates that pair's :func:`project.screen_terms` (the one formula) with its
vector-Jacobian product (``jax.vjp`` at trace time) and adds it, and the opacity column, to the
Gaussian's gradients: the sum over views stays in registers. The colour columns' cotangent is
returned as it is (the colours may differ per view).

Where the cameras are differentiated, or the projection itself (not only the table) gets a
cotangent, the gradient is XLA's autodiff of the same forward instead.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from avat3r_jax.render.project import CameraTerms, Projection, project, screen_terms
from avat3r_jax.render.tile_math import COLOR_COLUMNS, DEPTH_COLUMN, OPACITY_COLUMN, splat_table

GRADIENT_COLUMNS = 13  # the kernel's gradient per Gaussian: the mean's 3 entries, the covariance's 3 x 3 (row-major), the opacity


@dataclasses.dataclass(frozen=True)
class KernelSplatTable:
    """The Triton flavour's splat table: a hashable static value, called as ``tiled.SplatTable``."""

    gaussians_per_program: int = 128  # one per thread
    interpret: bool = False

    def __call__(self, scene, image_size: tuple[int, int], depth_range: tuple[float, float]) -> tuple[Projection, jax.Array]:
        """``scene`` as ``renderer.Compositor`` takes it -> the projection ``[V, N, ...]`` and the table ``[V, N, TABLE_WIDTH]``."""
        means, covariances, opacities, colors, K, world_to_cam = scene
        lead = jnp.broadcast_shapes(means.shape[:-2], covariances.shape[:-3], opacities.shape[:-1], colors.shape[:-3], K.shape[:-3])
        lead = jnp.broadcast_shapes(lead, world_to_cam.shape[:-3])
        count, cameras = means.shape[-2], K.shape[-3]
        sets = lambda x, trailing: jnp.broadcast_to(x, lead + trailing).reshape((-1,) + trailing)
        projection, table = _table_sets(
            self,
            (int(image_size[0]), int(image_size[1])),
            tuple(float(d) for d in depth_range),
            sets(means, (count, 3)),
            sets(covariances, (count, 3, 3)),
            sets(opacities, (count,)),
            sets(colors, (cameras, count, 3)),
            sets(K, (cameras, 3, 3)),
            sets(world_to_cam, (cameras, 4, 4)),
        )
        views = lambda x: x.reshape((-1,) + x.shape[2:])  # [G, C, N, ...] -> [V, N, ...]
        return jax.tree.map(views, projection), views(table)


def _table(image_size, depth_range, means, covariances, opacities, colors, K, world_to_cam) -> tuple[Projection, jax.Array]:
    """``G`` Gaussian sets ``[G, N, ...]`` (colours ``[G, C, N, 3]``) in their cameras ``[G, C, ...]`` -> ``[G, C, N, ...]``."""
    p = project(means, covariances, opacities, K, world_to_cam, image_size, *depth_range)
    # The table's columns read the projection as computed once (without the barrier XLA evaluates the
    # projection again inside the table's fusion for each column that needs it).
    p = jax.lax.optimization_barrier(p)
    return p, splat_table(p.means2d, p.conics, jnp.broadcast_to(opacities[:, None], p.depths.shape), colors, p.depths)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _table_sets(kernel, image_size, depth_range, *scene):
    return _table(image_size, depth_range, *scene)


def _table_sets_forward(kernel, image_size, depth_range, *primals):
    scene = tuple(p.value for p in primals)
    # The residuals' structure says which gradient runs: a marker () for XLA's (the cameras are differentiated), None for the kernel's.
    cameras_perturbed = primals[4].perturbed or primals[5].perturbed
    return _table(image_size, depth_range, *scene), (scene, () if cameras_perturbed else None)


def _table_sets_backward(kernel, image_size, depth_range, residuals, cotangents):
    scene, xla_marker = residuals
    projection_cotangent, table_cotangent = cotangents
    symbolic = lambda x: isinstance(x, SymbolicZero)
    projection_used = not all(symbolic(field) for field in jax.tree.leaves(projection_cotangent, is_leaf=symbolic))
    if xla_marker is not None or projection_used or symbolic(table_cotangent):
        return _xla_gradient(image_size, depth_range, scene, cotangents)
    means, covariances, _, _, K, world_to_cam = scene
    sets, count = means.shape[:2]
    block = kernel.gaussians_per_program
    padded = -(-count // block) * block
    grads = pl.pallas_call(
        functools.partial(_gradient_kernel, image_size=image_size, depth_range=depth_range, count=count),
        grid=(sets, padded // block),
        in_specs=[pl.no_block_spec] * 5,
        out_specs=pl.no_block_spec,
        out_shape=jax.ShapeDtypeStruct((sets, padded, GRADIENT_COLUMNS), jnp.float32),
        compiler_params=None if kernel.interpret else plt.CompilerParams(num_warps=max(1, block // 32), num_stages=1),
        interpret=kernel.interpret,
        name="splat_project_gradient",
    )(means, covariances, K, world_to_cam, table_cotangent)[:, :count]
    mean, covariance, opacity = grads[..., :3], grads[..., 3:12].reshape(sets, count, 3, 3), grads[..., 12]
    return mean, covariance, opacity, table_cotangent[..., COLOR_COLUMNS], None, None  # None: the cameras (not perturbed)


_table_sets.defvjp(_table_sets_forward, _table_sets_backward, symbolic_zeros=True)


def _xla_gradient(image_size, depth_range, scene, cotangents):
    """XLA's autodiff of the forward (evaluated again here), every input's cotangent."""
    primal, pullback = jax.vjp(lambda *args: _table(image_size, depth_range, *args), *scene)
    dense = lambda cotangent, value: jnp.zeros(value.shape, value.dtype) if isinstance(cotangent, SymbolicZero) else cotangent
    cotangents = jax.tree.map(dense, cotangents, primal, is_leaf=lambda x: isinstance(x, SymbolicZero))
    projection, table = cotangents
    float0 = jnp.zeros(projection.visible.shape, jax.dtypes.float0)  # the visibility mask's cotangent (bool-valued)
    return pullback((dataclasses.replace(projection, visible=float0), table))


def _gradient_kernel(
    means_ref, covariances_ref, K_ref, world_to_cam_ref, table_cotangent_ref, grads_ref, *, image_size, depth_range, count
):
    """One block of ``B`` Gaussians of set ``g``: ``means [G, N, 3]``, ``covariances [G, N, 3, 3]``, cameras ``[G, C, ...]``,
    the table's cotangent ``[G, C, N, TABLE_WIDTH]`` -> ``grads [G, N', GRADIENT_COLUMNS]``."""
    sets, block = pl.program_id(0), grads_ref.shape[1] // pl.num_programs(1)
    row = pl.program_id(1) * block + jax.lax.broadcasted_iota(jnp.int32, (block,), 0)
    gaussian = jnp.minimum(row, count - 1)  # padding lanes repeat the last Gaussian (into rows past N)
    mean = [means_ref[sets, gaussian, i] for i in range(3)]
    sigma = [[covariances_ref[sets, gaussian, i, j] for j in range(3)] for i in range(3)]

    def add_view(view, totals):
        camera = CameraTerms.of(lambda matrix, i, j: matrix[sets, view, i, j], K_ref, world_to_cam_ref)

        def differentiable(mean, sigma):
            t = screen_terms(mean, sigma, camera, image_size, *depth_range)
            return t.mean_x, t.mean_y, t.conic_a, t.conic_b, t.conic_c, t.depth

        _, pullback = jax.vjp(differentiable, mean, sigma)
        cotangent = lambda column: table_cotangent_ref[sets, view, gaussian, column]
        grad_mean, grad_sigma = pullback((*(cotangent(c) for c in range(5)), cotangent(DEPTH_COLUMN)))
        grads = [*grad_mean, *(g for sigma_row in grad_sigma for g in sigma_row), cotangent(OPACITY_COLUMN)]
        return tuple(total + grad for total, grad in zip(totals, grads))

    zeros = tuple(jnp.zeros((block,), jnp.float32) for _ in range(GRADIENT_COLUMNS))
    for column, total in enumerate(jax.lax.fori_loop(0, K_ref.shape[1], add_view, zeros)):
        grads_ref[sets, row, column] = total
