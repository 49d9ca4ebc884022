import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avat3r_jax import gaussians as gs


def random_gaussians(rng, n, batch=(), sh_degree=0) -> gs.Gaussians:
    shape = tuple(batch) + (n,)
    k = (sh_degree + 1) ** 2 - 1
    f = lambda *s: jnp.asarray(rng.normal(size=shape + s), jnp.float32)
    return gs.Gaussians.create(f(3), f(3), f(4), f(), f(3), f(k, 3) if sh_degree else None)


def test_activations_match_formulas(rng):
    g = random_gaussians(rng, 10)
    np.testing.assert_allclose(g.scales, np.exp(g.log_scales), rtol=1e-6)
    np.testing.assert_allclose(g.opacities, 1 / (1 + np.exp(-np.asarray(g.opacity_logits))), rtol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(g.rotations, axis=-1), 1.0, rtol=1e-6)
    assert g.covariances.shape == (10, 3, 3)


def test_from_activated_inverts_activations(rng):
    g = random_gaussians(rng, 8)
    back = gs.from_activated(g.means, g.scales, g.rotations, g.opacities, g.colors)
    np.testing.assert_allclose(back.log_scales, g.log_scales, atol=1e-5)
    np.testing.assert_allclose(back.opacity_logits, g.opacity_logits, atol=1e-4)


def test_validation_names_the_bad_field(rng):
    g = random_gaussians(rng, 5)
    with pytest.raises(ValueError, match="quaternions"):
        gs.Gaussians.create(g.means, g.log_scales, g.quaternions[:, :3], g.opacity_logits, g.colors)
    with pytest.raises(ValueError, match="opacity_logits"):
        gs.Gaussians.create(g.means, g.log_scales, g.quaternions, g.opacity_logits[:4], g.colors)
    with pytest.raises(ValueError, match="SH coefficients"):
        gs.Gaussians.create(g.means, g.log_scales, g.quaternions, g.opacity_logits, g.colors, jnp.zeros((5, 2, 3)))


def test_concatenate_slice_count_and_batch(rng):
    a, b = random_gaussians(rng, 4, batch=(2,)), random_gaussians(rng, 6, batch=(2,))
    joined = gs.concatenate([a, b])
    assert joined.count == 10 and joined.batch_shape == (2,)
    np.testing.assert_array_equal(joined[4:].means, b.means)
    np.testing.assert_array_equal(joined[jnp.array([0, 5])].opacity_logits, jnp.stack([a.opacity_logits[:, 0], b.opacity_logits[:, 1]], 1))
    with pytest.raises(ValueError, match="batch shapes"):
        gs.concatenate([a, random_gaussians(rng, 3, batch=(3,))])
    flat = joined.reshape_batch((1, 2))
    assert flat.means.shape == (1, 2, 10, 3) and flat.sh_rest.shape == (1, 2, 10, 0, 3)


def test_is_a_pytree_under_jit(rng):
    g = random_gaussians(rng, 3, sh_degree=1)
    doubled = jax.jit(lambda g: jax.tree.map(lambda x: 2 * x, g))(g)
    assert isinstance(doubled, gs.Gaussians)
    np.testing.assert_allclose(doubled.means, 2 * g.means)


def test_sh_colours_degree_one_match_direct_formula(rng):
    g = random_gaussians(rng, 7, sh_degree=1)
    centers = jnp.asarray(rng.normal(size=(2, 3)) * 5, jnp.float32)
    colors = g.colors_from(centers)
    assert colors.shape == (2, 7, 3)
    d = np.asarray(g.means)[None] - np.asarray(centers)[:, None]
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    c1 = 0.4886025119029199
    basis = np.stack([-c1 * d[..., 1], c1 * d[..., 2], -c1 * d[..., 0]], -1)
    expected = np.maximum(np.asarray(g.colors)[None] + np.einsum("cnk,nkd->cnd", basis, np.asarray(g.sh_rest)), 0)
    np.testing.assert_allclose(colors, expected, atol=1e-5)


def test_sh_degree_zero_colours_are_view_independent(rng):
    g = random_gaussians(rng, 4)
    colors = g.colors_from(jnp.ones((3, 3)))
    np.testing.assert_array_equal(colors, jnp.broadcast_to(g.colors, (3, 4, 3)))
