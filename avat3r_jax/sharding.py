"""Device meshes and the one table of logical-axis rules.

Arrays carry *logical* axis names (``batch``, ``tokens``, ``embed``, ``mlp``, ``heads``, ...); the
rules below map them onto the mesh axes ``('data', 'fsdp', 'tensor')``:

- activations split their ``batch`` axis over ``('data', 'fsdp')`` (data parallel + FSDP),
- parameters split ``embed`` over ``'fsdp'`` (fully sharded data parallel) and ``mlp``/``heads``
  over ``'tensor'`` (tensor parallel); every other axis is replicated.

Resolution follows the table's order: a rule whose mesh axes are already taken by an earlier rule
on the same array is skipped, so an activation ``[batch, tokens, embed]`` gets
``P(('data', 'fsdp'), None, None)`` while a parameter ``[embed, mlp]`` gets ``P('fsdp', 'tensor')``.
With a shape and mesh at hand, an axis keeps only the longest prefix of its mesh axes whose size
divides it (a 3-channel kernel axis is replicated instead of failing to shard).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from avat3r_jax.pytrees import path_names

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated). Order is priority.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("qkv", None),
    ("views", None),
    ("tokens", None),
    ("expression_tokens", None),
    ("layers", None),
    ("height", None),
    ("width", None),
    ("channels", None),
)

LogicalNames = Sequence[str | None]


def logical_to_spec(
    names: LogicalNames,
    shape: Sequence[int] | None = None,
    mesh: Mesh | jax.sharding.AbstractMesh | None = None,
    rules=LOGICAL_AXIS_RULES,
) -> PartitionSpec:
    """The ``PartitionSpec`` for an array whose axes carry logical ``names`` (None = replicated)."""
    names = tuple(names)
    table = dict(rules)
    unknown = [name for name in names if name is not None and name not in table]
    if unknown:
        raise ValueError(f"logical axis names {unknown} have no sharding rule; known: {sorted(table)}")
    present = [name for name in names if name is not None]
    if len(set(present)) != len(present):
        raise ValueError(f"logical axis names repeat in {names}")
    if shape is not None and len(shape) != len(names):
        raise ValueError(f"{len(names)} logical names {names} for an array of shape {tuple(shape)}")
    spec: list[str | tuple[str, ...] | None] = [None] * len(names)
    used: set[str] = set()
    for name, mesh_axes in rules:
        if name not in present or mesh_axes is None:
            continue
        axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
        if used.intersection(axes):
            continue
        index = names.index(name)
        if shape is not None and mesh is not None:
            axes = _dividing_prefix(axes, shape[index], mesh)
        if axes:
            spec[index] = axes[0] if len(axes) == 1 else axes
            used.update(axes)
    return PartitionSpec(*spec)


def _dividing_prefix(axes: tuple[str, ...], size: int, mesh) -> tuple[str, ...]:
    """The longest prefix of ``axes`` whose mesh sizes multiply to a divisor of ``size``."""
    for end in range(len(axes), 0, -1):
        if size % math.prod(mesh.shape[axis] for axis in axes[:end]) == 0:
            return axes[:end]
    return ()


def make_mesh(mesh_config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``('data', 'fsdp', 'tensor')`` mesh from ``mesh_config.{data,fsdp,tensor}``; one of them may be -1."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
    bad = [f"{axis}={size}" for axis, size in zip(MESH_AXES, sizes) if size == 0 or size < -1]
    if bad:
        raise ValueError(f"mesh axis sizes must be positive or -1, got {', '.join(bad)}")
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    fixed = math.prod(size for size in sizes if size != -1)
    if -1 in sizes:
        if len(devices) % fixed:
            raise ValueError(f"{len(devices)} devices cannot be split into a mesh {dict(zip(MESH_AXES, sizes))}")
        sizes[sizes.index(-1)] = len(devices) // fixed
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} devices but {len(devices)} are available")
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=auto, devices=devices)


def with_logical_constraint(x: jax.Array, names: LogicalNames) -> jax.Array:
    """Constrains activation ``x`` to the sharding of its logical axis ``names`` under the current mesh.

    A no-op outside a mesh context (``jax.set_mesh``), so the same model code runs on one device.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))


def partitioned(initializer: Callable, *names: str | None) -> Callable:
    """An initializer whose parameter carries logical axis ``names`` (sharded later, not eagerly)."""
    return nnx.with_partitioning(initializer, names, eager_sharding=False)


def _variable_spec(variable: nnx.Variable, mesh: Mesh) -> PartitionSpec:
    names = variable.get_metadata().get("out_sharding")
    if not names:
        return PartitionSpec()
    return logical_to_spec(names, variable.shape, mesh)


def parameter_shardings(params: Any, mesh: Mesh) -> Any:
    """``NamedSharding``s (same tree as ``params``) from each ``nnx.Variable``'s logical axis names."""
    return jax.tree.map(
        lambda variable: variable.replace(NamedSharding(mesh, _variable_spec(variable, mesh))),
        params,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def state_shardings(tree: Any, params: Any, mesh: Mesh) -> Any:
    """``NamedSharding``s for every array leaf of ``tree`` (e.g. a train state holding ``params``).

    A leaf whose key path ends with a parameter's key path and has that parameter's shape gets the
    parameter's sharding (so optimizer moments follow their parameters); every other leaf (step
    counters, RNG keys, scalars) is replicated.
    """
    by_path: dict[tuple, tuple[tuple[int, ...], PartitionSpec]] = {}
    for path, variable in jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]:
        if isinstance(variable, nnx.Variable):
            by_path[path_names(path)] = (tuple(variable.shape), _variable_spec(variable, mesh))

    def leaf_sharding(path, leaf) -> NamedSharding:
        names = path_names(path)
        for start in range(len(names)):
            match = by_path.get(names[start:])
            if match is not None and match[0] == tuple(leaf.shape):
                return NamedSharding(mesh, match[1])
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Sharding of a batch array of rank ``ndim``: its leading axis is the logical ``batch`` axis."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1)))


def create_sharded(factory: Callable[[], nnx.Module], mesh: Mesh) -> nnx.Module:
    """Builds ``factory()`` with every parameter created directly in its sharding on ``mesh``."""
    graphdef, abstract_state = nnx.split(nnx.eval_shape(factory))
    shardings = parameter_shardings(abstract_state, mesh)
    state = jax.jit(lambda: nnx.split(factory())[1], out_shardings=shardings)()
    return nnx.merge(graphdef, state)
