"""What a training run reads: its dataset directory (the synthetic one generated on first use) and
Grain iterators over it, in the form ``avat3r_jax.train.trainer.Trainer`` takes them."""

from __future__ import annotations

import pathlib

import jax
import ml_collections

from avat3r_jax.train import distributed
from avat3r_jax.train.trainer import IteratorFactory
from data_pipelines import grain_pipeline, synthetic


def data_dir_for(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
    """``data.dir``, or ``workdir/data`` when it is empty."""
    return pathlib.Path(config.data.dir) if config.data.dir else pathlib.Path(workdir) / "data"


class DataDirError(ValueError):
    """``data.dir`` names a directory that does not exist (a typo would otherwise get a synthetic dataset)."""


def prepare_dataset(config: ml_collections.ConfigDict, workdir: pathlib.Path, generate: bool = False) -> pathlib.Path:
    """The run's dataset directory, ready on every process: process 0 checks it (or generates the
    synthetic dataset there), the others wait for it.

    The synthetic dataset is generated only at the default location (``data.dir`` empty) or when
    ``generate`` asks for it; a ``data.dir`` that does not exist is otherwise an error.
    """
    data_dir = data_dir_for(config, workdir)
    remote = "://" in config.data.dir  # gs://...: not a local path whose existence pathlib can check.
    if config.data.dir and not remote and not generate and not data_dir.exists():
        raise DataDirError(
            f"data.dir={config.data.dir!r} does not exist: point it at a dataset (avat3r-data makes one), "
            f"leave it empty for the default {pathlib.Path(workdir) / 'data'}, or pass --generate_data to generate "
            "the synthetic dataset there"
        )
    if jax.process_index() == 0:
        synthetic.ensure_dataset(config.data, data_dir)
    distributed.barrier("dataset ready")
    return data_dir


def grain_iterators(config: ml_collections.ConfigDict, data_dir: pathlib.Path) -> IteratorFactory:
    """``(split, num_epochs) -> iterator`` over this process's shard of ``data_dir``'s Grain pipeline."""

    def make_iterator(split: str, num_epochs: int | None):
        dataset = grain_pipeline.make_dataset(
            config.data,
            data_dir,
            split=split,
            seed=config.data.shuffle_seed,
            shard_index=jax.process_index(),
            shard_count=jax.process_count(),
            num_epochs=num_epochs,
        )
        return iter(dataset)

    return make_iterator
