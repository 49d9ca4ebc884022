"""From a Sapiens feature map to the model's feature input: one step, the same in training and inference.

The step, for a backbone map ``[B, h, w, C]`` (Sapiens-2B at 1024 x 1024: 64 x 64 x 1920):

1. :func:`to_model_grid`: resize to ``data.feature_height x data.feature_width`` (bilinear,
   antialiased when shrinking; the identity when the grids agree);
2. :meth:`FeatureProjection.apply`: subtract the fitted mean and project onto the top
   ``data.feature_channels`` principal directions (PCA fitted on a sample of views; saved as a
   small ``.npz`` with its provenance next to the dataset; the same file serves ``avat3r-prepare``);
3. :func:`quantise`: storage as float16, or int8 with one scale per view and channel, read back
   with :meth:`Quantised.dequantise`.

Resizing and projecting are both linear (the resize weights of each output pixel sum to 1), so the
order of 1 and 2 changes nothing but cost. :func:`model_features` runs 1-2 on one batch.

Quality cost: :meth:`FeatureProjection.fit` records the projection's relative reconstruction error
``|X - X_hat| / |X - mean|`` over its sample (the square root of the unexplained variance
fraction); :meth:`FeatureProjection.relative_error` measures it on any other sample (e.g. held-out
views). Quantisation adds at most ``max|x_c| / 254`` per value (int8) or a relative ``2^-11``
(float16). On real Sapiens-2B features the PCA error has not been measured here: no weights are
reachable from this project's machines (docs/PERFORMANCE.md, "Sapiens features", for the storage
and the in-step alternative's cost).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

STORAGE = ("float16", "int8")
FLOAT16_MAX = 65504.0
_FORMAT = "avat3r-feature-projection-v1"


def to_model_grid(features: jax.Array, height: int, width: int) -> jax.Array:
    """``features [B, h, w, C] -> [B, height, width, C]`` float32, bilinear (antialiased when shrinking)."""
    if features.ndim != 4:
        raise ValueError(f"to_model_grid expects features [B, h, w, C], got shape {tuple(features.shape)}")
    b, h, w, c = features.shape
    if (h, w) == (height, width):
        return jnp.asarray(features, jnp.float32)
    return jax.image.resize(jnp.asarray(features, jnp.float32), (b, height, width, c), method="linear")


@dataclasses.dataclass(frozen=True)
class FeatureProjection:
    """A PCA projection ``C -> F`` channels: ``(x - mean) @ components``.

    ``mean [C]``, ``components [C, F]`` (orthonormal columns, by decreasing variance, each signed so
    its largest entry is positive), ``variances [F]`` (of the fit sample along each component),
    ``fit_error`` (relative reconstruction error on the fit sample), ``provenance`` (JSON-able:
    backbone, sample size, seed, ...).
    """

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    fit_error: float
    provenance: Mapping[str, Any]

    @property
    def in_channels(self) -> int:
        return self.components.shape[0]

    @property
    def out_channels(self) -> int:
        return self.components.shape[1]

    @classmethod
    def fit(
        cls,
        features: np.ndarray | jax.Array,
        channels: int,
        *,
        max_vectors: int = 262_144,
        seed: int = 0,
        provenance: Mapping[str, Any] | None = None,
    ) -> FeatureProjection:
        """PCA of the feature vectors of ``features [..., C]`` (e.g. ``[views, h, w, C]``) to ``channels``.

        At most ``max_vectors`` vectors, drawn without replacement with ``seed``, enter the float64
        covariance. ``provenance`` is stored as given plus the sample counts.
        """
        vectors = np.asarray(features, np.float32).reshape(-1, np.shape(features)[-1])
        total, dim = vectors.shape
        if not 1 <= channels <= dim:
            raise ValueError(f"FeatureProjection.fit: channels must be in [1, {dim}], got {channels}")
        if total < 2:
            raise ValueError(f"FeatureProjection.fit needs at least 2 feature vectors, got {total}")
        if not np.isfinite(vectors).all():
            raise ValueError("FeatureProjection.fit: the features hold NaN or infinite values")
        if total > max_vectors:
            vectors = vectors[np.sort(np.random.default_rng(seed).choice(total, max_vectors, replace=False))]
        sample = vectors.astype(np.float64)
        mean = sample.mean(axis=0)
        centred = sample - mean
        covariance = centred.T @ centred / len(sample)  # [C, C]
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
        order = np.argsort(eigenvalues)[::-1][:channels]
        components = eigenvectors[:, order]
        components *= np.sign(components[np.abs(components).argmax(axis=0), np.arange(channels)])
        variances = np.clip(eigenvalues[order], 0.0, None)
        total_variance = max(float(np.trace(covariance)), np.finfo(np.float64).tiny)
        fit_error = float(np.sqrt(max(total_variance - variances.sum(), 0.0) / total_variance))
        record = {**(provenance or {}), "vectors_total": int(total), "vectors_fitted": len(sample), "seed": seed}
        return cls(mean.astype(np.float32), components.astype(np.float32), variances.astype(np.float32), fit_error, record)

    def apply(self, features: jax.Array | np.ndarray) -> jax.Array:
        """``features [..., C] -> [..., F]`` float32."""
        if features.shape[-1] != self.in_channels:
            raise ValueError(f"FeatureProjection expects {self.in_channels} channels, got features of shape {tuple(features.shape)}")
        centred = jnp.asarray(features, jnp.float32) - self.mean
        return jnp.einsum("...c,cf->...f", centred, self.components, precision=jax.lax.Precision.HIGHEST)

    def reconstruct(self, projected: jax.Array | np.ndarray) -> jax.Array:
        """``projected [..., F] -> [..., C]``: the nearest point of the projection's affine subspace."""
        back = jnp.einsum("...f,cf->...c", jnp.asarray(projected, jnp.float32), self.components, precision=jax.lax.Precision.HIGHEST)
        return back + self.mean

    def relative_error(self, features: jax.Array | np.ndarray) -> float:
        """``|X - X_hat| / |X - mean(X)|`` over the feature vectors of ``features [..., C]``."""
        x = np.asarray(features, np.float64).reshape(-1, self.in_channels)
        residual = x - np.asarray(self.reconstruct(self.apply(x.astype(np.float32))), np.float64)
        return float(np.linalg.norm(residual) / max(np.linalg.norm(x - x.mean(axis=0)), np.finfo(np.float64).tiny))

    def save(self, path: str | pathlib.Path) -> None:
        """Writes a ``.npz`` (mean, components, variances, fit error, provenance as JSON)."""
        path = pathlib.Path(path)
        with path.open("wb") as file:
            np.savez(
                file,
                format=np.array(_FORMAT),
                mean=self.mean,
                components=self.components,
                variances=self.variances,
                fit_error=np.float64(self.fit_error),
                provenance=np.array(json.dumps(dict(self.provenance), sort_keys=True)),
            )

    @classmethod
    def load(cls, path: str | pathlib.Path) -> FeatureProjection:
        """Reads :meth:`save`'s file; ``ValueError`` (one line) if it is missing, foreign or inconsistent."""
        path = pathlib.Path(path)
        if not path.is_file():
            raise ValueError(f"no feature projection file at {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                fields = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path}: not a readable feature projection (.npz): {error}") from error
        missing = sorted({"format", "mean", "components", "variances", "fit_error", "provenance"} - set(fields))
        if missing or str(fields["format"]) != _FORMAT:
            raise ValueError(f"{path}: not a feature projection file ({_FORMAT}); missing {missing or 'nothing'}")
        mean, components, variances = fields["mean"], fields["components"], fields["variances"]
        if mean.ndim != 1 or components.shape[:1] != mean.shape or variances.shape != components.shape[1:]:
            raise ValueError(f"{path}: inconsistent shapes mean {mean.shape}, components {components.shape}, variances {variances.shape}")
        if not all(np.isfinite(a).all() for a in (mean, components, variances)):
            raise ValueError(f"{path}: the projection holds NaN or infinite values")
        return cls(mean, components, variances, float(fields["fit_error"]), json.loads(str(fields["provenance"])))


