"""The JAX model's static settings: the shared ``ModelSpec`` plus how it runs (dtype, attention, remat, scan)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from avat3r_jax.spec import ModelSpec

ATTENTION_IMPLS = ("xla", "cudnn", "pallas_tpu")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# jax.checkpoint_policies entries that are policies themselves (not policy factories).
REMAT_POLICIES = (
    "none",
    "full",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "checkpoint_dots",
    "checkpoint_dots_with_no_batch_dims",
    "everything_saveable",
    "nothing_saveable",
)


def checkpoint_policy(name: str):
    """The ``jax.checkpoint`` policy named ``name``; ``None`` (save nothing) for ``"full"``."""
    if name not in REMAT_POLICIES or name == "none":
        raise ValueError(f"no checkpoint policy for remat_policy={name!r}; choose from {REMAT_POLICIES[1:]}")
    return None if name == "full" else getattr(jax.checkpoint_policies, name)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSettings(ModelSpec):
    """Everything the modules need to know: ``ModelSettings.from_config(config)``; hashable (static graph)."""

    dtype_name: str  # model.dtype
    attention_impl: str
    remat_policy: str
    scan_layers: bool

    def problems(self) -> list[tuple[bool, str]]:
        return super().problems() + [
            (self.dtype_name in DTYPES, f"model.dtype must be one of {sorted(DTYPES)}, got {self.dtype_name!r}"),
            (
                self.attention_impl in ATTENTION_IMPLS,
                f"model.attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}",
            ),
            (
                self.attention_impl != "cudnn" or self.dtype_name == "bfloat16",
                "model.attention_impl='cudnn' needs model.dtype='bfloat16' (cuDNN flash attention has no float32 kernel)",
            ),
            (self.remat_policy in REMAT_POLICIES, f"model.remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}"),
        ]

    @property
    def dtype(self) -> jnp.dtype:
        return DTYPES[self.dtype_name]
