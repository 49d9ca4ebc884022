"""AVAT3R inference in PyTorch, on weights converted by ``avat3r-export --to_pytorch`` (no JAX needed).

model = load_model("bundles/synthetic/pytorch")  # model.safetensors + config.json
gaussians = model({key: torch.as_tensor(value) for key, value in batch.items()})
"""

from __future__ import annotations

import json
import pathlib

import torch
from safetensors.torch import load_file

from avat3r_jax.spec import ModelSpec
from avat3r_jax.torch.model import Avat3rTorch

WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"  # as written by avat3r_jax.export.to_pytorch


def load_model(directory: str | pathlib.Path, device: str | torch.device = "cpu") -> Avat3rTorch:
    """The model of ``directory/config.json`` with the weights of ``directory/model.safetensors``, in eval mode."""
    directory = pathlib.Path(directory)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} has no {name} (write it with avat3r-export --to_pytorch)")
    model = Avat3rTorch(ModelSpec.from_config(json.loads((directory / CONFIG_FILE).read_text())))
    state = load_file(directory / WEIGHTS_FILE, device=str(device))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


__all__ = ["Avat3rTorch", "ModelSpec", "load_model"]
