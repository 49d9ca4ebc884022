"""Feature step: grid resize, PCA projection (against numpy's SVD), save/load, storage quantisation."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from avat3r_jax.frontend.features import FeatureProjection, bytes_per_view, model_features, quantise, to_model_grid


def _low_rank(rng, rank: int, dim: int = 24, noise: float = 0.01) -> np.ndarray:
    """``[6, 8, 8, dim]`` feature maps on a ``rank``-dimensional affine subspace plus noise."""
    basis = rng.standard_normal((rank, dim)) * np.linspace(3.0, 1.0, rank)[:, None]
    codes = rng.standard_normal((6 * 8 * 8, rank))
    x = codes @ basis + rng.standard_normal(dim) * 5 + noise * rng.standard_normal((6 * 8 * 8, dim))
    return x.reshape(6, 8, 8, dim).astype(np.float32)


def _svd_reference(x: np.ndarray, channels: int) -> tuple[np.ndarray, float]:
    """Top right singular vectors of the centred data and the truncated SVD's relative error."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    centred = flat - flat.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    error = np.sqrt((singular[channels:] ** 2).sum() / (singular**2).sum())
    return vt[:channels].T, float(error)


@pytest.mark.parametrize("channels", [3, 5])
def test_pca_recovers_the_subspace(rng, channels):
    x = _low_rank(rng, rank=5)
    projection = FeatureProjection.fit(x, channels, provenance={"backbone": "test"})
    basis, svd_error = _svd_reference(x, channels)
    np.testing.assert_allclose(projection.components @ projection.components.T, basis @ basis.T, atol=1e-4)
    np.testing.assert_allclose(projection.components.T @ projection.components, np.eye(channels), atol=1e-5)
    assert projection.fit_error == pytest.approx(svd_error, rel=1e-3)
    assert projection.relative_error(x) == pytest.approx(svd_error, rel=1e-3)
    if channels == 5:  # the whole subspace: only the noise is left
        assert svd_error < 0.01
    else:
        assert svd_error > 0.1
    assert projection.apply(x).shape == (6, 8, 8, channels)


def test_pca_on_a_subsample(rng):
    x = _low_rank(rng, rank=4, noise=0.0)
    projection = FeatureProjection.fit(x, 4, max_vectors=50, seed=3)
    assert projection.provenance["vectors_fitted"] == 50 and projection.provenance["vectors_total"] == 384
    assert projection.relative_error(x) < 1e-4  # noise-free: any 50 vectors span the subspace


def test_save_load_round_trip(tmp_path, rng):
    x = _low_rank(rng, rank=3)
    projection = FeatureProjection.fit(x, 3, provenance={"backbone": "sapiens-2b", "views": 6})
    path = tmp_path / "projection.npz"
    projection.save(path)
    loaded = FeatureProjection.load(path)
    for field in ("mean", "components", "variances"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(projection, field))
    assert loaded.fit_error == projection.fit_error
    assert loaded.provenance == json.loads(json.dumps(projection.provenance)) and loaded.provenance["backbone"] == "sapiens-2b"
    np.testing.assert_array_equal(np.asarray(loaded.apply(x)), np.asarray(projection.apply(x)))


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="no feature projection file"):
        FeatureProjection.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match=r"not a feature projection file .*missing \['components'"):
        FeatureProjection.load(tmp_path / "other.npz")
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match="not a readable feature projection"):
        FeatureProjection.load(tmp_path / "cut.npz")


def test_fit_and_apply_errors(rng):
    x = _low_rank(rng, rank=3)
    with pytest.raises(ValueError, match=r"channels must be in \[1, 24\], got 25"):
        FeatureProjection.fit(x, 25)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        FeatureProjection.fit(bad, 3)
    with pytest.raises(ValueError, match="expects 24 channels"):
        FeatureProjection.fit(x, 3).apply(x[..., :8])


def test_to_model_grid(rng):
    x = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(to_model_grid(x, 5, 3)), x)
    constant = np.full((1, 6, 4, 2), 1.5, np.float32)
    np.testing.assert_allclose(np.asarray(to_model_grid(constant, 3, 8)), 1.5, rtol=1e-6)
    assert to_model_grid(x, 8, 8).shape == (2, 8, 8, 4)
    with pytest.raises(ValueError, match=r"expects features \[B, h, w, C\]"):
        to_model_grid(x[0], 4, 4)


@pytest.mark.parametrize(("height", "width"), [(8, 8), (3, 2)])
def test_resize_and_projection_commute(rng, height, width):
    x = _low_rank(rng, rank=5)[:, :6, :5]  # [6, 6, 5, 24]
    projection = FeatureProjection.fit(x, 4)
    resized_first = model_features(jnp.asarray(x), projection, height, width)
    projected_first = to_model_grid(projection.apply(x), height, width)
    np.testing.assert_allclose(np.asarray(resized_first), np.asarray(projected_first), atol=1e-4)


def test_int8_error_bound_and_bytes(rng):
    x = rng.standard_normal((3, 8, 6, 5)).astype(np.float32) * np.array([0.1, 1.0, 10.0, 100.0, 0.0], np.float32)
    stored = quantise(x, "int8")
    assert stored.values.dtype == np.int8 and stored.scale.shape == (3, 5)
    error = np.abs(stored.dequantise() - x)
    bound = np.abs(x).max(axis=(1, 2)) / 254.0  # scale / 2, per view and channel
    assert (error <= bound[:, None, None, :] * (1 + 1e-5) + 1e-12).all()
    assert error[..., 4].max() == 0.0  # an all-zero channel stays exact
    assert stored.nbytes == 3 * bytes_per_view(8, 6, 5, "int8") == 3 * (8 * 6 * 5 + 4 * 5)


def test_float16_error_bound_and_range(rng):
    x = rng.standard_normal((2, 4, 4, 3)).astype(np.float32) * 50
    stored = quantise(x, "float16")
    assert stored.scale is None and stored.nbytes == 2 * bytes_per_view(4, 4, 3, "float16")
    assert (np.abs(stored.dequantise() - x) <= np.abs(x) * 2.0**-11 + 2.0**-24).all()
    with pytest.raises(ValueError, match="exceed float16's range"):
        quantise(x * 1e4, "float16")
    with pytest.raises(ValueError, match="unknown feature storage 'bf16'"):
        quantise(x, "bf16")
