"""The 3D Gaussian set: a pytree dataclass of raw (pre-activation) parameters.

Shapes: a set of ``N`` Gaussians may carry leading batch axes ``[...]``:
``means [..., N, 3]``, ``log_scales [..., N, 3]``, ``quaternions [..., N, 4]`` (w, x, y, z; not
necessarily unit), ``opacity_logits [..., N]``, ``colors [..., N, 3]`` (RGB, the SH degree-0 term
expressed as a colour) and ``sh_rest [..., N, K - 1, 3]`` (higher SH bands, ``K = (degree + 1)^2``;
an empty ``K - 1 = 0`` axis for plain RGB).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from avat3r_jax.geometry.quaternions import covariance_from_scale_rotation, normalize_quaternion

# Real spherical-harmonic constants (bands 0..3), the usual graphics normalisation.
SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def sh_degree_of(num_coefficients: int) -> int:
    """SH degree ``d`` with ``(d + 1)^2 == num_coefficients``."""
    degree = math.isqrt(num_coefficients) - 1
    if (degree + 1) ** 2 != num_coefficients or degree > 3:
        raise ValueError(f"{num_coefficients} SH coefficients is not (d+1)^2 for a degree d in 0..3")
    return degree


def sh_basis_rest(directions: jax.Array, degree: int) -> jax.Array:
    """Real SH basis bands 1..degree at unit ``directions [..., 3]`` -> ``[..., (degree+1)^2 - 1]``."""
    x, y, z = directions[..., 0], directions[..., 1], directions[..., 2]
    terms = []
    if degree >= 1:
        terms += [-_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        terms += [
            _SH_C2[0] * xy,
            _SH_C2[1] * yz,
            _SH_C2[2] * (2 * zz - xx - yy),
            _SH_C2[3] * xz,
            _SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        terms += [
            _SH_C3[0] * y * (3 * xx - yy),
            _SH_C3[1] * xy * z,
            _SH_C3[2] * y * (4 * zz - xx - yy),
            _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            _SH_C3[4] * x * (4 * zz - xx - yy),
            _SH_C3[5] * z * (xx - yy),
            _SH_C3[6] * x * (xx - 3 * yy),
        ]
    if not terms:
        return jnp.zeros(directions.shape[:-1] + (0,), directions.dtype)
    return jnp.stack(terms, -1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Gaussians:
    """Raw Gaussian parameters; the properties apply the activations."""

    means: jax.Array
    log_scales: jax.Array
    quaternions: jax.Array
    opacity_logits: jax.Array
    colors: jax.Array
    sh_rest: jax.Array

    @classmethod
    def create(cls, means, log_scales, quaternions, opacity_logits, colors, sh_rest=None) -> Gaussians:
        """Builds and validates a set; ``sh_rest=None`` means plain RGB (degree 0)."""
        if sh_rest is None:
            sh_rest = jnp.zeros(tuple(colors.shape[:-1]) + (0, 3), colors.dtype)
        gaussians = cls(means, log_scales, quaternions, opacity_logits, colors, sh_rest)
        gaussians.validate()
        return gaussians

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first field whose shape disagrees with ``means``."""
        if self.means.ndim < 2 or self.means.shape[-1] != 3:
            raise ValueError(f"Gaussians.means must be [..., N, 3], got {self.means.shape}")
        lead = tuple(self.means.shape[:-1])
        expected = {
            "log_scales": lead + (3,),
            "quaternions": lead + (4,),
            "opacity_logits": lead,
            "colors": lead + (3,),
        }
        for name, shape in expected.items():
            actual = tuple(getattr(self, name).shape)
            if actual != shape:
                raise ValueError(f"Gaussians.{name} must have shape {shape} (from means {self.means.shape}), got {actual}")
        rest = tuple(self.sh_rest.shape)
        if rest[:-2] != lead or rest[-1] != 3:
            raise ValueError(f"Gaussians.sh_rest must be {lead + ('K-1', 3)}, got {rest}")
        sh_degree_of(rest[-2] + 1)

    @property
    def count(self) -> int:
        return self.means.shape[-2]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[:-2])

    @property
    def sh_degree(self) -> int:
        return sh_degree_of(self.sh_rest.shape[-2] + 1)

    @property
    def scales(self) -> jax.Array:
        return jnp.exp(self.log_scales)

    @property
    def rotations(self) -> jax.Array:
        """Unit quaternions ``[..., N, 4]``."""
        return normalize_quaternion(self.quaternions)

    @property
    def opacities(self) -> jax.Array:
        return jax.nn.sigmoid(self.opacity_logits)

    @property
    def covariances(self) -> jax.Array:
        """World-space covariances ``[..., N, 3, 3]``."""
        return covariance_from_scale_rotation(self.scales, self.quaternions)

    def colors_from(self, camera_centers: jax.Array) -> jax.Array:
        """View-dependent RGB ``[..., C, N, 3]`` seen from camera centres ``[..., C, 3]``.

        Degree 0 returns ``colors`` broadcast over cameras; higher degrees add the SH bands
        evaluated at the unit direction from each camera to each Gaussian, clamped at 0 as in 3DGS.
        """
        base = jnp.broadcast_to(
            self.colors[..., None, :, :],
            self.colors.shape[:-2] + (camera_centers.shape[-2],) + self.colors.shape[-2:],
        )
        if self.sh_degree == 0:
            return base
        directions = self.means[..., None, :, :] - camera_centers[..., :, None, :]
        directions = directions / jnp.maximum(jnp.linalg.norm(directions, axis=-1, keepdims=True), 1e-12)
        basis = sh_basis_rest(directions, self.sh_degree)  # [..., C, N, K-1]
        view_term = jnp.einsum("...cnk,...nkd->...cnd", basis, self.sh_rest)
        return jnp.maximum(base + view_term, 0.0)

    def __getitem__(self, index) -> Gaussians:
        """Selects Gaussians along the ``N`` axis (``index`` is a slice or integer array)."""
        return Gaussians(
            self.means[..., index, :],
            self.log_scales[..., index, :],
            self.quaternions[..., index, :],
            self.opacity_logits[..., index],
            self.colors[..., index, :],
            self.sh_rest[..., index, :, :],
        )

    def reshape_batch(self, batch_shape: Sequence[int]) -> Gaussians:
        """Reshapes the leading batch axes (the ``N`` axis and trailing axes stay)."""
        batch_shape = tuple(batch_shape)
        return jax.tree.map(
            lambda leaf, trailing: leaf.reshape(batch_shape + leaf.shape[leaf.ndim - trailing :]),
            self,
            _TRAILING_AXES,
        )

    def astype(self, dtype) -> Gaussians:
        return jax.tree.map(lambda leaf: leaf.astype(dtype), self)


