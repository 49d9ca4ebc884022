"""A PyTorch mirror with random weights, written and loaded as a bundle's ``pytorch/`` folder would be."""

import pathlib

import numpy as np

from avat3r_jax.export.params import flatten_params
from avat3r_jax.export.to_pytorch import write_pytorch
from tests.export.examples import random_params


def random_torch_model(directory: pathlib.Path, config, seed: int = 0):
    """``avat3r_jax.torch.load_model`` of random JAX parameters of ``config`` (the caller skips without torch)."""
    from avat3r_jax.torch import load_model

    _, params = random_params(config, np.random.default_rng(seed))
    write_pytorch(directory, config, flatten_params(params))
    return load_model(directory)
