"""Model parameters with PyTorch names and layouts, for ``avat3r_jax.torch`` (numpy only, no torch needed).

Names: ``tokenizer/patch_embed/kernel`` -> ``tokenizer.patch_embed.weight``; the blocks of both stacks
become ``prefix_blocks.{i}.*`` and ``blocks.{i}.*`` (scanned stacks, whose leaves carry a leading
layer axis, are split per layer). Layouts: a dense kernel ``[*in, *out]`` becomes a ``Linear``
weight ``[prod(out), prod(in)]`` and its bias ``[*out]`` a vector; the convolution kernel
``[kh, kw, in, out]`` becomes ``[out, in, kh, kw]``; LayerNorm/RMSNorm ``scale`` becomes ``weight``.
"""

from __future__ import annotations

import math
import pathlib

import ml_collections
import numpy as np
from safetensors.numpy import save_file

from avat3r_jax.export.config_io import config_to_json
from avat3r_jax.export.params import SEPARATOR

CONV_LAYERS = ("head/mix",)
BLOCK_STACKS = ("prefix_blocks/blocks", "blocks/blocks")
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"


def _unstack_blocks(flat: dict[str, np.ndarray], scan_layers: bool) -> dict[str, np.ndarray]:
    """Renames ``<stack>/blocks/<i>/...`` (or splits scanned ``<stack>/blocks/...`` leaves) to ``<stack>/<i>/...``."""
    out = {}
    for name, value in flat.items():
        stack = next((s for s in BLOCK_STACKS if name.startswith(s + SEPARATOR)), None)
        if stack is None:
            out[name] = value
            continue
        short, rest = stack.split(SEPARATOR)[0], name[len(stack) + 1 :]
        if scan_layers:
            for index in range(value.shape[0]):
                out[f"{short}/{index}/{rest}"] = value[index]
        else:
            out[f"{short}/{rest}"] = value
    return out


def _convert_leaf(module: str, leaf: str, value: np.ndarray, siblings: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
    if leaf == "kernel":
        if module in CONV_LAYERS:
            return "weight", np.transpose(value, (3, 2, 0, 1))
        if "bias" not in siblings:
            raise ValueError(f"dense layer {module!r} has no bias: cannot tell its kernel's input axes from its output axes")
        out_ndim = siblings["bias"].ndim
        fan_in, fan_out = math.prod(value.shape[: value.ndim - out_ndim]), math.prod(value.shape[value.ndim - out_ndim :])
        return "weight", value.reshape(fan_in, fan_out).T
    if leaf == "bias":
        return "bias", value.reshape(-1)
    if leaf == "scale":
        return "weight", value
    return leaf, value


def to_pytorch_state(flat: dict[str, np.ndarray], scan_layers: bool) -> dict[str, np.ndarray]:
    """Flat JAX params (``a/b/kernel``) -> a PyTorch ``state_dict`` of float32 numpy arrays (``a.b.weight``)."""
    flat = _unstack_blocks(flat, scan_layers)
    modules: dict[str, dict[str, np.ndarray]] = {}
    for name, value in flat.items():
        module, _, leaf = name.rpartition(SEPARATOR)
        modules.setdefault(module, {})[leaf] = np.asarray(value, np.float32)
    state = {}
    for module, leaves in modules.items():
        for leaf, value in leaves.items():
            torch_leaf, converted = _convert_leaf(module, leaf, value, leaves)
            key = f"{module}/{torch_leaf}" if module else torch_leaf
            state[key.replace(SEPARATOR, ".")] = np.ascontiguousarray(converted)
    return dict(sorted(state.items()))


def write_pytorch(directory: str | pathlib.Path, config: ml_collections.ConfigDict, params: dict[str, np.ndarray]) -> pathlib.Path:
    """Writes ``model.safetensors`` (PyTorch layout, float32) and ``config.json`` into ``directory``; returns the weights path."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = to_pytorch_state(params, bool(config.model.scan_layers))
    (directory / CONFIG_FILE).write_text(config_to_json(config))
    save_file(state, directory / WEIGHTS_FILE, metadata={"format": "avat3r-pytorch"})
    return directory / WEIGHTS_FILE
