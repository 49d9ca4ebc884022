"""The projection's gradient as one Triton kernel: per Gaussian, every view in one pass.

XLA differentiates :func:`project.project` pair by pair: its forward writes per-(view, Gaussian)
intermediates ``[V, N]`` for the backward, whose fusions read them back and sum the mean and
covariance gradients over the views (about 1.2 ms at the training render on an H200,
docs/PERFORMANCE.md). Here the forward is ``project`` itself, keeping only its inputs, and the
backward is a kernel in which each thread holds one Gaussian, loops over the views, evaluates that
pair's :func:`project.screen_terms` (the one formula) with its vector-Jacobian product (``jax.vjp``
at trace time) and adds it to the Gaussian's gradients: the sum over views stays in registers.

Gradients with respect to the cameras, where they are asked for, come from XLA's autodiff of
``project`` (the kernel computes only the Gaussians' gradients).
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

GRADIENT_ROWS = 12  # the kernel's output rows per Gaussian: the mean's 3 entries, then the covariance's 3 x 3 (row-major)


@dataclasses.dataclass(frozen=True)
class KernelProjection:
    """``project`` with the kernel gradient: the Triton flavour's projector (a hashable static value)."""

    gaussians_per_program: int = 128  # one per thread
    interpret: bool = False

    def __call__(self, means, covariances, opacities, K, world_to_cam, image_size: tuple[int, int], near: float, far: float) -> Projection:
        """:func:`project.project`'s inputs and result (leading batch axes broadcast)."""
        lead = jnp.broadcast_shapes(means.shape[:-2], covariances.shape[:-3], opacities.shape[:-1], K.shape[:-3], world_to_cam.shape[:-3])
        count, cameras = means.shape[-2], K.shape[-3]
        sets = lambda x, trailing: jnp.broadcast_to(x, lead + trailing).reshape((-1,) + trailing)
        flat = _project_sets(
            self,
            (int(image_size[0]), int(image_size[1])),
            float(near),
            float(far),
            sets(means, (count, 3)),
            sets(covariances, (count, 3, 3)),
            sets(opacities, (count,)),
            sets(K, (cameras, 3, 3)),
            sets(world_to_cam, (cameras, 4, 4)),
        )
        return jax.tree.map(lambda x: x.reshape(lead + x.shape[1:]), flat)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _project_sets(kernel, image_size, near, far, means, covariances, opacities, K, world_to_cam) -> Projection:
    """``G`` Gaussian sets ``[G, N, ...]`` into their cameras ``[G, C, ...]`` -> ``[G, C, N, ...]``."""
    return project(means, covariances, opacities, K, world_to_cam, image_size, near, far)


def _project_sets_forward(kernel, image_size, near, far, *primals):
    values = tuple(p.value for p in primals)
    means, covariances, _, K, world_to_cam = values
    # The residuals' structure says which gradient runs: cameras that are differentiated take XLA's.
    residuals = values if primals[3].perturbed or primals[4].perturbed else (means, covariances, K, world_to_cam)
    return project(*values, image_size, near, far), residuals


def _project_sets_backward(kernel, image_size, near, far, residuals, cotangent: Projection):
    dense = lambda field, like: jnp.zeros(like.shape, like.dtype) if isinstance(field, SymbolicZero) else field
    if len(residuals) == 5:
        primal, pullback = jax.vjp(lambda *args: project(*args, image_size, near, far), *residuals)
        cotangents = jax.tree.map(dense, cotangent, primal, is_leaf=lambda x: isinstance(x, SymbolicZero))
        float0 = lambda x: jnp.zeros(x.shape, jax.dtypes.float0)  # the visibility mask's (integer-valued) cotangent
        return pullback(dataclasses.replace(cotangents, visible=float0(primal.visible)))
    means, covariances, K, world_to_cam = residuals
    sets, count = means.shape[:2]
    cameras = K.shape[1]
    pair = lambda trailing: jax.ShapeDtypeStruct((sets, cameras, count) + trailing, jnp.float32)
    grad_means2d = dense(cotangent.means2d, pair((2,)))
    grad_conics = dense(cotangent.conics, pair((3,)))
    grad_depths = dense(cotangent.depths, pair(()))
    block = kernel.gaussians_per_program
    padded = -(-count // block) * block
    grads = pl.pallas_call(
        functools.partial(_gradient_kernel, image_size=image_size, near=near, far=far, count=count),
        grid=(sets, padded // block),
        in_specs=[pl.no_block_spec] * 7,
        out_specs=pl.no_block_spec,
        out_shape=jax.ShapeDtypeStruct((sets, GRADIENT_ROWS, padded), jnp.float32),
        compiler_params=None if kernel.interpret else plt.CompilerParams(num_warps=max(1, block // 32), num_stages=1),
        interpret=kernel.interpret,
        name="splat_project_gradient",
    )(means, covariances, K, world_to_cam, grad_means2d, grad_conics, grad_depths)
    grads = jnp.swapaxes(grads[:, :, :count], 1, 2)  # [G, N, 12]
    return grads[..., :3], grads[..., 3:].reshape(sets, count, 3, 3), None, None, None  # no gradient for opacities, nor the cameras


_project_sets.defvjp(_project_sets_forward, _project_sets_backward, symbolic_zeros=True)


def _gradient_kernel(
    means_ref,
    covariances_ref,
    K_ref,
    world_to_cam_ref,
    grad_means2d_ref,
    grad_conics_ref,
    grad_depths_ref,
    grads_ref,
    *,
    image_size: tuple[int, int],
    near: float,
    far: float,
    count: int,
):
    """One block of ``B`` Gaussians of set ``g``: ``means [G, N, 3]``, ``covariances [G, N, 3, 3]``, cameras ``[G, C, ...]``,
    the projection's cotangents ``[G, C, N, ...]`` -> ``grads [G, 12, N']`` (rows: ``GRADIENT_ROWS``)."""
    sets, block = pl.program_id(0), grads_ref.shape[-1] // pl.num_programs(1)
    first = pl.program_id(1) * block
    gaussian = jnp.minimum(first + jax.lax.broadcasted_iota(jnp.int32, (block,), 0), count - 1)  # padding lanes repeat the last
    mean = [means_ref[sets, gaussian, i] for i in range(3)]
    sigma = [[covariances_ref[sets, gaussian, i, j] for j in range(3)] for i in range(3)]

    def add_view(view, totals):
        camera = CameraTerms.of(lambda matrix, i, j: matrix[sets, view, i, j], K_ref, world_to_cam_ref)

        def differentiable(mean, sigma):
            t = screen_terms(mean, sigma, camera, image_size, near, far)
            return t.mean_x, t.mean_y, t.conic_a, t.conic_b, t.conic_c, t.depth

        _, pullback = jax.vjp(differentiable, mean, sigma)
        cotangents = (
            *(grad_means2d_ref[sets, view, gaussian, i] for i in range(2)),
            *(grad_conics_ref[sets, view, gaussian, i] for i in range(3)),
            grad_depths_ref[sets, view, gaussian],
        )
        grad_mean, grad_sigma = pullback(cotangents)
        return tuple(total + grad for total, grad in zip(totals, [*grad_mean, *(g for row in grad_sigma for g in row)]))

    zeros = tuple(jnp.zeros((block,), jnp.float32) for _ in range(GRADIENT_ROWS))
    for row, total in enumerate(jax.lax.fori_loop(0, K_ref.shape[1], add_view, zeros)):
        grads_ref[sets, row, pl.ds(first, block)] = total
