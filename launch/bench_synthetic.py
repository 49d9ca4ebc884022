"""Synthetic-head generation benchmark: subjects/minute, one frame per call vs batched calls.

    python -m launch.bench_synthetic --subjects=8 --baseline_subjects=2 [--plain] [--resolution=64 --frames=8 --cameras=8]

On JAX's default device (a GPU when there is one), in one run: the sphere tracer called once per
(subject, frame) with a host copy of each result (what ``generate`` did before batching), then
``render_frames`` with ``frames_per_call`` frames of consecutive subjects per jitted call, then the
whole ``generate`` (batched rendering, records, ArrayRecord files in a temporary directory). Each
is timed after one untimed call that compiles it. Prints one JSON line; subjects/minute of each and
the ratio batched / per-frame. The variety of issue 22 (hair styles, dyed hair, glasses, head
shapes, beards, lighting) is on unless ``--plain``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

import jax
import jax.numpy as jnp

from data_pipelines.synthetic import dataset, render

VARIETY = {
    "beard_prob": 0.3,
    "lighting_jitter": 0.5,
    "hair_style_prob": 0.8,
    "dyed_hair_prob": 0.15,
    "glasses_prob": 0.3,
    "head_shape_jitter": 1.0,
}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=8, help="subjects of the batched and generate timings")
    parser.add_argument("--baseline_subjects", type=int, default=2, help="subjects of the per-frame timing")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=None, help="frames per call (default: dataset.frames_per_call)")
    parser.add_argument("--plain", action="store_true", help="without the variety")
    args = parser.parse_args()
    spec = dataset.SyntheticSpec(
        subjects=args.subjects,
        frames=args.frames,
        cameras=args.cameras,
        resolution=args.resolution,
        val_subjects=0,
        test_subjects=0,
        **({} if args.plain else VARIETY),
    )
    batch = args.batch or dataset.frames_per_call(spec)
    warm = dataclasses.replace(spec, subjects=1, frames=1)
    start = time.perf_counter()
    per_frame_seconds(warm, range(1))
    compile_per_frame = time.perf_counter() - start
    start = time.perf_counter()
    batched_seconds(warm, range(1), batch)
    compile_batched = time.perf_counter() - start
    baseline = per_frame_seconds(spec, range(args.baseline_subjects))
    batched = batched_seconds(spec, range(args.subjects), batch)
    generated = generate_seconds(spec, batch)
    per_minute = {
        "per_frame": 60.0 * args.baseline_subjects / baseline,
        "batched_render": 60.0 * args.subjects / batched,
        "generate": 60.0 * args.subjects / generated,
    }
    result = {
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "shape": {"frames": spec.frames, "cameras": spec.cameras, "resolution": spec.resolution, "render_steps": spec.render_steps},
        "variety": not args.plain,
        "frames_per_call": batch,
        "subjects": {"per_frame": args.baseline_subjects, "batched": args.subjects},
        "first_call_seconds": {"per_frame": round(compile_per_frame, 2), "batched": round(compile_batched, 2)},
        "subjects_per_minute": {k: round(v, 2) for k, v in per_minute.items()},
        "batched_over_per_frame": round(per_minute["batched_render"] / per_minute["per_frame"], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
