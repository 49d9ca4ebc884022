"""PSNR and the mean-colour baseline against numpy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avat3r_jax.train import losses, metrics

psnr = jax.jit(metrics.psnr, static_argnames="max_val")


def test_psnr_matches_formula(rng):
    a = rng.uniform(size=(2, 3, 8, 9, 3))
    b = np.clip(a + rng.normal(scale=0.1, size=a.shape), 0, 1)
    got = psnr(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    want = 10 * np.log10(1.0 / ((a - b) ** 2).mean(axis=(-3, -2, -1)))
    assert got.shape == (2, 3)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(psnr(jnp.asarray(2 * a), jnp.asarray(2 * b), max_val=2.0)), want, rtol=1e-5)
    # MSE 0.01 -> 20 dB exactly.
    np.testing.assert_allclose(float(metrics.psnr(jnp.zeros((4, 4, 3)), jnp.full((4, 4, 3), 0.1))), 20.0, rtol=1e-5)
    with pytest.raises(ValueError, match="one shape"):
        metrics.psnr(jnp.zeros((4, 4, 3)), jnp.zeros((4, 4, 1)))


def test_mean_color_psnr_is_the_per_image_mean_color_baseline(rng):
    target = rng.uniform(size=(2, 6, 7, 3))
    mean_color = target.mean(axis=(1, 2), keepdims=True)
    want = 10 * np.log10(1.0 / ((target - mean_color) ** 2).mean(axis=(1, 2, 3)))
    np.testing.assert_allclose(np.asarray(metrics.mean_color_psnr(jnp.asarray(target, jnp.float32))), want, rtol=1e-5)
    # No constant colour beats the per-channel mean in MSE.
    for color in (0.5, 0.3):
        constant = 10 * np.log10(1.0 / ((target - color) ** 2).mean(axis=(1, 2, 3)))
        assert np.all(want >= constant)


def test_image_metrics_without_lpips(rng):
    pred = jnp.asarray(rng.uniform(size=(2, 12, 12, 3)), jnp.float32)
    target = jnp.asarray(rng.uniform(size=(2, 12, 12, 3)), jnp.float32)
    scores = jax.jit(metrics.image_metrics)(pred, target)
    assert set(scores) == {"psnr", "ssim", "mean_color_psnr"}
    np.testing.assert_allclose(np.asarray(scores["ssim"]), np.asarray(losses.ssim(pred, target)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(scores["psnr"]), np.asarray(psnr(pred, target)), rtol=1e-6)
    assert metrics.ssim is losses.ssim