def model_features(features: jax.Array, projection: FeatureProjection, height: int, width: int) -> jax.Array:
    """The documented step: backbone map ``[B, h, w, C]`` -> model features ``[B, height, width, F]`` float32."""
    return projection.apply(to_model_grid(features, height, width))


@dataclasses.dataclass(frozen=True)
class Quantised:
    """Stored features: ``values [..., h, w, F]`` (float16 or int8) and, for int8, ``scale [..., F]`` float32."""

    values: np.ndarray
    scale: np.ndarray | None

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + (0 if self.scale is None else self.scale.nbytes)

    def dequantise(self) -> np.ndarray:
        """float32 ``[..., h, w, F]``."""
        if self.scale is None:
            return self.values.astype(np.float32)
        return self.values.astype(np.float32) * self.scale[..., None, None, :]


def quantise(features: np.ndarray | jax.Array, storage: str) -> Quantised:
    """``features [..., h, w, F]`` -> :class:`Quantised` as ``storage`` (``"float16"`` or ``"int8"``).

    int8: per view (the leading axes) and channel, ``scale = max |x| / 127`` and ``round(x / scale)``,
    so each value is off by at most ``scale / 2``.
    """
    x = np.asarray(features, np.float32)
    if storage not in STORAGE:
        raise ValueError(f"unknown feature storage {storage!r}; choose from {STORAGE}")
    if x.ndim < 3:
        raise ValueError(f"quantise expects features [..., h, w, F], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("quantise: the features hold NaN or infinite values")
    if storage == "float16":
        if np.abs(x).max(initial=0.0) > FLOAT16_MAX:
            raise ValueError(f"quantise: |features| up to {np.abs(x).max():.4g} exceed float16's range; store them as int8")
        return Quantised(x.astype(np.float16), None)
    scale = np.abs(x).max(axis=(-3, -2)) / 127.0  # [..., F]
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    values = np.clip(np.rint(x / scale[..., None, None, :]), -127, 127).astype(np.int8)
    return Quantised(values, scale)


def bytes_per_view(height: int, width: int, channels: int, storage: str) -> int:
    """Stored bytes of one view's ``height x width x channels`` features as ``storage``."""
    if storage not in STORAGE:
        raise ValueError(f"unknown feature storage {storage!r}; choose from {STORAGE}")
    if storage == "float16":
        return 2 * height * width * channels
    return height * width * channels + 4 * channels
