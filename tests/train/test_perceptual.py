"""VGG16 features, perceptual loss and LPIPS against a float64 numpy reference, with random weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avat3r_jax.train import metrics, perceptual

# Jitted: eager dispatch compiles every primitive separately, which costs more on CPU.
vgg16_features = jax.jit(perceptual.vgg16_features, static_argnames="layers")
ALL_LAYERS = tuple(name for name, _, _ in perceptual.VGG16_CONVS)


@pytest.fixture(scope="module")
def weights_npz(tmp_path_factory) -> tuple[str, dict[str, np.ndarray]]:
    """Random He-initialised VGG16 + positive LPIPS weights written with ``save_vgg_npz``."""
    rng = np.random.default_rng(1)
    params = {}
    for key, shape in perceptual.expected_shapes().items():
        if key.endswith("/w"):
            params[key] = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / (9 * shape[2])))
        elif key.endswith("/b"):
            params[key] = rng.standard_normal(shape, np.float32) * np.float32(0.05)
        else:
            params[key] = rng.uniform(0.0, 0.1, size=shape).astype(np.float32)
    path = tmp_path_factory.mktemp("vgg") / "vgg16_lpips.npz"
    perceptual.save_vgg_npz(params, path)
    return str(path), params


def features_reference(params: dict[str, np.ndarray], images: np.ndarray) -> dict[str, np.ndarray]:
    """float64 VGG16: 3x3 'same' convolutions as sums of shifted matmuls, ReLU, 2x2 max-pools (floor)."""
    x = (images - np.array(perceptual.IMAGENET_MEAN)) / np.array(perceptual.IMAGENET_STD)
    out = {}
    for name, _, _ in perceptual.VGG16_CONVS:
        w, b = params[f"{name}/w"].astype(np.float64), params[f"{name}/b"].astype(np.float64)
        n, h, wd, _ = x.shape
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        x = sum(padded[:, i : i + h, j : j + wd] @ w[i, j] for i in range(3) for j in range(3)) + b
        x = np.maximum(x, 0.0)
        out[name] = x
        if name in perceptual.POOL_AFTER:
            h2, w2 = h // 2, wd // 2
            x = x[:, : 2 * h2, : 2 * w2].reshape(n, h2, 2, w2, 2, -1).max(axis=(2, 4))
    return out


def lpips_reference(params, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """LPIPS as its authors define it: features / (norm + 1e-10), squared difference, lin weights, spatial mean."""
    fa, fb = features_reference(params, a), features_reference(params, b)
    total = np.zeros(a.shape[0])
    for k, layer in enumerate(perceptual.LPIPS_LAYERS):
        na = fa[layer] / (np.linalg.norm(fa[layer], axis=-1, keepdims=True) + 1e-10)
        nb = fb[layer] / (np.linalg.norm(fb[layer], axis=-1, keepdims=True) + 1e-10)
        total += ((na - nb) ** 2 @ params[f"lin{k}"].astype(np.float64)).mean(axis=(1, 2))
    return total


def test_features_match_numpy_reference(weights_npz, rng):
    path, raw = weights_npz
    params = perceptual.load_vgg_npz(path)
    images = rng.uniform(size=(2, 20, 24, 3))  # 20x24 -> ... -> 1x1 after four floor-pools.
    got = vgg16_features(params, jnp.asarray(images, jnp.float32), ALL_LAYERS)
    want = features_reference(raw, images)
    assert [got[k].shape for k in perceptual.LPIPS_LAYERS] == [
        (2, 20, 24, 64),
        (2, 10, 12, 128),
        (2, 5, 6, 256),
        (2, 2, 3, 512),
        (2, 1, 1, 512),
    ]
    for name, value in want.items():
        scale = np.abs(value).max()
        assert scale > 0.1, name  # the random network does not die out.
        np.testing.assert_allclose(np.asarray(got[name]), value, atol=2e-5 * scale, err_msg=name)


def test_lpips_matches_reference_and_properties(weights_npz, rng):
    path, raw = weights_npz
    params = perceptual.load_vgg_npz(path, require_lpips=True)
    a = rng.uniform(size=(3, 16, 16, 3))
    b = np.clip(a + rng.normal(scale=0.2, size=a.shape), 0, 1)
    a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    image_metrics = jax.jit(metrics.image_metrics)  # LPIPS through the metrics entry point the trainer uses.
    scores = image_metrics(b32, a32, lpips_params=params)
    assert set(scores) == {"psnr", "ssim", "mean_color_psnr", "lpips"}
    np.testing.assert_allclose(np.asarray(scores["lpips"]), lpips_reference(raw, b, a), rtol=1e-4)
    assert np.all(np.asarray(scores["lpips"]) > 0)
    np.testing.assert_allclose(np.asarray(image_metrics(a32, a32, lpips_params=params)["lpips"]), 0.0, atol=1e-7)


def test_perceptual_loss_reference_and_finite_gradients(weights_npz, rng):
    path, raw = weights_npz
    params = perceptual.load_vgg_npz(path)
    layers = ("conv1_2", "conv3_3")
    a = rng.uniform(size=(2, 16, 16, 3))
    b = np.clip(a + rng.normal(scale=0.2, size=a.shape), 0, 1)
    fa, fb = features_reference(raw, a), features_reference(raw, b)
    both = jax.jit(lambda p, x, y: [perceptual.perceptual_loss(p, x, y, layers=layers, distance=d) for d in ("l1", "l2")])
    got = both(params, jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    for power, value in zip((1, 2), got, strict=True):
        want = sum(
            (
                np.abs(fa[k] / np.linalg.norm(fa[k], axis=-1, keepdims=True) - fb[k] / np.linalg.norm(fb[k], axis=-1, keepdims=True))
                ** power
            ).mean(axis=(1, 2, 3))
            for k in layers
        )
        np.testing.assert_allclose(np.asarray(value), want, rtol=1e-4)


def test_perceptual_gradient_matches_finite_differences(weights_npz, rng, x64):
    path, _ = weights_npz
    params = perceptual.load_vgg_npz(path)  # float32 weights; the features compute in the images' float64.
    target = jnp.asarray(rng.uniform(size=(1, 16, 16, 3)))
    x = jnp.asarray(np.clip(np.asarray(target) + rng.normal(scale=0.2, size=target.shape), 0, 1))
    f = jax.jit(lambda x: perceptual.perceptual_loss(params, x, target, layers=("conv1_2", "conv2_2"), distance="l2").sum())
    grad = jax.jit(jax.grad(f))(x)
    assert grad.dtype == jnp.float64 and np.all(np.isfinite(grad))
    eps = 1e-7  # Small: a step across a ReLU or max-pool kink would spoil the difference quotient.
    for _ in range(2):
        direction = jnp.asarray(rng.normal(size=x.shape))
        numeric = (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)
        np.testing.assert_allclose(float(jnp.vdot(grad, direction)), float(numeric), rtol=1e-5)


def test_unit_normalize_gradient_is_finite_at_zero_features():
    # Dead ReLUs can zero a pixel's whole feature vector; the normalisation must not produce NaN there.
    grad = jax.jit(jax.grad(lambda f: jnp.sum(perceptual._unit_normalize(f) * jnp.arange(4.0))))(jnp.zeros((2, 4)))
    assert np.all(np.isfinite(grad))
    f = jnp.asarray([[3.0, 4.0, 0.0, 0.0]])
    np.testing.assert_allclose(np.asarray(jax.jit(perceptual._unit_normalize)(f)), [[0.6, 0.8, 0.0, 0.0]], rtol=1e-6)


def test_save_load_round_trip(weights_npz):
    path, raw = weights_npz
    loaded = perceptual.load_vgg_npz(path)
    assert set(loaded) == set(raw)
    for key, value in raw.items():
        np.testing.assert_array_equal(np.asarray(loaded[key]), value)


def test_bad_weight_files(weights_npz, tmp_path):
    _, raw = weights_npz
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        perceptual.load_vgg_npz(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="no VGG16 weights path"):
        perceptual.load_vgg_npz("")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        perceptual.load_vgg_npz(corrupt)

    def write(params):
        target = tmp_path / "w.npz"
        np.savez(target, **params)
        return target

    no_lin = {k: v for k, v in raw.items() if not k.startswith("lin")}
    broken = {k: v for k, v in no_lin.items() if k != "conv3_2/b"}
    broken["conv2_1/w"] = np.zeros((3, 3, 128, 64), np.float32)
    broken["conv1_1/weight"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError) as error:
        perceptual.load_vgg_npz(write(broken))
    message = str(error.value)
    assert "missing keys ['conv3_2/b']" in message
    assert "unexpected keys ['conv1_1/weight']" in message
    assert "conv2_1/w [3, 3, 128, 64] (expected [3, 3, 64, 128])" in message
    assert "Expected layout: conv1_1/w [3, 3, 3, 64], conv1_1/b [64]" in message and "lin4 [512]" in message
    with pytest.raises(ValueError, match=r"lin0.*needed for LPIPS"):
        perceptual.load_vgg_npz(write(no_lin), require_lpips=True)
    with pytest.raises(ValueError, match="missing keys"):
        perceptual.save_vgg_npz(broken, tmp_path / "out.npz")

    params = {k: jnp.asarray(v) for k, v in no_lin.items()}
    with pytest.raises(ValueError, match="LPIPS needs the linear weights"):
        perceptual.lpips(params, jnp.zeros((16, 16, 3)), jnp.zeros((16, 16, 3)))
    with pytest.raises(ValueError, match="at least 16x16"):
        perceptual.vgg16_features(params, jnp.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="unknown VGG16 layers"):
        perceptual.vgg16_features(params, jnp.zeros((8, 8, 3)), ["relu1_2"])
