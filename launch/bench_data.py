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

``--profile_examples=N`` first profiles where one example's CPU goes, in this process, one thread:
the example assembly a worker runs (record reads, image and mask decode/resize, position maps,
feature maps; cProfile cumulative times), touching freshly allocated example arrays, and the
batch's transfer as Grain does it: stacked into private memory (0 workers) or into new shared
memory blocks (``SharedMemoryArray``, workers), then opened, read once and released as the main
process does.
"""

from __future__ import annotations

import cProfile
import json
import multiprocessing
import os
import pathlib
import pstats
import time

import numpy as np
from absl import flags
from array_record.python.array_record_data_source import ArrayRecordDataSource
from grain.multiprocessing import SharedMemoryArray

from configs import synthetic as synthetic_config
from data_pipelines import grain_pipeline, schema, sources, storage
from data_pipelines.input_variation import InputVariation
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

PROFILE_EXAMPLES = flags.DEFINE_integer("profile_examples", 0, "Examples to profile stage by stage first (0: no profile).")

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Stage name -> the function whose cumulative cProfile time it is (one example's assembly).
_ASSEMBLY_STAGES = {
    "record bytes (ArrayRecord read, decompression)": ArrayRecordDataSource.__getitem__,
    "record parsing and CRCs (schema.deserialize)": schema.deserialize,
    "views: decode, crop/resize, maps (load_view)": grain_pipeline.AssembleExample.load_view,
    "  of which position maps": grain_pipeline.AssembleExample._posmap,
    "  of which feature maps": grain_pipeline.AssembleExample._features,
}


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


def _cpu_ms(fn, repeats: int) -> float:
    """Mean CPU milliseconds of ``fn()`` over ``repeats`` calls (this process, all threads)."""
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return 1000 * (time.process_time() - start) / repeats


def _to_shared_memory(example: dict[str, np.ndarray]) -> dict:
    """A worker's side of a batch of one: each array stacked into a new shared memory block."""
    out = {}
    for key, value in example.items():
        value = np.asarray(value)
        block = SharedMemoryArray((1, *value.shape), value.dtype)
        np.copyto(block, value[None], casting="no")
        out[key] = (block.metadata, block)
    return out


def _receive(blocks: dict, scratch: dict[str, np.ndarray]) -> None:
    """The main process's side: open each block, read it once into ``scratch`` (as a host-to-device
    copy reads it), release and unlink it (the worker's own mapping is closed here too)."""
    for key, (metadata, sent) in blocks.items():
        sent.shm.close()
        block = SharedMemoryArray.from_metadata(metadata)
        block.unlink_on_del()
        np.copyto(scratch[key], block)
        del block


def _shared_memory_ms(example: dict[str, np.ndarray], count: int) -> tuple[float, float]:
    """CPU ms per example of the worker's side and of the main process's side of the transfer."""
    scratch = {key: np.empty((1, *np.shape(value)), np.asarray(value).dtype) for key, value in example.items()}
    send = receive = 0.0
    for _ in range(count):
        start = time.process_time()
        blocks = _to_shared_memory(example)
        middle = time.process_time()
        _receive(blocks, scratch)
        send, receive = send + middle - start, receive + time.process_time() - middle
    return 1000 * send / count, 1000 * receive / count


def profile_stages(config, data_dir: pathlib.Path, count: int) -> dict[str, float]:
    """CPU ms per example of each stage (module docstring), single-threaded, in this process."""
    data = config.data
    source = sources.open_source(data_dir, grain_pipeline.SPLITS["train"][1])
    targets = np.unique(source.index[:, :2], axis=0).astype(np.int32)
    assemble = grain_pipeline.AssembleExample(
        source, targets, grain_pipeline.ExampleConfig.from_config(data), InputVariation.from_config(data)
    )
    rng = np.random.default_rng(0)
    example = assemble(0, rng)  # warm: files open, caches filled
    profiler = cProfile.Profile(time.process_time)  # CPU seconds, like every other number here
    start = time.process_time()
    profiler.enable()
    for i in range(count):
        example = assemble(i % len(targets), rng)
    profiler.disable()
    result = {"examples": count, "example_mb": sum(np.asarray(v).nbytes for v in example.values()) / 1e6}
    result["assembly (worker)"] = 1000 * (time.process_time() - start) / count
    cumulative = {key: row[3] for key, row in pstats.Stats(profiler).stats.items()}  # (file, line, name) -> seconds
    for stage, function in _ASSEMBLY_STAGES.items():
        code = (function.__code__.co_filename, function.__code__.co_firstlineno, function.__name__)
        result[f"  {stage}"] = 1000 * cumulative.get(code, 0.0) / count
    result["  touching fresh example arrays"] = _cpu_ms(lambda: [v.fill(0) for v in assemble.empty_example().values()], count)
    result["batch into private memory (0 workers)"] = _cpu_ms(lambda: {k: np.stack([v]) for k, v in example.items()}, count)
    send, receive = _shared_memory_ms(example, count)
    result["batch into shared memory (worker)"] = send
    result["shared memory open, read, release (main)"] = receive
    return result


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
    if PROFILE_EXAMPLES.value:
        results["profile_cpu_ms_per_example"] = profile_stages(config, data_dir, PROFILE_EXAMPLES.value)
        print(json.dumps(results["profile_cpu_ms_per_example"], indent=1), flush=True)
    results["pipeline"] = []
    for workers in WORKERS.value:
        results["pipeline"].append(time_pipeline(config, data_dir, int(workers)))
        print(json.dumps(results["pipeline"][-1]), flush=True)
    results["load_average_1min_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    run_app(main)
