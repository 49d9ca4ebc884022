"""Model parameters as a flat ``{"a/b/0/kernel": array}`` dict (the bundle's and the converters' common form)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avat3r_jax.pytrees import path_names

SEPARATOR = "/"
PARAM_DTYPES = ("float32", "bfloat16")


class ParamsMismatchError(ValueError):
    """Stored parameters do not fit the model the config describes."""


def _named_leaves(params: nnx.State) -> list[tuple[str, jax.Array]]:
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]
    return [(SEPARATOR.join(path_names(path)), leaf) for path, leaf in leaves]


def flatten_params(params: nnx.State) -> dict[str, np.ndarray]:
    """An ``nnx.Param`` state -> ``{path: numpy array}`` with ``/``-joined paths, sorted by name."""
    return {name: np.asarray(jax.device_get(leaf)) for name, leaf in sorted(_named_leaves(params))}


def param_shapes(params: nnx.State) -> dict[str, tuple[int, ...]]:
    """``{path: shape}`` of a (possibly abstract) ``nnx.Param`` state."""
    return {name: tuple(leaf.shape) for name, leaf in _named_leaves(params)}


def check_param_shapes(flat: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], source: str) -> None:
    """Raises ``ParamsMismatchError`` listing missing, unexpected and wrongly shaped parameters."""
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    wrong = [
        f"{name}: stored {tuple(flat[name].shape)}, model {expected[name]}"
        for name in sorted(set(flat) & set(expected))
        if tuple(flat[name].shape) != expected[name]
    ]
    if missing or unexpected or wrong:
        lines = [f"the parameters in {source} do not fit the model of this config (saved from another config?)"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:8]) + (" ..." if len(items) > 8 else ""))
        raise ParamsMismatchError("\n".join(lines))


def unflatten_params(flat: dict[str, np.ndarray], abstract_params: nnx.State, source: str, dtype=jnp.float32) -> nnx.State:
    """A new state shaped like ``abstract_params`` (e.g. from ``nnx.eval_shape``) holding ``flat`` cast to ``dtype``."""
    check_param_shapes(flat, param_shapes(abstract_params), source)
    values = [jnp.asarray(flat[name], dtype) for name, _ in _named_leaves(abstract_params)]  # tree-flatten order
    state = jax.tree.map(lambda leaf: leaf, abstract_params)  # a copy: the caller's state stays abstract
    nnx.replace_by_pure_dict(state, jax.tree.unflatten(jax.tree.structure(nnx.to_pure_dict(abstract_params)), values))
    return state


def cast_params(flat: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """Casts every floating-point array to ``dtype`` (``float32`` or ``bfloat16``)."""
    if dtype not in PARAM_DTYPES:
        raise ValueError(f"parameter dtype must be one of {PARAM_DTYPES}, got {dtype!r}")
    target = jnp.dtype(dtype)
    return {name: value.astype(target) if jnp.issubdtype(value.dtype, jnp.floating) else value for name, value in flat.items()}
