"""EWA projection of 3D Gaussians to screen-space ellipses, batched over cameras.

Shapes: ``N`` Gaussians, ``C`` cameras, shared leading batch axes ``[...]``. The 2D covariance is
``J W Σ W^T J^T + 0.3 I`` (the 0.3 px low-pass). A Gaussian's screen footprint is the
axis-aligned box where its alpha can reach the 1/255 skip threshold, so a tiled renderer that
visits only the tiles under that box gives exactly the dense result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from avat3r_jax.geometry import quaternion_to_rotation
from avat3r_jax.render.alpha import ALPHA_MIN

LOW_PASS = 0.3  # px^2 added to the 2D covariance diagonal.
FRUSTUM_MARGIN = 0.15  # Jacobian x/z, y/z clamp: the image's angular extent widened by this fraction per side.
RADIUS_SLACK = 1.001  # Footprint inflation guarding against rounding at the 1/255 boundary.


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Projection:
    """Screen-space Gaussians ``[..., C, N, ...]``; fields of culled Gaussians are finite but unused."""

    means2d: jax.Array  # [..., C, N, 2] pixel coordinates (pixel centres at +0.5)
    conics: jax.Array  # [..., C, N, 3] inverse 2D covariance (A, B, C) of [[A, B], [B, C]]
    depths: jax.Array  # [..., C, N] camera-space z
    radii: jax.Array  # [..., C, N, 2] half extents (px) of the box where alpha >= 1/255; 0 when culled
    visible: jax.Array  # [..., C, N] bool: in front of near, before far, footprint overlaps the image


def project(
    means: jax.Array,
    covariances: jax.Array,
    opacities: jax.Array,
    K: jax.Array,
    world_to_cam: jax.Array,
    image_size: tuple[int, int],
    near: float,
    far: float,
) -> Projection:
    """Projects ``means [..., N, 3]``, ``covariances [..., N, 3, 3]``, ``opacities [..., N]`` into
    cameras ``K [..., C, 3, 3]``, ``world_to_cam [..., C, 4, 4]`` for an image of ``(H, W)`` pixels."""
    # Component arrays ([..., C, 1] per camera entry, [..., 1, N] per Gaussian entry, [..., C, N] per
    # pair) rather than stacked small matrices: the whole projection and its gradient are then a few
    # elementwise fusions, with no [..., C, N, 3, 3] intermediate written out.
    camera = lambda matrix, i, j: matrix[..., i, j, None]  # [..., C, 1]
    terms = screen_terms(
        [means[..., None, :, i] for i in range(3)],
        [[covariances[..., None, :, i, j] for j in range(3)] for i in range(3)],
        CameraTerms.of(camera, K, world_to_cam),
        image_size,
        near,
        far,
    )
    means2d = jnp.stack([terms.mean_x, terms.mean_y], -1)
    conics = jnp.stack([terms.conic_a, terms.conic_b, terms.conic_c], -1)
    depth, a, c = terms.depth, terms.cov_a, terms.cov_c
    height, width = image_size

    # Box where opacity * exp(-q / 2) >= 1/255, i.e. q <= 2 ln(255 opacity); its half widths are
    # sqrt(level * Σ_xx) and sqrt(level * Σ_yy). Discrete, so no gradient flows through it.
    opacities = jnp.broadcast_to(opacities[..., None, :], depth.shape)
    level = 2.0 * jnp.log(jnp.maximum(opacities / ALPHA_MIN, 1.0))
    radii = jax.lax.stop_gradient(RADIUS_SLACK * jnp.sqrt(level[..., None] * jnp.stack([a, c], -1)))
    lo, hi = means2d - radii, means2d + radii
    on_screen = (hi[..., 0] > 0) & (lo[..., 0] < width) & (hi[..., 1] > 0) & (lo[..., 1] < height)
    visible = jax.lax.stop_gradient(terms.in_depth & on_screen & (level > 0))
    radii = jnp.where(visible[..., None], radii, 0.0)
    return Projection(means2d=means2d, conics=conics, depths=depth, radii=radii, visible=visible)


class CameraTerms(NamedTuple):
    """One camera's entries as broadcastable arrays (``[..., C, 1]`` in :func:`project`, scalars in a kernel)."""

    rotation: list[list[jax.Array]]  # world_to_cam[:3, :3]
    translation: list[jax.Array]  # world_to_cam[:3, 3]
    fx: jax.Array
    fy: jax.Array
    cx: jax.Array
    cy: jax.Array

    @classmethod
    def of(cls, entry: Callable[[jax.Array, int, int], jax.Array], K: jax.Array, world_to_cam: jax.Array) -> CameraTerms:
        """The terms read by ``entry(matrix, row, column)`` from ``K`` and ``world_to_cam``."""
        return cls(
            rotation=[[entry(world_to_cam, i, j) for j in range(3)] for i in range(3)],
            translation=[entry(world_to_cam, i, 3) for i in range(3)],
            fx=entry(K, 0, 0),
            fy=entry(K, 1, 1),
            cx=entry(K, 0, 2),
            cy=entry(K, 1, 2),
        )


