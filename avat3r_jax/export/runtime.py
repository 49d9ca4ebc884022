"""A model with fixed parameters for inference: jitted encode (once per avatar), decode (per expression), render."""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from avat3r_jax.batch_dtypes import to_float32
from avat3r_jax.export.config_io import RUNTIME_FIELDS, config_from_dict, config_to_json
from avat3r_jax.export.params import unflatten_params
from avat3r_jax.gaussians import Gaussians
from avat3r_jax.geometry import Cameras
from avat3r_jax.model import Context, ModelSettings, abstract_model
from avat3r_jax.render import RenderOutput, rasterize_with_config

if TYPE_CHECKING:  # the bundle module needs safetensors, which inference from a config does not
    from avat3r_jax.export.bundle import Bundle


def with_runtime_overrides(config: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
    """A copy of ``config`` with runtime-only fields (``dtype``, ``attention_impl``, ``remat_policy``) and ``render.*`` replaced.

    Keys are ``model_dtype``, ``model_attention_impl``, ``model_remat_policy`` and ``render_<field>``;
    ``None`` values keep the config's.
    """
    allowed = {field.replace(".", "_") for field in RUNTIME_FIELDS} | {f"render_{key}" for key in config.render}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"cannot override {unknown} at inference; allowed: {sorted(allowed)}")
    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in overrides.items():
        if value is not None:
            section, field = key.split("_", 1)
            config[section][field] = value
    config.lock()
    return config


class _Compiled:
    """The jitted functions of one config; the graph definition and render settings are closed over
    (not static arguments, whose hashing would cost about a millisecond per call at the paper's size)."""

    def __init__(self, config: ml_collections.ConfigDict):
        graphdef = abstract_model(config)[0]
        render_config = ml_collections.FrozenConfigDict(config.render)
        self.encode = jax.jit(lambda params, batch: nnx.merge(graphdef, params).encode(batch))
        self.decode = jax.jit(lambda params, context, expression: nnx.merge(graphdef, params).decode(context, expression))
        self.forward = jax.jit(lambda params, batch: nnx.merge(graphdef, params)(batch))
        self.render = jax.jit(
            lambda gaussians, cameras, size: rasterize_with_config(gaussians, cameras, size, render_config), static_argnums=2
        )


@functools.cache
def _compiled_for(config_json: str) -> _Compiled:
    """One ``_Compiled`` per distinct config, so that models of equal configs share their compilations."""
    return _Compiled(config_from_dict(json.loads(config_json), "an inference model's config"))


class InferenceModel:
    """Holds the parameters on the device; jitted ``encode`` / ``decode`` / ``forward`` / ``render``."""

    def __init__(self, config: ml_collections.ConfigDict, params: nnx.State):
        self.config = config
        self.settings = ModelSettings.from_config(config)
        self.params = params
        self._compiled = _compiled_for(config_to_json(config))

    @classmethod
    def from_flat(cls, config: ml_collections.ConfigDict, flat: dict[str, np.ndarray], source: str) -> InferenceModel:
        """From flat ``{name: array}`` parameters (any float dtype; cast to float32)."""
        return cls(config, unflatten_params(flat, abstract_model(config)[1], source))

    @classmethod
    def from_bundle(cls, bundle: Bundle, **overrides) -> InferenceModel:
        """From a loaded bundle, with optional runtime overrides (see ``with_runtime_overrides``)."""
        return cls.from_flat(with_runtime_overrides(bundle.config, **overrides), bundle.params, str(bundle.directory))

    def _model_inputs(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """The entries the model reads as float32 values (uint8 images in [0, 1]); others (targets, masks,
        ids) are dropped so they do not retrace."""
        inputs = to_float32({key: batch[key] for key in self.settings.model_input_keys if key in batch})
        return {key: jnp.asarray(value, jnp.float32) for key, value in inputs.items()}

    def encode(self, batch: dict[str, jax.Array]) -> Context:
        """The expression-independent work for ``batch`` (images ``[B, V, H, W, 3]``, cameras, maps)."""
        return self._compiled.encode(self.params, self._model_inputs(batch))

    def decode(self, context: Context, expression: jax.Array) -> Gaussians:
        """Gaussians ``[B]`` for ``expression [B, D]`` from a cached ``context``."""
        return self._compiled.decode(self.params, context, jnp.asarray(expression, jnp.float32))

    def forward(self, batch: dict[str, jax.Array]) -> Gaussians:
        """``encode`` + ``decode`` of ``batch["expression"]`` in one call."""
        return self._compiled.forward(
            self.params, self._model_inputs(batch) | {"expression": jnp.asarray(batch["expression"], jnp.float32)}
        )

    def render(self, gaussians: Gaussians, cameras: Cameras, image_size: tuple[int, int]) -> RenderOutput:
        """Renders Gaussians ``[B]`` into cameras ``[B, C]`` with the config's rasterizer settings."""
        return self._compiled.render(gaussians, cameras, tuple(int(x) for x in image_size))
