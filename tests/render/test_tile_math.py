"""The per-block footprint test the Triton kernels cull with."""

import jax.numpy as jnp
import numpy as np

from avat3r_jax.render.alpha import splat_alpha
from avat3r_jax.render.tile_math import may_touch


def test_may_touch_never_misses_a_contributing_gaussian_and_culls_most_far_ones():
    rng = np.random.default_rng(5)
    n = 2000
    axes = rng.uniform(0.5, 6.0, size=(n, 2))
    angle = rng.uniform(0, np.pi, n)
    rotation = np.stack([np.stack([np.cos(angle), -np.sin(angle)], -1), np.stack([np.sin(angle), np.cos(angle)], -1)], -2)
    covariance = rotation @ (axes[..., None] ** 2 * np.eye(2)) @ np.swapaxes(rotation, -1, -2)
    conic = np.linalg.inv(covariance)
    columns = [
        jnp.asarray(c, jnp.float32)
        for c in (*rng.uniform(-20, 28, size=(2, n)), conic[:, 0, 0], conic[:, 0, 1], conic[:, 1, 1], rng.uniform(0.001, 1.0, n))
    ]
    x_range, y_range = (0.5, 7.5), (0.5, 7.5)  # an 8x8 block's pixel centres
    ys, xs = np.mgrid[0.5:8, 0.5:8]
    alpha, _ = splat_alpha(xs.reshape(-1)[None] - columns[0][:, None], ys.reshape(-1)[None] - columns[1][:, None],
                           *(c[:, None] for c in columns[2:6]))  # fmt: skip
    contributes = np.asarray(jnp.any(alpha > 0, axis=1))
    touches = np.asarray(may_touch(columns, x_range, y_range))
    assert contributes.any() and not np.any(contributes & ~touches)  # conservative
    assert np.mean(~touches) > 0.5 and np.mean(touches & ~contributes) < 0.1  # and tight
