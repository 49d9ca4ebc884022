"""Data benchmark: synthetic-set generation time and Grain pipeline throughput (examples/s).

    python -m launch.bench_data --config=configs/synthetic.py --data_dir=/tmp/avat3r_bench_data

Generates the config's synthetic dataset into ``--data_dir`` if it is missing (timed), then times
the training pipeline at the config's batch size for each ``--workers`` count (0 = threads in this
process), after ``--warmup`` batches that absorb worker start-up.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

from absl import flags

from configs import synthetic as synthetic_config
from data_pipelines import grain_pipeline, storage, synthetic
from launch.config_cli import CONFIG, run_app

DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/avat3r_bench_data", "Dataset directory (generated when missing).")
WORKERS = flags.DEFINE_list("workers", ["0", "2"], "Grain worker-process counts to time.")
BATCHES = flags.DEFINE_integer("batches", 100, "Timed batches per setting.")
WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed batches first.")


def time_pipeline(config, data_dir: pathlib.Path, workers: int) -> dict[str, float]:
    data = config.data.copy_and_resolve_references()
    data.num_workers = workers
    iterator = iter(grain_pipeline.make_dataset(data, data_dir, split="train", seed=0))
    for _ in range(WARMUP.value):
        next(iterator)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(BATCHES.value):
        next(iterator)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    examples = BATCHES.value * data.batch_size
    return {
        "workers": workers,
        "batch_size": data.batch_size,
        "examples_per_s": examples / elapsed,
        "main_process_cpu_ms_per_example": 1000 * cpu / examples,
    }


def main(argv: list[str]) -> None:
    del argv
    config = CONFIG.value if CONFIG.value is not None else synthetic_config.get_config()
    data_dir = pathlib.Path(DATA_DIR.value)
    results = {}
    results["load_average_1min"] = os.getloadavg()[0]  # other work on this machine slows every number here
    if not (data_dir / storage.METADATA_FILE).exists():
        start, cpu_start = time.perf_counter(), time.process_time()
        synthetic.ensure_dataset(config.data, data_dir)
        results["generation_s"] = time.perf_counter() - start
        results["generation_cpu_s"] = time.process_time() - cpu_start
    synthetic.ensure_dataset(config.data, data_dir)  # checks that an existing dataset matches the config
    s = config.data.synthetic
    results["dataset"] = f"{s.subjects} subjects x {s.frames} frames x {s.cameras} cameras at {s.resolution}px"
    results["pipeline"] = [time_pipeline(config, data_dir, int(w)) for w in WORKERS.value]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    run_app(main)
