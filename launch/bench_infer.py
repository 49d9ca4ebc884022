"""Animation benchmark: time per new expression code, from the cached context to one rendered image.

``python -m launch.bench_infer --config=configs/paper.py`` builds one avatar from a procedural
synthetic head (the data pipeline's generator, rendered at the config's input size: images,
position maps, part-label features), encodes it once, then for each of ``--frames`` new expression
codes times, with ``block_until_ready`` after each part, ``decode`` (the expression-dependent
blocks and the Gaussian head, from the cached context) and ``render`` (rasterize one
``--render_size`` image from the first input camera). The frame time is their sum (the frame rate
is its inverse), as ``avat3r-infer`` runs them; medians over the frames after ``--warmup``.

The model has its initial (untrained) weights, which place one pixel-sized Gaussian at every input
pixel's position-map point, the layout a trained model keeps. ``--config.*`` overrides any field
(e.g. ``--config.model.cross_attn_from_layer=4`` to cache a prefix; ``--cross_attn_from_layers=0,2,4,6``
measures several in one process, sharing the avatar and the rasterizer's compilation). On a CPU:
``--config=configs/tiny.py --frames=3``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics

import numpy as np
from absl import flags, logging

from launch.config_cli import CONFIG, run_app

FRAMES = flags.DEFINE_integer("frames", 50, "Timed frames (each with a new expression code).")
WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed frames first (compilation, caches).")
RENDER_SIZE = flags.DEFINE_integer("render_size", 512, "Rendered image height and width.")
SEED = flags.DEFINE_integer("seed", 0, "Seed of the weights and of the synthetic subject.")
JSON_PATH = flags.DEFINE_string("json", None, "Also write the numbers to this JSON file (a list for several --cross_attn_from_layers).")
LAYERS = flags.DEFINE_list(
    "cross_attn_from_layers",
    None,
    "model.cross_attn_from_layer values to measure in turn on one avatar (default: the config's).",
)


def synthetic_example(config, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One synthetic subject seen by ``data.num_input_views`` cameras -> (batch with B=1, its expression codes ``[F, D]``)."""
    import jax.numpy as jnp

    from data_pipelines import image_codec
    from data_pipelines.synthetic import dataset, render

    if config.data.image_height != config.data.image_width:
        raise ValueError("the synthetic generator renders square images: set data.image_height == data.image_width")
    spec = dataclasses.replace(
        dataset.SyntheticSpec.from_config(config.data),
        cameras=config.data.num_input_views,
        resolution=config.data.image_height,
        seed=seed,
    )
    subject = dataset.sample_subject(spec, 0)
    views = render.render_views(
        subject.identity,
        jnp.asarray(subject.expressions[0]),
        subject.K,
        subject.world_to_cam,
        jnp.ones(3),
        height=spec.resolution,
        width=spec.resolution,
        steps=spec.render_steps,
    )
    records = dataset.view_records(spec, 0, 0, subject, views)
    stack = lambda values: np.stack(values)[None].astype(np.float32)
    batch = {
        "images": stack([image_codec.decode_rgb(r.image) / 255.0 for r in records]),
        "K": stack([r.K for r in records]),
        "world_to_cam": stack([r.world_to_cam for r in records]),
        "posmaps": stack([r.posmap for r in records]),
        "posmap_valid": stack([r.posmap_confidence[..., None] >= 0.5 for r in records]),
        "features": stack([r.features for r in records]),
    }
    codes = dataset.expression_code(subject.expressions, dataset.expression_code_map(spec))
    return batch, codes


def median_ms(seconds: list[float]) -> float:
    return 1e3 * statistics.median(seconds)


