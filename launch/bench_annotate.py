"""Annotate throughput: views/s of ``launch.annotate.Annotator`` (known-camera DUSt3R point maps + Sapiens features).

    python -m launch.bench_annotate --dust3r=released --sapiens=2b --views=8 --height=1024 --width=672 --frames=3

Random weights (one buffer of normal(0, 0.02) values tiled over the parameters), frames of ``--views`` random images with a dome of
cameras, a random orthonormal feature projection; the first frame (compilation) is timed apart, then
``--frames`` frames. Prints JSON: views/s and what ``256 x 1000 x 80`` views (an Ava-256-sized dataset)
would take on one device. On a CPU, ``--dust3r=tiny --sapiens=tiny --height=64 --width=48
--dust3r_long_side=64 --sapiens_long_side=64 --alignment_iterations=5`` is a smoke test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avat3r_jax.frontend import features
from avat3r_jax.frontend.dust3r import Dust3r, Dust3rSettings
from avat3r_jax.frontend.sapiens import Sapiens, SapiensSettings
from avat3r_jax.geometry import look_at
from data_pipelines import image_codec, schema
from launch import annotate_frames as annotate

AVA256_VIEWS = 256 * 1000 * 80  # subjects x frames x cameras, as docs/PERFORMANCE.md's storage estimate


def random_model(cls, settings, seed: int = 0):
    """The module with parameters tiled from one buffer of a million normal(0, 0.02) values (fast at 2B parameters)."""
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: cls(settings, rngs=nnx.Rngs(0))))
    buffer = 0.02 * np.random.default_rng(seed).standard_normal(1 << 20, np.float32)
    return nnx.merge(graphdef, jax.tree.map(lambda leaf: jnp.asarray(np.resize(buffer, leaf.shape)), abstract))


def random_frame(rng: np.random.Generator, frame: int, views: int, height: int, width: int) -> list[schema.ViewRecord]:
    yaw = np.deg2rad(np.linspace(-60.0, 60.0, views))
    eye = np.stack([np.sin(yaw), np.full(views, 0.1), np.cos(yaw)], -1).astype(np.float32)
    world_to_cam = np.asarray(look_at(eye, np.zeros_like(eye)))  # a ring of cameras 1 m from the head
    K = np.array([[3.0 * width, 0, width / 2], [0, 3.0 * width, height / 2], [0, 0, 1]], np.float32)
    return [
        schema.ViewRecord(
            subject=0,
            frame=frame,
            camera=c,
            image=image_codec.encode_png(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)),
            K=K,
            world_to_cam=world_to_cam[c],
            expression=np.zeros(8, np.float32),
        )
        for c in range(views)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dust3r", choices=("released", "tiny"), default="released")
    parser.add_argument("--sapiens", choices=("0.3b", "0.6b", "1b", "2b", "tiny"), default="2b")
    parser.add_argument("--views", type=int, default=8, help="cameras per frame")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=672)
    parser.add_argument("--frames", type=int, default=3, help="timed frames after the first")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--feature_channels", type=int, default=64)
    parser.add_argument("--dust3r_long_side", type=int, default=512)
    parser.add_argument("--sapiens_long_side", type=int, default=1024)
    parser.add_argument("--alignment_iterations", type=int, default=300)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()

    flash = "cudnn" if jax.default_backend() == "gpu" and args.dtype == "bfloat16" else "xla"
    dtype = jnp.dtype(args.dtype)
    dust3r_settings = Dust3rSettings.released_512_dpt() if args.dust3r == "released" else Dust3rSettings.tiny()
    dust3r = random_model(Dust3r, dataclasses.replace(dust3r_settings, dtype=dtype, attention_impl=flash))
    sapiens_settings = SapiensSettings.tiny() if args.sapiens == "tiny" else SapiensSettings.released(args.sapiens)
    sapiens = random_model(Sapiens, dataclasses.replace(sapiens_settings, dtype_name=args.dtype, attention_impl=flash).validated())
    width = sapiens.settings.width
    rng = np.random.default_rng(0)
    components = np.linalg.qr(rng.normal(size=(width, args.feature_channels)))[0].astype(np.float32)
    projection = features.FeatureProjection(np.zeros(width, np.float32), components, np.ones(args.feature_channels, np.float32), 0.0, {})
    settings = annotate.AnnotateSettings(
        feature_channels=args.feature_channels,
        dust3r_long_side=args.dust3r_long_side,
        sapiens_long_side=args.sapiens_long_side,
        alignment_iterations=args.alignment_iterations,
    )
    print(f"models ready: DUSt3R {args.dust3r}, Sapiens {args.sapiens}, {args.dtype}", flush=True)
    annotator = annotate.Annotator(dust3r, sapiens, projection, settings, jax.local_devices()[:1])
    frames = [random_frame(rng, f, args.views, args.height, args.width) for f in range(args.frames + 1)]
    start = time.perf_counter()
    annotator(frames[0], 0)
    first = time.perf_counter() - start
    print(f"first frame (compilation included): {first:.1f} s", flush=True)
    start = time.perf_counter()
    for frame in frames[1:]:
        annotator(frame, 0)
    seconds = time.perf_counter() - start
    views_per_second = args.frames * args.views / seconds
    result = {
        "device": jax.devices()[0].device_kind,
        "dust3r": args.dust3r,
        "sapiens": args.sapiens,
        "dtype": args.dtype,
        "image": [args.height, args.width],
        "views_per_frame": args.views,
        "alignment_iterations": args.alignment_iterations,
        "first_frame_s": first,
        "seconds_per_frame": seconds / args.frames,
        "views_per_s": views_per_second,
        "ava256_sized_views": AVA256_VIEWS,
        "ava256_sized_device_days": AVA256_VIEWS / views_per_second / 86400,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
