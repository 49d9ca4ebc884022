"""Data benchmark: synthetic-set generation time and Grain pipeline throughput against a consumption rate.

    python -m launch.bench_data --config=configs/paper.py --data_dir=/tmp/avat3r_bench_paper \\
        --config.data.synthetic.subjects=2 --config.data.synthetic.frames=3 --workers=0,4,8,16

Generates the config's synthetic dataset into ``--data_dir`` if it is missing (timed), then times
the training pipeline at the config's batch size and shapes for each ``--workers`` count (0 = threads
in this process), after ``--warmup`` batches (plus two per worker) that absorb worker start-up. For
each count it reports examples/s, the CPU time per example of this process and of all worker
processes together (from /proc, Linux), and the ratio of examples/s to ``--consumption_rate``, the
examples/s the train step consumes on the same host (default: the paper config's step on one H200).
By default this process first initialises JAX's default backend, as a trainer does, so that on an
accelerator host the workers start beside a parent that holds the device.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pathlib
import time

from absl import flags

from configs import synthetic as synthetic_config
from data_pipelines import grain_pipeline, storage
from launch.config_cli import CONFIG, run_app

DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/avat3r_bench_data", "Dataset directory (generated when missing).")
WORKERS = flags.DEFINE_list("workers", ["0", "2"], "Grain worker-process counts to time.")
BATCHES = flags.DEFINE_integer("batches", 100, "Timed batches per setting.")
WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed batches first (two more per worker).")
HOLD_ACCELERATOR = flags.DEFINE_bool(
    "hold_accelerator", True, "Initialise JAX's default backend in this process first, as a trainer holding the accelerator does."
)
CONSUMPTION_RATE = flags.DEFINE_float(
    "consumption_rate", 13.6, "Examples/s the train step consumes on this host (paper config, one H200: 13.6)."
)

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 if it has exited)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14 and 15 of stat)


def workers_cpu_s() -> dict[int, float]:
    return {p.pid: process_cpu_s(p.pid) for p in multiprocessing.active_children()}


def time_pipeline(config, data_dir: pathlib.Path, workers: int) -> dict[str, float]:
    data = config.data.copy_and_resolve_references()
    data.num_workers = workers
    iterator = iter(grain_pipeline.make_dataset(data, data_dir, split="train", seed=0))
    for _ in range(WARMUP.value + 2 * workers):
        next(iterator)
    workers_before = workers_cpu_s()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(BATCHES.value):
        next(iterator)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    workers_after = workers_cpu_s()
    worker_cpu = sum(workers_after[pid] - workers_before.get(pid, 0.0) for pid in workers_after)
    iterator.close()
    examples = BATCHES.value * data.batch_size
    examples_per_s = examples / elapsed
    return {
        "workers": workers,
        "batch_size": data.batch_size,
        "examples_per_s": examples_per_s,
        "ratio_to_consumption": examples_per_s / CONSUMPTION_RATE.value,
        "cpu_ms_per_example": 1000 * (cpu + worker_cpu) / examples,
        "main_process_cpu_ms_per_example": 1000 * cpu / examples,
    }


def main(argv: list[str]) -> None:
    del argv
    config = CONFIG.value if CONFIG.value is not None else synthetic_config.get_config()
    data_dir = pathlib.Path(DATA_DIR.value)
    results = {"load_average_1min_start": os.getloadavg()[0], "cpu_count": os.cpu_count()}  # other work slows every number here
    if HOLD_ACCELERATOR.value:
        import jax

        jax.numpy.zeros(1).block_until_ready()  # the backend (on a GPU: its preallocated memory) is this process's
        results["parent_devices"] = [str(d) for d in jax.devices()]
    from data_pipelines import synthetic  # imported here: the generator's JAX code is no part of what workers need

    if not (data_dir / storage.METADATA_FILE).exists():
        start, cpu_start = time.perf_counter(), time.process_time()
        synthetic.ensure_dataset(config.data, data_dir)
        results["generation_s"] = time.perf_counter() - start
        results["generation_cpu_s"] = time.process_time() - cpu_start
    synthetic.ensure_dataset(config.data, data_dir)  # checks that an existing dataset matches the config
    d, s = config.data, config.data.synthetic
    results["dataset"] = f"{s.subjects} subjects x {s.frames} frames x {s.cameras} cameras at {s.resolution}px"
    results["example"] = (
        f"{d.num_input_views} input + {d.num_target_views} target views at {d.image_height}x{d.image_width}, "
        f"features {d.feature_height}x{d.feature_width}x{d.feature_channels}"
    )
    results["consumption_rate"] = CONSUMPTION_RATE.value
    results["pipeline"] = []
    for workers in WORKERS.value:
        results["pipeline"].append(time_pipeline(config, data_dir, int(workers)))
        print(json.dumps(results["pipeline"][-1]), flush=True)
    results["load_average_1min_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    run_app(main)
