"""Released PyTorch checkpoints from local files: read a state dict, check it against a model's table.

``read_checkpoint`` reads a ``.pth`` (``torch.load(weights_only=True)``, allowing only
``argparse.Namespace`` besides tensors and plain containers: DUSt3R keeps its training arguments in
one) or a ``.safetensors`` file (no torch needed). ``check_keys`` compares a ``{key: shape}`` table
with what a file holds and raises one ``CheckpointError`` line naming what is missing, unexpected
or of the wrong shape. Nothing here downloads.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

# How many names of each kind an error line lists before "...".
_LISTED = 4


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, or does not hold the weights a model expects."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A state dict as numpy arrays plus the file's non-tensor entries.

    ``tensors``: ``{key: array}`` (bfloat16 tensors widened to float32, exactly); ``metadata``:
    for a ``.pth``, every top-level entry other than the container (an ``argparse.Namespace``
    becomes a dict of its attributes); for a ``.safetensors``, the header's string metadata.
    """

    path: pathlib.Path
    tensors: dict[str, np.ndarray]
    metadata: dict[str, Any]


def read_checkpoint(path: str | pathlib.Path, *, container: str | None = None) -> Checkpoint:
    """Reads ``path`` (``.pth``/``.pt``/``.bin`` or ``.safetensors``).

    ``container``: the top-level entry of a ``.pth`` dict that holds the state dict (DUSt3R:
    ``"model"``, mmengine: ``"state_dict"``); None when the file is the state dict itself. In a
    ``.safetensors`` file, which is always flat, keys under ``f"{container}."`` are taken with that
    prefix removed when there are any.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, container)
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return _read_torch(path, container)
    raise CheckpointError(f"{path}: unknown checkpoint format {path.suffix!r} (expected .pth or .safetensors)")


def _read_torch(path: pathlib.Path, container: str | None) -> Checkpoint:
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: refused by torch.load(weights_only=True), it holds more than tensors: {reason}") from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {reason}") from error
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path}: holds a {type(loaded).__name__}, not a dict of tensors")
    metadata: dict[str, Any] = {}
    if container is not None:
        if container not in loaded:
            raise CheckpointError(
                f"{path}: no {container!r} entry (top-level keys: {_listing(sorted(map(str, loaded)))}); a checkpoint of another model?"
            )
        metadata = {
            str(key): vars(value) if isinstance(value, argparse.Namespace) else value for key, value in loaded.items() if key != container
        }
        loaded = loaded[container]
        if not isinstance(loaded, Mapping):
            raise CheckpointError(f"{path}: entry {container!r} holds a {type(loaded).__name__}, not a dict of tensors")
    not_tensors = sorted(str(key) for key, value in loaded.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"{path}: {len(not_tensors)} entries of the state dict are not tensors: {_listing(not_tensors)}")
    tensors = {str(key): _to_numpy(value) for key, value in loaded.items()}
    return Checkpoint(path=path, tensors=tensors, metadata=metadata)


def _to_numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()


def _read_safetensors(path: pathlib.Path, container: str | None) -> Checkpoint:
    import ml_dtypes  # noqa: F401 (registers numpy's bfloat16, which safetensors' numpy reader asks for)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as file:
            metadata = dict(file.metadata() or {})
            tensors = {key: _widened(file.get_tensor(key)) for key in file.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {reason}") from error
    prefix = f"{container}." if container else None
    if prefix and any(key.startswith(prefix) for key in tensors):
        tensors = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
    return Checkpoint(path=path, tensors=tensors, metadata=metadata)


def _widened(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) if array.dtype.name == "bfloat16" else array


def check_keys(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, Any], *, what: str) -> None:
    """Raises one ``CheckpointError`` line unless ``found`` (arrays or shapes) has exactly ``expected``'s keys and shapes.

    ``what`` names the model (and file) in the message, e.g. ``"DUSt3R checkpoint x.pth"``.
    """
    found_shapes = {key: tuple(getattr(value, "shape", value)) for key, value in found.items()}
    missing = sorted(set(expected) - set(found_shapes))
    unexpected = sorted(set(found_shapes) - set(expected))
    mismatched = sorted(
        f"{key} {found_shapes[key]} vs expected {tuple(expected[key])}"
        for key in set(expected) & set(found_shapes)
        if found_shapes[key] != tuple(expected[key])
    )
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_listing(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_listing(unexpected)})")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches ({_listing(mismatched)})")
    hint = "; no key in common: a checkpoint of another model?" if expected and not set(expected) & set(found_shapes) else ""
    raise CheckpointError(f"{what} does not match: " + ", ".join(parts) + hint)


def check_finite(tensors: Mapping[str, np.ndarray], *, what: str) -> None:
    """Raises one ``CheckpointError`` line naming the tensors that hold NaN or infinite values."""
    bad = sorted(key for key, value in tensors.items() if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all())
    if bad:
        raise CheckpointError(f"{what}: {len(bad)} tensors hold NaN or infinite values ({_listing(bad)})")


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f", ... {len(names) - _LISTED} more" if len(names) > _LISTED else "")
