"""Evaluation conditions of ``launch/eval_heldout.py`` (no flags): the conditions file, configs per condition, pooled means."""

from __future__ import annotations

import copy
import json
import pathlib
from collections.abc import Iterator, Mapping

import ml_collections
import numpy as np

Overrides = Mapping[str, object]


def load_conditions(path: str) -> dict[str, dict[str, object]]:
    """The conditions file: ``{name: {"config.data.<field>": value}}``; other keys are refused."""
    try:
        conditions = json.loads(pathlib.Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"conditions file {path!r} is unreadable: {e}") from e
    if not isinstance(conditions, dict) or not conditions:
        raise ValueError(f"conditions file {path!r} must hold a non-empty JSON object of name -> overrides")
    for name, overrides in conditions.items():
        bad = [key for key in overrides if not key.startswith("config.data.")] if isinstance(overrides, dict) else [overrides]
        if bad:
            raise ValueError(f"condition {name!r}: overrides must be config.data.* keys, got {bad}")
    return conditions


def condition_config(config: ml_collections.ConfigDict, overrides: Overrides) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``overrides`` (lists become tuples, as config fields hold them)."""
    out = copy.deepcopy(config)
    out.update_from_flattened_dict({k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}, "config.")
    return out


def mean_scores(batches: Iterator[dict[str, np.ndarray]]) -> dict[str, float]:
    """Per-example score batches ``{name: [B]}`` -> means over every example, plus ``examples``."""
    pooled: dict[str, list[np.ndarray]] = {}
    for scores in batches:
        for name, values in scores.items():
            pooled.setdefault(name, []).append(np.asarray(values, np.float64))
    if not pooled:
        raise ValueError("no examples to evaluate")
    result = {name: float(np.mean(np.concatenate(values))) for name, values in pooled.items()}
    result["examples"] = int(sum(len(v) for v in next(iter(pooled.values()))))
    return result
