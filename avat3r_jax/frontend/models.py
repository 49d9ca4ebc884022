"""The front end's two networks from local checkpoints, by the size names the CLIs take.

JAX-free at import (the CLIs define their flags from these names before anything heavy loads).
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from avat3r_jax.frontend.dust3r import Dust3r
    from avat3r_jax.frontend.sapiens import Sapiens

DUST3R_SIZES = ("checkpoint", "tiny")  # "checkpoint": settings from its args.model
SAPIENS_SIZES = ("checkpoint", "0.3b", "0.6b", "1b", "2b", "tiny")  # "checkpoint": size from its shapes
DTYPES = ("float32", "bfloat16")


def load_frontend(
    dust3r_path: str | pathlib.Path,
    sapiens_path: str | pathlib.Path,
    *,
    dust3r_size: str = "checkpoint",
    sapiens_size: str = "checkpoint",
    dtype: str = "float32",
) -> tuple[Dust3r, Sapiens]:
    """DUSt3R and Sapiens with ``dtype`` compute (parameters stay float32); sizes from the tuples above."""
    import jax.numpy as jnp

    from avat3r_jax.frontend.dust3r import Dust3rSettings
    from avat3r_jax.frontend.dust3r_checkpoint import load_dust3r
    from avat3r_jax.frontend.sapiens import SapiensSettings
    from avat3r_jax.frontend.sapiens_checkpoint import load_sapiens

    dust3r = load_dust3r(dust3r_path, settings=Dust3rSettings.tiny() if dust3r_size == "tiny" else None, dtype=jnp.dtype(dtype))
    if sapiens_size == "tiny":
        sapiens = load_sapiens(sapiens_path, settings=SapiensSettings.tiny(), dtype=dtype)
    else:
        sapiens = load_sapiens(sapiens_path, name=None if sapiens_size == "checkpoint" else sapiens_size, dtype=dtype)
    return dust3r, sapiens
