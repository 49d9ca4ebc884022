"""Synthetic-head generation benchmark: subjects/minute, one frame per call vs batched calls.

    python -m launch.bench_synthetic --config=configs/synthetic_varied.py --config.data.synthetic.subjects=8 --baseline_subjects=2

On JAX's default device (a GPU when there is one), in one run, for the config's ``data.synthetic``
(sizes and variety): the sphere tracer called once per (subject, frame) with a host copy of each
result (what ``generate`` did before batching), then ``render_frames`` with each of ``--batches``
(default ``frames_per_call``) frames of consecutive subjects per jitted call, then the whole
``generate`` at the fastest of them (batched rendering, records, ArrayRecord files in a temporary
directory). Each is timed after one untimed call that compiles it. Prints a line per stage as it
ends, then one JSON line: subjects/minute of each and the ratio of the best batched to per-frame.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time

import jax
import jax.numpy as jnp
from absl import flags

from data_pipelines.synthetic import dataset, render
from launch.config_cli import CONFIG, run_app

BASELINE_SUBJECTS = flags.DEFINE_integer("baseline_subjects", 2, "Subjects of the per-frame timing.")
BATCHES = flags.DEFINE_list("batches", [], "Frames per call to time (default: dataset.frames_per_call); generate uses the fastest.")


def per_frame_seconds(spec: dataset.SyntheticSpec, subjects: range) -> float:
    """Seconds to render ``subjects`` one (subject, frame) per call, each result copied to the host."""
    start = time.perf_counter()
    for subject in subjects:
        sample = dataset.sample_subject(spec, subject)
        for frame in range(spec.frames):
            views = render.render_views(
                sample.identity,
                jnp.asarray(sample.expressions[frame]),
                sample.K,
                sample.world_to_cam,
                jnp.ones(3),
                height=spec.resolution,
                width=spec.resolution,
                steps=spec.render_steps,
            )
            jax.device_get(views)
    return time.perf_counter() - start


def batched_seconds(spec: dataset.SyntheticSpec, subjects: range, batch: int) -> float:
    """Seconds to render ``subjects`` ``batch`` frames per call (the last call padded), copied to the host."""
    items = [(s, f) for s in subjects for f in range(spec.frames)]
    start = time.perf_counter()
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        chunk = chunk + [chunk[-1]] * (batch - len(chunk))
        samples = {s: dataset.sample_subject(spec, s) for s in dict.fromkeys(s for s, _ in chunk)}
        jax.device_get(dataset.render_frames(spec, [samples[s] for s, _ in chunk], [f for _, f in chunk]))
    return time.perf_counter() - start


def generate_seconds(spec: dataset.SyntheticSpec, batch: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        dataset.generate(spec, out, progress=False, batch=batch)
        return time.perf_counter() - start


def main(argv: list[str]) -> None:
    del argv
    if CONFIG.value is None:
        raise SystemExit("error: --config=configs/X.py is required")
    spec = dataclasses.replace(dataset.SyntheticSpec.from_config(CONFIG.value.data), val_subjects=0, test_subjects=0)
    subjects, baseline_subjects = spec.subjects, BASELINE_SUBJECTS.value
    batches = [int(b) for b in BATCHES.value] or [dataset.frames_per_call(spec)]
    warm = dataclasses.replace(spec, subjects=1, frames=1)
    first_call, per_minute = {}, {}

    def stage(name: str, seconds: float, count: int) -> None:
        per_minute[name] = round(60.0 * count / seconds, 2)
        print(f"{name}: {per_minute[name]} subjects/minute ({count} subjects in {seconds:.2f} s)", flush=True)

    start = time.perf_counter()
    per_frame_seconds(warm, range(1))
    first_call["per_frame"] = round(time.perf_counter() - start, 2)
    stage("per_frame", per_frame_seconds(spec, range(baseline_subjects)), baseline_subjects)
    for batch in batches:
        start = time.perf_counter()
        batched_seconds(warm, range(1), batch)
        first_call[f"batch_{batch}"] = round(time.perf_counter() - start, 2)
        stage(f"batch_{batch}", batched_seconds(spec, range(subjects), batch), subjects)
    best = max(batches, key=lambda b: per_minute[f"batch_{b}"])
    stage(f"generate_batch_{best}", generate_seconds(spec, best), subjects)
    result = {
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "shape": {"frames": spec.frames, "cameras": spec.cameras, "resolution": spec.resolution, "render_steps": spec.render_steps},
        "variety": {k: getattr(spec, k) for k in dataset.VARIETY_OFF},
        "subjects": {"per_frame": baseline_subjects, "batched": subjects},
        "first_call_seconds": first_call,
        "subjects_per_minute": per_minute,
        "best_batched_over_per_frame": round(per_minute[f"batch_{best}"] / per_minute["per_frame"], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    run_app(main)
