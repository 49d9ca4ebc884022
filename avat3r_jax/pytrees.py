"""Pytree helpers the library shares: key paths as plain names (the one rule that parameter names,
shardings and weight decay follow) and a finiteness check (train step guard, checkpoints)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

# The hop from an ``nnx.Variable`` to its array, which names nothing of the model.
VARIABLE_VALUE_KEYS = ("value", "raw_value")


def key_name(key: Any) -> str:
    """One path entry as a string: a dict key, an attribute name or a sequence index."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_names(path: tuple[Any, ...]) -> tuple[str, ...]:
    """``("blocks", "0", "attn", "kernel")`` for a key path, without a trailing ``nnx.Variable`` value hop."""
    names = tuple(key_name(key) for key in path)
    return names[:-1] if len(names) > 1 and names[-1] in VARIABLE_VALUE_KEYS else names


def all_finite(tree: Any) -> jax.Array:
    """[] bool: every element of every leaf is finite (integer leaves always are).

    The result passes an optimisation barrier: XLA would otherwise fuse the cheap stack-and-reduce
    of the per-leaf flags into every consumer, and a train step's per-leaf ``where(finite, new, old)``
    then carried one copy per leaf (hundreds of fusions of hundreds of operands: minutes of XLA:CPU
    compilation, docs/PERFORMANCE.md).
    """
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jax.lax.optimization_barrier(jnp.all(jnp.stack(leaves))) if leaves else jnp.array(True)
