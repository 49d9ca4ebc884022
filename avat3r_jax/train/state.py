"""The train state: a pytree of everything a step reads and writes, and what a checkpoint saves."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """``params`` is the model's ``nnx.Param`` state (the model has no other variables)."""

    step: jax.Array  # [] int32: number of applied (finite) updates plus skipped ones.
    params: nnx.State
    opt_state: optax.OptState
    rng: jax.Array  # [2] uint32 PRNG key (raw, so checkpoints store it as a plain array).
    nonfinite_in_a_row: jax.Array  # [] int32: consecutive skipped updates.
    nonfinite_total: jax.Array  # [] int32: all skipped updates.

    def replace(self, **changes) -> TrainState:
        return dataclasses.replace(self, **changes)


def create_train_state(params: nnx.State, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """A fresh state at step 0 (call under ``jax.jit`` with output shardings to create it sharded)."""
    zero = jnp.zeros((), jnp.int32)
    return TrainState(
        step=zero,
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.PRNGKey(seed),
        nonfinite_in_a_row=zero,
        nonfinite_total=zero,
    )
