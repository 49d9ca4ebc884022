"""Config-override plumbing shared by the sweep launchers (``xm_launch``, ``run_table``), no flags defined.

Sweep and table files are Python files; their overrides are ``{"config.<field path>": value}`` dicts,
checked against a config file before anything starts and passed to ``python -m launch.train`` as
``--config.<field path>=value``.
"""

from __future__ import annotations

import copy
import importlib.util
import pathlib
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

Overrides = dict[str, Any]


def load_module(path: str, what: str) -> ModuleType:
    """Imports a Python file by path (configs and sweeps are files, like ``--config``)."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise ValueError(f"{what} file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_avat3r_{what}_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sweep(path: str) -> list[Overrides]:
    """The sweep's list of override dicts, keys ``config.<field path>``."""
    module = load_module(path, "sweep")
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"sweep file {path!r} has no get_sweep() function")
    sweep = module.get_sweep()
    if not isinstance(sweep, Sequence) or not sweep or not all(isinstance(item, Mapping) for item in sweep):
        raise ValueError(f"get_sweep() in {path!r} must return a non-empty list of dicts, got {sweep!r}")
    for i, overrides in enumerate(sweep):
        bad = [key for key in overrides if not (isinstance(key, str) and key.startswith("config."))]
        if bad:
            raise ValueError(f"work unit {i + 1} of {path!r}: override keys must look like 'config.train.learning_rate', got {bad}")
    return [dict(item) for item in sweep]


def check_overrides(config_path: str, sweep: Sequence[Overrides]) -> None:
    """Applies every work unit's overrides to a copy of the config: unknown keys or types raise ValueError."""
    base = load_module(config_path, "config").get_config()
    for i, overrides in enumerate(sweep):
        try:
            copy.deepcopy(base).update_from_flattened_dict(overrides, "config.")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"work unit {i + 1}: overrides {overrides} do not fit {config_path}: {e}") from e


def format_override(key: str, value: Any) -> str:
    """``--config.a.b=value`` in the form ml_collections' config flags parse back to ``value``."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value
    elif isinstance(value, int | float | tuple | list):
        text = repr(value)
    else:
        raise ValueError(f"override {key}: unsupported value {value!r} of type {type(value).__name__}")
    return f"--{key}={text}"


def train_args(config_path: str, workdir: str, overrides: Overrides) -> list[str]:
    """Arguments of ``python -m launch.train`` for one work unit."""
    return ["-m", "launch.train", f"--config={config_path}", f"--workdir={workdir}"] + [format_override(k, v) for k, v in overrides.items()]
