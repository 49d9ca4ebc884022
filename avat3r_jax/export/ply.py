"""Gaussian avatars as INRIA-3DGS ``.ply`` files (the layout splat viewers open).

One vertex per Gaussian, binary little endian, float32 properties in this order:
``x y z nx ny nz f_dc_0..2 f_rest_0..(3*(K-1)-1) opacity scale_0..2 rot_0..3``, where
``f_dc = (rgb - 0.5) / SH_C0`` (our ``colors`` hold the degree-0 term as an RGB colour),
``f_rest`` holds the higher SH bands channel-major (all of red's coefficients, then green's, then
blue's), ``opacity`` is the logit, ``scale_*`` the log scales and ``rot_*`` the unit quaternion
``(w, x, y, z)``. The normals are zero (3DGS writes them but never uses them).
"""

from __future__ import annotations

import pathlib

import numpy as np

from avat3r_jax.gaussians import SH_C0, Gaussians


def ply_property_names(num_sh_rest: int) -> list[str]:
    """Vertex property names for Gaussians with ``num_sh_rest = (degree + 1)^2 - 1`` higher SH coefficients."""
    return (
        ["x", "y", "z", "nx", "ny", "nz"]
        + [f"f_dc_{i}" for i in range(3)]
        + [f"f_rest_{i}" for i in range(3 * num_sh_rest)]
        + ["opacity"]
        + [f"scale_{i}" for i in range(3)]
        + [f"rot_{i}" for i in range(4)]
    )


def ply_vertex_table(gaussians: Gaussians) -> np.ndarray:
    """One unbatched Gaussian set ``[N, ...]`` -> the vertex table ``[N, P]`` (float32, columns as ``ply_property_names``)."""
    if gaussians.batch_shape:
        raise ValueError(f"write one avatar at a time: expected unbatched Gaussians [N, ...], got batch shape {gaussians.batch_shape}")
    fields = ("means", "log_scales", "quaternions", "opacity_logits", "colors", "sh_rest")
    arrays = {name: np.asarray(getattr(gaussians, name), np.float64) for name in fields}
    count = arrays["means"].shape[0]
    quaternions = arrays["quaternions"] / np.maximum(np.linalg.norm(arrays["quaternions"], axis=-1, keepdims=True), 1e-12)
    f_rest = np.swapaxes(arrays["sh_rest"], 1, 2).reshape(count, -1)  # [N, K-1, 3] -> [N, 3 * (K-1)], channel-major
    table = np.concatenate(
        [
            arrays["means"],
            np.zeros((count, 3)),
            (arrays["colors"] - 0.5) / SH_C0,
            f_rest,
            arrays["opacity_logits"][:, None],
            arrays["log_scales"],
            quaternions,
        ],
        axis=1,
    ).astype(np.float32)
    if not np.all(np.isfinite(table)):
        bad = np.flatnonzero(~np.all(np.isfinite(table), axis=1))
        raise ValueError(f"{bad.size} of {count} Gaussians have non-finite parameters (first: index {bad[0]}); refusing to write them")
    return table


def write_ply(path: str | pathlib.Path, gaussians: Gaussians) -> pathlib.Path:
    """Writes one avatar as a binary little-endian INRIA-3DGS ``.ply``; returns the path."""
    table = ply_vertex_table(gaussians)
    names = ply_property_names(gaussians.sh_rest.shape[-2])
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {table.shape[0]}"]
    header += [f"property float {name}" for name in names]
    header += ["end_header"]
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.write(("\n".join(header) + "\n").encode("ascii"))
        file.write(table.astype("<f4").tobytes())
    return path
