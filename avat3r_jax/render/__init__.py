"""Differentiable 3D Gaussian splatting: projection, tile binning, compositing backends."""

from avat3r_jax.render.binning import Bins, BinStats, bin_gaussians
from avat3r_jax.render.project import Projection, project
from avat3r_jax.render.renderer import BACKENDS, RenderOutput, rasterize, rasterize_with_config, resolve_backend

__all__ = [
    "BACKENDS",
    "BinStats",
    "Bins",
    "Projection",
    "RenderOutput",
    "bin_gaussians",
    "project",
    "rasterize",
    "rasterize_with_config",
    "resolve_backend",
]
