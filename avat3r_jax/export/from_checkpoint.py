"""The model parameters and config of a training run's Orbax checkpoint."""

from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np

from avat3r_jax.checkpoint import Checkpointer, CheckpointError
from avat3r_jax.export.config_io import config_from_dict
from avat3r_jax.export.params import flatten_params
from avat3r_jax.model import abstract_model
from avat3r_jax.train import optimizer
from avat3r_jax.train.state import TrainState, create_train_state


def abstract_train_state(config: ml_collections.ConfigDict) -> TrainState:
    """The trainer's ``TrainState`` as ``ShapeDtypeStruct`` leaves placed on this process's first device."""
    abstract_params = abstract_model(config)[1]
    tx = optimizer.make_optimizer(config.train, abstract_params)
    abstract_state = jax.eval_shape(lambda params: create_train_state(params, tx, config.seed), abstract_params)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), abstract_state)


def load_checkpoint_params(
    workdir: str | pathlib.Path, step: int | None = None
) -> tuple[ml_collections.ConfigDict, dict[str, np.ndarray], int]:
    """``(config, flat float32 params, step)`` from ``<workdir>/checkpoints`` (the newest step by default).

    Restores onto this process's first device, whatever mesh the run trained on (the optimiser state is read too).
    """
    directory = pathlib.Path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise CheckpointError(f"{workdir} has no checkpoints/ directory (is it a training run's --workdir?)")
    checkpointer = Checkpointer(directory, async_save=False)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {directory}")
        if step not in checkpointer.all_steps():
            raise CheckpointError(f"no checkpoint at step {step} in {directory}; steps: {checkpointer.all_steps()}")
        config = config_from_dict(checkpointer.restore_config(step), f"the config of checkpoint {step} in {directory}")
        step, state = checkpointer.restore(abstract_train_state(config), step=step)
    finally:
        checkpointer.close()
    return config, flatten_params(state.params), step