def measure(config, batch: dict[str, np.ndarray], codes: np.ndarray) -> dict:
    """Encode once, then time decode + render for each of ``--warmup + --frames`` new codes -> the numbers."""
    import jax
    from flax import nnx

    from avat3r_jax.export.animate import FrameTimer, render_intrinsics
    from avat3r_jax.export.runtime import InferenceModel
    from avat3r_jax.geometry import Cameras
    from avat3r_jax.model import Avat3r
    from avat3r_jax.render import resolve_backend

    params = jax.jit(lambda: nnx.split(Avat3r(config, rngs=nnx.Rngs(SEED.value)), nnx.Param)[1])()
    model = InferenceModel(config, params)
    rng = np.random.default_rng(SEED.value)
    total = WARMUP.value + FRAMES.value
    # New codes every frame: the subject's trajectory, each jittered so that no two frames repeat.
    expressions = codes[np.arange(total) % len(codes)] + rng.normal(scale=0.05, size=(total, codes.shape[1])).astype(np.float32)

    encode = FrameTimer(warmup=1)
    for _ in range(3):
        context = encode.time(model.encode, batch)
    s = model.settings
    size = (RENDER_SIZE.value, RENDER_SIZE.value)
    K = render_intrinsics(batch["K"][0, 0], (s.image_height, s.image_width), size)
    camera = Cameras(K[None, None], batch["world_to_cam"][:, :1])

    decode, render = FrameTimer(WARMUP.value), FrameTimer(WARMUP.value)
    for code in expressions:
        gaussians = decode.time(model.decode, context, code[None])
        render.time(lambda g: model.render(g, camera, size).images, gaussians)
    frame_seconds = [d + r for d, r in zip(decode.seconds, render.seconds)]

    device = jax.devices()[0]
    return {
        "device": f"{device.platform}: {device.device_kind}",
        "jax": jax.__version__,
        "config": {
            "views": s.num_views,
            "input_size": [s.image_height, s.image_width],
            "patch_size": s.patch_size,
            "width": s.width,
            "depth": s.depth,
            "cross_attn_from_layer": s.cross_attn_from_layer,
            "dtype": s.dtype_name,
            "attention_impl": s.attention_impl,
            "render_backend": resolve_backend(config.render.backend),
        },
        "gaussians": int(gaussians.count),
        "render_size": list(size),
        "frames": FRAMES.value,
        "encode_ms": median_ms(encode.seconds),
        "frame_ms": median_ms(frame_seconds),
        "fps": 1e3 / median_ms(frame_seconds),
        "decode_ms": median_ms(decode.seconds),
        "render_ms": median_ms(render.seconds),
    }


def report(result: dict) -> None:
    c, size = result["config"], result["render_size"]
    print(f"device: {result['device']} (jax {result['jax']})")
    print(
        f"model: {c['views']} views {c['input_size'][0]}x{c['input_size'][1]}, patch {c['patch_size']}, width {c['width']}, "
        f"depth {c['depth']} (cross-attention from block {c['cross_attn_from_layer']}), {c['dtype']}, attention {c['attention_impl']}, "
        f"rasterizer {c['render_backend']}; {result['gaussians']:,} Gaussians"
    )
    print(f"encode (once per avatar): {result['encode_ms']:.2f} ms")
    print(f"per new expression code, median of {result['frames']} frames after {WARMUP.value} warm-up, render {size[0]}x{size[1]}:")
    print(f"  decode + render: {result['frame_ms']:.2f} ms -> {result['fps']:.1f} fps")
    print(f"  split: decode {result['decode_ms']:.2f} ms, render {result['render_ms']:.2f} ms")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    import jax

    config = CONFIG.value
    layers = [int(layer) for layer in LAYERS.value] if LAYERS.value else [config.model.cross_attn_from_layer]
    bad = [layer for layer in layers if not 0 <= layer < config.model.depth]
    if bad:
        raise SystemExit(f"error: --cross_attn_from_layers {bad} outside [0, model.depth={config.model.depth})")
    jax.config.update("jax_default_prng_impl", "rbg")  # random weights only: faster to compile than threefry
    batch, codes = synthetic_example(config, SEED.value)  # one avatar's inputs for every configuration
    results = []
    for layer in layers:
        layer_config = copy.deepcopy(config)
        layer_config.model.cross_attn_from_layer = layer
        results.append(measure(layer_config, batch, codes))
        report(results[-1])
        if JSON_PATH.value:  # rewritten after each configuration, so a stopped run keeps the finished ones
            with open(JSON_PATH.value, "w") as file:
                json.dump(results[0] if len(layers) == 1 else results, file, indent=2)


def run() -> None:
    flags.FLAGS.set_default("config", "configs/paper.py")
    run_app(main)


if __name__ == "__main__":
    run()
