"""Losses against independent float64 numpy references."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from avat3r_jax.train import losses

# Jitted once per shape: eager dispatch compiles every primitive separately, which costs more on CPU.
SSIM_OPTIONS = ("max_val", "window", "sigma")
ssim = jax.jit(losses.ssim, static_argnames=SSIM_OPTIONS)
ssim_map = jax.jit(losses.ssim_map, static_argnames=SSIM_OPTIONS)
l1_loss = jax.jit(losses.l1_loss)
ssim_loss = jax.jit(losses.ssim_loss, static_argnames=("window", "sigma"))
alpha_loss = jax.jit(losses.alpha_loss)


def ssim_map_reference(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5, max_val: float = 1.0) -> np.ndarray:
    """SSIM map [H', W', C] of [H, W, C] images: a 2-D Gaussian window applied by summing shifted copies."""
    taps = np.exp(-0.5 * ((np.arange(window) - (window - 1) / 2) / sigma) ** 2)
    kernel = np.outer(taps, taps)
    kernel /= kernel.sum()
    out_h, out_w = a.shape[0] - window + 1, a.shape[1] - window + 1

    def blur(x):
        return sum(kernel[i, j] * x[i : i + out_h, j : j + out_w] for i in range(window) for j in range(window))

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    return (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def random_pair(rng, shape):
    a = rng.uniform(size=shape)
    b = np.clip(a + 0.2 * rng.normal(size=shape), 0, 1)
    return a, b


def test_ssim_matches_numpy_reference(rng):
    a, b = random_pair(rng, (2, 3, 20, 17, 3))  # [B, T, H, W, C]
    got = ssim(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    assert got.shape == (2, 3)
    want = np.array([[ssim_map_reference(a[i, t], b[i, t]).mean() for t in range(3)] for i in range(2)])
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
    full_map = ssim_map(jnp.asarray(a[0, 0]), jnp.asarray(b[0, 0]), window=7, sigma=1.0)
    np.testing.assert_allclose(np.asarray(full_map), ssim_map_reference(a[0, 0], b[0, 0], 7, 1.0), atol=2e-5)


def test_ssim_of_constant_images_has_closed_form():
    # Zero variances leave only the luminance term (2 m1 m2 + C1) / (m1^2 + m2^2 + C1). Tolerance:
    # float32 E[x^2] - mu^2 cancels to ~1e-7, against C2 = 9e-4 in the contrast term.
    m1, m2 = 0.3, 0.7
    got = ssim(jnp.full((12, 12, 1), m1), jnp.full((12, 12, 1), m2))
    c1 = 0.01**2
    np.testing.assert_allclose(float(got), (2 * m1 * m2 + c1) / (m1**2 + m2**2 + c1), rtol=1e-4)


def test_ssim_identity_and_symmetry(rng):
    a, b = random_pair(rng, (2, 16, 16, 3))
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    np.testing.assert_allclose(np.asarray(ssim(a, a)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ssim(a, b)), np.asarray(ssim(b, a)), atol=1e-7)
    assert np.all(np.asarray(ssim(a, b)) < 0.99)


def test_ssim_gradient_matches_finite_differences(rng, x64):
    a, b = random_pair(rng, (9, 10, 2))
    a, b = jnp.asarray(a), jnp.asarray(b)
    f = jax.jit(lambda x: losses.ssim(x, b, window=5, sigma=1.2))
    grad = jax.jit(jax.grad(f))(a)
    assert grad.dtype == jnp.float64 and np.all(np.isfinite(grad))
    eps = 1e-6
    for _ in range(4):
        direction = jnp.asarray(rng.normal(size=a.shape))
        numeric = (f(a + eps * direction) - f(a - eps * direction)) / (2 * eps)
        np.testing.assert_allclose(float(jnp.vdot(grad, direction)), float(numeric), rtol=1e-6, atol=1e-10)


def test_ssim_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        losses.ssim(jnp.zeros((16, 16, 3)), jnp.zeros((16, 15, 3)))
    with pytest.raises(ValueError, match="at least 11x11"):
        losses.ssim(jnp.zeros((8, 16, 3)), jnp.zeros((8, 16, 3)))
    with pytest.raises(ValueError, match="odd"):
        losses.ssim(jnp.zeros((16, 16, 3)), jnp.zeros((16, 16, 3)), window=4)


def test_weighted_losses_match_numpy(rng):
    pred, target = random_pair(rng, (2, 14, 13, 3))
    weights = (rng.uniform(size=(2, 14, 13, 1)) > 0.4).astype(np.float64) * rng.uniform(size=(2, 14, 13, 1))
    p32, t32, w32 = (jnp.asarray(x, jnp.float32) for x in (pred, target, weights))

    w3 = np.broadcast_to(weights, pred.shape)
    np.testing.assert_allclose(float(l1_loss(p32, t32, w32)), (w3 * np.abs(pred - target)).sum() / w3.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(l1_loss(p32, t32)), np.abs(pred - target).mean(), rtol=1e-5)

    r = 5 // 2  # window 5: the map covers pixels [r, H - r) x [r, W - r).
    ssim_maps = np.stack([ssim_map_reference(pred[i], target[i], 5, 1.5) for i in range(2)])
    w_crop = np.broadcast_to(weights[:, r:-r, r:-r], ssim_maps.shape)
    want = (w_crop * (1 - ssim_maps)).sum() / w_crop.sum()
    np.testing.assert_allclose(float(ssim_loss(p32, t32, w32, window=5)), want, rtol=1e-4)

    alpha, mask = pred[..., :1], (target[..., :1] > 0.5).astype(np.float64)
    want = (weights * np.abs(alpha - mask)).sum() / weights.sum()
    np.testing.assert_allclose(float(alpha_loss(p32[..., :1], jnp.asarray(mask, jnp.float32), w32)), want, rtol=1e-5)

    with pytest.raises(ValueError, match="do not broadcast"):
        losses.l1_loss(p32, t32, jnp.ones((2, 14, 12, 1)))


def train_config(**weights) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict({"l1_weight": 0.8, "ssim_weight": 0.2, "alpha_weight": 0.1, "perceptual_weight": 0.0})
    c.update(weights)
    return c


def test_photometric_loss_combines_terms(rng):
    pred, target = (jnp.asarray(x, jnp.float32) for x in random_pair(rng, (2, 2, 16, 16, 3)))
    alpha = jnp.asarray(rng.uniform(size=(2, 2, 16, 16, 1)), jnp.float32)
    mask = (alpha > 0.5).astype(jnp.float32)
    perceptual = lambda p, t: jnp.mean(jnp.square(p - t), axis=(-3, -2, -1))  # per image [B, T]
    cfg = train_config(perceptual_weight=0.05)
    total, terms = jax.jit(lambda *args: losses.photometric_loss(*args, cfg, perceptual_fn=perceptual))(pred, target, alpha, mask)
    assert set(terms) == {"l1", "ssim", "alpha", "perceptual"}
    np.testing.assert_allclose(float(terms["l1"]), float(l1_loss(pred, target)), rtol=1e-6)
    np.testing.assert_allclose(float(terms["ssim"]), float(1 - ssim(pred, target).mean()), rtol=1e-5)
    np.testing.assert_allclose(float(terms["perceptual"]), float(jnp.mean(jnp.square(pred - target))), rtol=1e-6)
    want = 0.8 * terms["l1"] + 0.2 * terms["ssim"] + 0.1 * terms["alpha"] + 0.05 * terms["perceptual"]
    np.testing.assert_allclose(float(total), float(want), rtol=1e-6)

    grads = jax.jit(jax.grad(lambda p: losses.photometric_loss(p, target, alpha, mask, cfg, perceptual_fn=perceptual)[0]))(pred)
    assert np.all(np.isfinite(grads)) and float(jnp.abs(grads).max()) > 0

    total, terms = jax.jit(lambda p, t: losses.photometric_loss(p, t, None, None, train_config(alpha_weight=0.0, ssim_weight=0.0)))(
        pred, target
    )
    assert set(terms) == {"l1"}
    np.testing.assert_allclose(float(total), 0.8 * float(terms["l1"]), rtol=1e-6)


def test_photometric_loss_errors(rng):
    x = jnp.zeros((1, 16, 16, 3))
    with pytest.raises(ValueError, match="pred_alpha and target_mask"):
        losses.photometric_loss(x, x, None, None, train_config())
    with pytest.raises(ValueError, match="perceptual_fn"):
        losses.photometric_loss(x, x, x[..., :1], x[..., :1], train_config(perceptual_weight=0.01))
    with pytest.raises(ValueError, match="must be >= 0"):
        losses.photometric_loss(x, x, None, None, train_config(l1_weight=-1.0))
    with pytest.raises(ValueError, match="all photometric loss weights are zero"):
        losses.photometric_loss(x, x, None, None, train_config(l1_weight=0.0, ssim_weight=0.0, alpha_weight=0.0))
