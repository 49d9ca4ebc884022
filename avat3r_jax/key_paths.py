"""Pytree key paths as plain names: the one rule that parameter names, shardings and weight decay share."""

from __future__ import annotations

from typing import Any

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
