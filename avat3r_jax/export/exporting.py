"""``jax.export`` of the model for fixed input shapes, with plain-dict signatures (no avat3r_jax types).

Three functions are exported; ``params`` is the flat ``{name: array}`` dict of ``params.safetensors``
(in the stored dtype, cast to float32 inside) and ``inputs`` the dict of model inputs below:

- ``forward(params, inputs, expression [B, D]) -> gaussians`` (dict of the ``Gaussians`` fields),
- ``encode(params, inputs) -> context`` (a list of arrays: the expression-independent work),
- ``decode(params, context, expression [B, D]) -> gaussians`` (per animation frame).

A host with only ``jax`` runs them: ``jax.export.deserialize(blob).call(params, inputs, expression)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from avat3r_jax.export.params import unflatten_params
from avat3r_jax.gaussians import Gaussians
from avat3r_jax.model import ModelSettings, abstract_model
from avat3r_jax.spec import model_input_shapes


def input_specs(config: ml_collections.ConfigDict, batch_size: int = 1) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of the model inputs for ``batch_size`` examples of ``data.num_input_views`` views at the config's sizes."""
    shapes = model_input_shapes(ModelSettings.from_config(config), batch_size)
    return {key: jax.ShapeDtypeStruct(*spec) for key, spec in shapes.items()}


def gaussians_to_dict(gaussians: Gaussians) -> dict[str, jax.Array]:
    return {field.name: getattr(gaussians, field.name) for field in dataclasses.fields(Gaussians)}


def gaussians_from_dict(values: dict[str, jax.Array]) -> Gaussians:
    return Gaussians.create(**{field.name: values[field.name] for field in dataclasses.fields(Gaussians)})


def export_model(
    config: ml_collections.ConfigDict,
    params: dict[str, np.ndarray],
    platforms: Sequence[str],
    batch_size: int = 1,
) -> dict[str, jax.export.Exported]:
    """Exports ``forward``, ``encode`` and ``decode`` for ``platforms`` (e.g. ``("cpu", "cuda")``)."""
    graphdef, abstract_params = abstract_model(config)

    def model_of(flat: dict[str, jax.Array]) -> nnx.Module:
        return nnx.merge(graphdef, unflatten_params(flat, abstract_params, "the exported function's params"))

    param_specs = {name: jax.ShapeDtypeStruct(value.shape, value.dtype) for name, value in params.items()}
    inputs = input_specs(config, batch_size)
    expression = jax.ShapeDtypeStruct((batch_size, config.data.expression_dim), jnp.float32)
    context_tree = jax.tree.structure(jax.eval_shape(lambda p, x: model_of(p).encode(x), param_specs, inputs))

    def forward(flat, inputs, expression):
        model = model_of(flat)
        return gaussians_to_dict(model.decode(model.encode(inputs), expression))

    def encode(flat, inputs):
        return jax.tree.leaves(model_of(flat).encode(inputs))

    def decode(flat, context, expression):
        return gaussians_to_dict(model_of(flat).decode(jax.tree.unflatten(context_tree, context), expression))

    context_specs = jax.eval_shape(encode, param_specs, inputs)
    export = lambda fn: jax.export.export(jax.jit(fn), platforms=tuple(platforms))
    return {
        "forward": export(forward)(param_specs, inputs, expression),
        "encode": export(encode)(param_specs, inputs),
        "decode": export(decode)(param_specs, context_specs, expression),
    }
