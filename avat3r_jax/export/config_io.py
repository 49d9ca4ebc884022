"""Configs as JSON: writing, reading back into the schema of ``avat3r_jax.config``, comparing models."""

from __future__ import annotations

import json
from typing import Any

import ml_collections

from avat3r_jax.config import base_config

# Config fields that change how the model runs but not what it computes or which parameters it has.
RUNTIME_FIELDS = ("model.dtype", "model.attention_impl", "model.remat_policy")
# Data fields that fix the model's input shapes.
SHAPE_FIELDS = (
    "data.image_height",
    "data.image_width",
    "data.num_input_views",
    "data.feature_channels",
    "data.feature_height",
    "data.feature_width",
    "data.expression_dim",
)


class ConfigError(ValueError):
    """A stored config that does not fit this version's schema."""


def config_to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def config_from_dict(values: dict[str, Any], source: str) -> ml_collections.ConfigDict:
    """The schema of ``avat3r_jax.config.base_config()`` filled with ``values``; unknown keys are errors."""
    config = base_config()

    def fill(node: ml_collections.ConfigDict, part: dict[str, Any], prefix: str) -> None:
        for key, value in part.items():
            if key not in node:
                raise ConfigError(f"{source}: config key '{prefix}{key}' is unknown to this version of avat3r_jax")
            if isinstance(value, dict):
                fill(node[key], value, f"{prefix}{key}.")
            else:
                node[key] = value

    fill(config, values, "")
    return config


def _flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(part: dict[str, Any], prefix: str) -> None:
        for key, value in part.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value

    walk(config.to_dict(), "")
    return flat


def model_differences(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict) -> list[str]:
    """Fields (``model.*`` and input shapes, runtime-only fields excepted) where two configs disagree."""
    flat_a, flat_b = _flat_config(a), _flat_config(b)
    keys = sorted(k for k in set(flat_a) | set(flat_b) if (k.startswith("model.") or k in SHAPE_FIELDS) and k not in RUNTIME_FIELDS)
    return [f"{k}: {flat_a.get(k)!r} vs {flat_b.get(k)!r}" for k in keys if flat_a.get(k) != flat_b.get(k)]
