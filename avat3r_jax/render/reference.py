"""Dense reference compositor: every Gaussian against every pixel, front to back by depth.

The ground truth for the tiled backends (forward and, through autodiff, gradients). Memory grows
as ``views * H * W * N``: small images and few Gaussians only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from avat3r_jax.geometry import pixel_grid
from avat3r_jax.render.alpha import T_MIN, splat_alpha


def composite_dense(
    means2d: jax.Array,
    conics: jax.Array,
    opacities: jax.Array,
    features: jax.Array,
    depths: jax.Array,
    visible: jax.Array,
    image_size: tuple[int, int],
) -> tuple[jax.Array, jax.Array]:
    """Composites views of screen-space Gaussians.

    Args: ``means2d [V, N, 2]``, ``conics [V, N, 3]``, ``opacities [V, N]``, ``features [V, N, F]``,
    ``depths [V, N]``, ``visible [V, N]`` (bool), static ``image_size (H, W)``.
    Returns ``features [V, H, W, F]`` (sum of weight * feature) and final transmittance ``[V, H, W]``.
    """
    height, width = image_size
    order = jnp.argsort(jnp.where(visible, depths, jnp.inf), axis=-1, stable=True)  # [V, N]
    take = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)
    means2d, conics, opacities, features, visible = map(take, (means2d, conics, opacities, features, visible))

    pixels = pixel_grid(height, width, means2d.dtype).reshape(-1, 2)  # [P, 2]
    dx = pixels[None, :, None, 0] - means2d[:, None, :, 0]  # [V, P, N]
    dy = pixels[None, :, None, 1] - means2d[:, None, :, 1]
    alpha, _ = splat_alpha(dx, dy, conics[:, None, :, 0], conics[:, None, :, 1], conics[:, None, :, 2], opacities[:, None, :])
    alpha = jnp.where(visible[:, None, :], alpha, 0.0)
    # Stop rule: a Gaussian contributes only while the transmittance after it stays >= T_MIN; since
    # transmittance only falls, the contributors form a prefix of the depth order.
    keep = jnp.cumprod(1.0 - alpha, axis=-1) >= T_MIN
    alpha = jnp.where(keep, alpha, 0.0)
    transmittance = jnp.cumprod(1.0 - alpha, axis=-1)  # [V, P, N], after each Gaussian
    before = jnp.concatenate([jnp.ones_like(transmittance[..., :1]), transmittance[..., :-1]], -1)
    weights = alpha * before
    out = jnp.einsum("vpn,vnf->vpf", weights, features, precision=jax.lax.Precision.HIGHEST)
    num_views = means2d.shape[0]
    return out.reshape(num_views, height, width, -1), transmittance[..., -1].reshape(num_views, height, width)
