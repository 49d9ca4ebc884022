"""A program (absl app, as Grain worker processes require) run by test_grain_pipeline.

It takes batches of the training pipeline with ``--workers`` worker processes, saves the iterator
state mid-epoch, takes more, then restores a fresh iterator (workers on) from the saved state and
takes the same number again. Subjects, frames and images of all batches go to ``--out`` (.npz).

With ``--worker_pythonpath=DIR`` this process first initialises JAX (as a trainer holding the
accelerator would), then puts DIR on the ``PYTHONPATH`` that only the workers, started later,
inherit (the test puts a ``sitecustomize`` there that makes ``import jax`` fail). Nothing at module
level imports JAX: the workers re-import this file.
"""

import json
import os

import numpy as np
from absl import app, flags

from configs import tiny
from data_pipelines import grain_pipeline

FLAGS = flags.DEFINE_string("data_dir", None, "tiny synthetic dataset", required=True)
OUT = flags.DEFINE_string("out", None, "output .npz", required=True)
WORKERS = flags.DEFINE_integer("workers", 2, "Grain worker processes")
SEED = flags.DEFINE_integer("seed", 7, "pipeline seed")
WORKER_PYTHONPATH = flags.DEFINE_string("worker_pythonpath", None, "directory put first on the workers' PYTHONPATH")
BEFORE, AFTER = 3, 4


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def main(argv):
    del argv
    if WORKER_PYTHONPATH.value:
        import jax

        jax.devices()
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [WORKER_PYTHONPATH.value, os.environ.get("PYTHONPATH")]))
    config = tiny.get_config().data
    config.num_workers = WORKERS.value

    def dataset():
        return grain_pipeline.make_dataset(config, FLAGS.value, split="train", seed=SEED.value)

    iterator = iter(dataset())
    before = take(iterator, BEFORE)
    state = iterator.get_state()
    after = take(iterator, AFTER)
    resumed_iterator = iter(dataset())
    resumed_iterator.set_state(state)
    resumed = take(resumed_iterator, AFTER)
    arrays = {}
    for name, batches in (("run", before + after), ("resumed", resumed)):
        for key in ("subject", "frame", "images", "target_images"):
            arrays[f"{name}_{key}"] = np.stack([b[key] for b in batches])
    np.savez(OUT.value, **arrays)
    environment = {"pid": os.getpid(), "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS")}  # after the workers started
    with open(f"{OUT.value}.parent.json", "w") as f:
        json.dump(environment, f)


if __name__ == "__main__":
    app.run(main)