# How many trailing (per-Gaussian) axes each field has, counting the N axis.
_TRAILING_AXES = Gaussians(2, 2, 2, 1, 2, 3)


def concatenate(sets: Sequence[Gaussians]) -> Gaussians:
    """Joins Gaussian sets along ``N``; their batch shapes and SH degrees must match."""
    if not sets:
        raise ValueError("concatenate needs at least one Gaussian set")
    degrees = {g.sh_degree for g in sets}
    batches = {g.batch_shape for g in sets}
    if len(degrees) > 1 or len(batches) > 1:
        raise ValueError(f"cannot concatenate Gaussian sets with SH degrees {degrees} and batch shapes {batches}")
    return jax.tree.map(
        lambda trailing, *leaves: jnp.concatenate(leaves, axis=-trailing),
        _TRAILING_AXES,
        *sets,
    )


def from_activated(means, scales, rotations, opacities, colors, sh_rest=None) -> Gaussians:
    """Builds raw parameters from activated values (scales > 0, opacities in (0, 1))."""
    opacities = jnp.clip(opacities, 1e-6, 1 - 1e-6)
    return Gaussians.create(
        means,
        jnp.log(scales),
        rotations,
        jnp.log(opacities) - jnp.log1p(-opacities),
        colors,
        sh_rest,
    )
