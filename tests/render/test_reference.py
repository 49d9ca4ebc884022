import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avat3r_jax.render import rasterize, rasterize_with_config
from avat3r_jax.render.alpha import ALPHA_MAX, ALPHA_MIN, T_MIN
from avat3r_jax.render.reference import composite_dense
from configs.tiny import get_config
from tests.render.scenes import IMAGE_SIZE, random_cameras, random_gaussians


def _sequential_composite(means2d, conics, opacities, features, depths, visible, image_size):
    """The 3DGS per-pixel loop in float64 numpy: front to back, skip, clamp, stop."""
    height, width = image_size
    views, _, channels = features.shape
    out = np.zeros((views, height, width, channels))
    final_t = np.ones((views, height, width))
    for v in range(views):
        order = [i for i in np.argsort(depths[v], kind="stable") if visible[v, i]]
        for y in range(height):
            for x in range(width):
                t = 1.0
                for i in order:
                    dx, dy = x + 0.5 - means2d[v, i, 0], y + 0.5 - means2d[v, i, 1]
                    a, b, c = conics[v, i]
                    alpha = min(ALPHA_MAX, opacities[v, i] * np.exp(-0.5 * (a * dx * dx + 2 * b * dx * dy + c * dy * dy)))
                    if alpha < ALPHA_MIN:
                        continue
                    if t * (1 - alpha) < T_MIN:
                        break
                    out[v, y, x] += features[v, i] * alpha * t
                    t *= 1 - alpha
                final_t[v, y, x] = t
    return out, final_t


def test_dense_reference_matches_the_sequential_loop(x64):
    rng = np.random.default_rng(5)
    views, n, size = 2, 14, (6, 7)
    means2d = rng.uniform(-1, 8, size=(views, n, 2))
    root = rng.normal(size=(views, n, 2, 2)) * 0.8
    cov = root @ np.swapaxes(root, -1, -2) + 0.3 * np.eye(2)
    inv = np.linalg.inv(cov)
    conics = np.stack([inv[..., 0, 0], inv[..., 0, 1], inv[..., 1, 1]], -1)
    opacities = rng.uniform(0.0, 1.0, size=(views, n))
    means2d[0, :5] = [3.4, 2.8] + rng.normal(scale=0.2, size=(5, 2))  # an opaque pile that triggers the stop rule
    opacities[0, :5] = 0.95
    features = rng.uniform(size=(views, n, 4))
    depths = rng.uniform(1, 3, size=(views, n))
    visible = rng.uniform(size=(views, n)) > 0.15
    expected, expected_t = _sequential_composite(means2d, conics, opacities, features, depths, visible, size)
    got, got_t = composite_dense(*map(jnp.asarray, (means2d, conics, opacities, features, depths, visible)), size)
    assert np.min(expected_t) < 1e-3  # the stop rule was exercised
    np.testing.assert_allclose(got, expected, atol=1e-12)
    np.testing.assert_allclose(got_t, expected_t, atol=1e-12)


def test_rasterize_shapes_background_and_batching():
    rng = np.random.default_rng(6)
    batch, num_cameras = 2, 3
    cams = random_cameras(rng, num_cameras, batch=(batch,))
    g = random_gaussians(rng, 24, batch=(batch,))
    background = jnp.array([0.2, 0.4, 0.9])
    render = jax.jit(rasterize, static_argnums=2, static_argnames="backend")  # eager, op by op, took ~25 s on 2 cores
    out = render(g, cams, IMAGE_SIZE, background, backend="reference")
    assert out.images.shape == (batch, num_cameras, *IMAGE_SIZE, 3)
    assert out.alpha.shape == out.depth.shape == (batch, num_cameras, *IMAGE_SIZE, 1)
    assert out.stats.intersections.shape == (batch, num_cameras)
    # Each avatar/camera pair renders like a separate call.
    single = render(jax.tree.map(lambda x: x[1], g), cams[1, 2:3], IMAGE_SIZE, background, backend="reference")
    np.testing.assert_allclose(out.images[1, 2], single.images[0], atol=1e-6)
    # Empty pixels show the background; depth lies within the scene's depth range where covered.
    empty = out.alpha[..., 0] == 0
    assert bool(jnp.any(empty))
    np.testing.assert_allclose(jnp.where(empty[..., None], out.images, background), jnp.broadcast_to(background, out.images.shape))
    covered = out.alpha[..., 0] > 0.5
    assert bool(jnp.all((out.depth[..., 0] > 1.0) & (out.depth[..., 0] < 4.0) | ~covered))


def test_rasterize_with_config_and_bad_inputs():
    rng = np.random.default_rng(7)
    cams = random_cameras(rng, 2)
    g = random_gaussians(rng, 8)
    config = get_config().render
    both = jax.jit(  # one compiled program: eager, op by op, is several times slower on 2 cores
        lambda g: (
            rasterize_with_config(g, cams, IMAGE_SIZE, config),
            rasterize(g, cams, IMAGE_SIZE, jnp.asarray(config.background), backend=config.backend),
        )
    )
    out, direct = both(g)
    np.testing.assert_array_equal(out.images, direct.images)
    with pytest.raises(ValueError, match="backend"):
        rasterize(g, cams, IMAGE_SIZE, jnp.ones(3), backend="cuda")
    with pytest.raises(ValueError, match="camera axis"):
        rasterize(g, cams[0], IMAGE_SIZE, jnp.ones(3))
    with pytest.raises(ValueError, match="near"):
        rasterize(g, cams, IMAGE_SIZE, jnp.ones(3), near=0.0)
    with pytest.raises(ValueError, match="batch shape"):
        rasterize(random_gaussians(rng, 8, batch=(3,)), random_cameras(rng, 2, batch=(2,)), IMAGE_SIZE, jnp.ones(3))


def test_reference_gradients_are_finite_and_jit_works():
    rng = np.random.default_rng(8)
    cams = random_cameras(rng, 2)
    g = random_gaussians(rng, 16, behind=cams)

    @jax.jit
    def loss(g):
        out = rasterize(g, cams, IMAGE_SIZE, jnp.ones(3), backend="reference")
        return jnp.sum(out.images) + jnp.sum(out.depth) + jnp.sum(out.alpha)

    grads = jax.grad(loss)(g)
    for leaf in jax.tree.leaves(grads):
        assert bool(jnp.all(jnp.isfinite(leaf)))
    assert float(jnp.max(jnp.abs(grads.means))) > 0