class ScreenTerms(NamedTuple):
    """A (camera, Gaussian) pair seen on screen, as broadcast arrays."""

    mean_x: jax.Array  # pixel coordinates of the mean
    mean_y: jax.Array
    conic_a: jax.Array  # inverse 2D covariance [[A, B], [B, C]]
    conic_b: jax.Array
    conic_c: jax.Array
    depth: jax.Array  # camera-space z
    cov_a: jax.Array  # 2D covariance diagonal (low-pass included)
    cov_c: jax.Array
    in_depth: jax.Array  # bool: near < z < far


def screen_terms(
    mean: list[jax.Array], sigma: list[list[jax.Array]], camera: CameraTerms, image_size: tuple[int, int], near: float, far: float
) -> ScreenTerms:
    """The EWA projection of one pair, from the mean's 3 and the covariance's 3 x 3 entries (broadcastable arrays).

    The one formula :func:`project` and the Triton projection gradient (``project_triton``) both evaluate.
    """
    height, width = image_size
    rotation = camera.rotation
    cam = [sum(rotation[i][j] * mean[j] for j in range(3)) + camera.translation[i] for i in range(3)]
    depth = cam[2]
    in_depth = (depth > near) & (depth < far)
    z = jnp.where(in_depth, depth, 1.0)  # keeps culled Gaussians' math (and gradients) finite
    x_over_z, y_over_z = cam[0] / z, cam[1] / z
    # The Jacobian J of the pixel projection is evaluated with x/z, y/z clamped to a widened frustum
    # (as in 3DGS), which keeps Gaussians far outside the view from producing huge, unstable
    # footprints. cov2d = J W Σ W^T J^T = M Σ M^T with the two rows of M = J W (W the rotation).
    tx = _clamp_to_frustum(x_over_z, camera.cx, camera.fx, width)
    ty = _clamp_to_frustum(y_over_z, camera.cy, camera.fy, height)
    m0 = [camera.fx / z * (rotation[0][k] - tx * rotation[2][k]) for k in range(3)]
    m1 = [camera.fy / z * (rotation[1][k] - ty * rotation[2][k]) for k in range(3)]
    sigma_m0 = [sum(sigma[k][j] * m0[j] for j in range(3)) for k in range(3)]
    sigma_m1 = [sum(sigma[k][j] * m1[j] for j in range(3)) for k in range(3)]
    a = sum(m0[k] * sigma_m0[k] for k in range(3)) + LOW_PASS
    b = sum(m1[k] * sigma_m0[k] for k in range(3))
    c = sum(m1[k] * sigma_m1[k] for k in range(3)) + LOW_PASS
    det = a * c - b * b  # >= LOW_PASS^2 since cov2d is positive semi-definite
    return ScreenTerms(
        mean_x=camera.fx * x_over_z + camera.cx,
        mean_y=camera.fy * y_over_z + camera.cy,
        conic_a=c / det,
        conic_b=-b / det,
        conic_c=a / det,
        depth=depth,
        cov_a=a,
        cov_c=c,
        in_depth=in_depth,
    )


def covariances_3d(scales: jax.Array, quaternions: jax.Array) -> jax.Array:
    """``R diag(s^2) R^T [..., N, 3, 3]`` from ``scales [..., N, 3]`` and quaternions, without matrix-unit products."""
    scaled = quaternion_to_rotation(quaternions) * scales[..., None, :]
    return _small_matmul(scaled, jnp.swapaxes(scaled, -1, -2))


def _small_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` for tiny trailing matrices as a broadcast product and sum: exact float32 and fusible
    (a batched dot_general of 3x3 matrices is slow on GPUs and runs at TF32 there by default)."""
    return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def _clamp_to_frustum(ratio: jax.Array, principal: jax.Array, focal: jax.Array, size: int) -> jax.Array:
    """Clamps x/z (or y/z) to the image's extent ``[-principal, size - principal] / focal`` widened by a margin."""
    lo, hi = -principal / focal, (size - principal) / focal
    margin = FRUSTUM_MARGIN * (hi - lo)
    return jnp.clip(ratio, lo - margin, hi + margin)
