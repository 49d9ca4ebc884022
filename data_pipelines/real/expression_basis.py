"""A linear expression basis fitted on tracked meshes: codes from neutral-removed vertices.

Each frame's offsets ``x = vertices - neutral`` ([V, 3], the subject's own neutral mesh removed, so
identity mostly cancels) are flattened; PCA over training subjects' frames gives ``D`` orthonormal
components. A frame's code is ``components @ (x - mean) / scale`` with one ``scale`` for all
components (the standard deviation of the first one), so distances between codes are distances
between offsets, in units of the main expression mode. Offsets are reconstructed as
``mean + components.T @ (code * scale)``.
"""

from __future__ import annotations

import dataclasses
import io
import pathlib

import numpy as np

FILE = "expression_basis.npz"


@dataclasses.dataclass(frozen=True)
class ExpressionBasis:
    mean: np.ndarray  # [V * 3] mean offset of the fitting frames
    components: np.ndarray  # [D, V * 3] orthonormal rows
    scale: float  # offsets per code unit (std of the first component over the fitting frames)
    explained: np.ndarray  # [D] fraction of the fitting frames' offset variance per component

    @property
    def dim(self) -> int:
        return self.components.shape[0]

    @property
    def num_vertices(self) -> int:
        return self.components.shape[1] // 3

    def encode(self, offsets: np.ndarray) -> np.ndarray:
        """Offsets ``[N, V, 3]`` -> codes ``[N, D]`` (float32)."""
        if offsets.shape[1:] != (self.num_vertices, 3):
            raise ValueError(f"offsets of shape {offsets.shape} do not fit a basis of {self.num_vertices} vertices")
        flat = offsets.reshape(len(offsets), -1).astype(np.float64) - self.mean
        return (flat @ self.components.T / self.scale).astype(np.float32)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes ``[N, D]`` -> offsets ``[N, V, 3]`` (float64)."""
        flat = self.mean + (codes.astype(np.float64) * self.scale) @ self.components
        return flat.reshape(len(codes), self.num_vertices, 3)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean, components=self.components, scale=np.float64(self.scale), explained=self.explained)
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | pathlib.Path) -> ExpressionBasis:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(data["mean"], data["components"], float(data["scale"]), data["explained"])
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{path} is not an expression basis ({FILE} with mean, components, scale, explained): {e}") from e


def fit(offsets: np.ndarray, dim: int) -> ExpressionBasis:
    """PCA of ``offsets [N, V, 3]`` (training frames, neutral removed) with ``dim`` components."""
    flat = offsets.reshape(len(offsets), -1).astype(np.float64)
    if dim > min(flat.shape):
        raise ValueError(f"an expression basis of {dim} components needs at least {dim} training frames; there are {len(flat)}")
    mean = flat.mean(0)
    _, singular, vt = np.linalg.svd(flat - mean, full_matrices=False)
    variance = singular**2 / len(flat)
    scale = float(np.sqrt(variance[0])) or 1.0
    return ExpressionBasis(mean, vt[:dim], scale, variance[:dim] / max(variance.sum(), 1e-30))
