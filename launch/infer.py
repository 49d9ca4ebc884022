"""Build an avatar from 1 to 4 photos and render it: ``.ply``, orbit stills and an animation video.

``avat3r-infer --bundle=bundles/synthetic --inputs=my_head --out=out/my_head`` (or ``python -m
launch.infer ...``). ``--inputs`` is a directory with ``inputs.json`` (format in
``avat3r_jax/export/inputs.py``). Writes into ``--out``:

- ``avatar.ply``: the Gaussians of the first animation frame (INRIA-3DGS layout, for splat viewers),
- ``orbit/orbit_XXX.png``: ``--orbit_views`` renders circling the head,
- ``animation.mp4``: one frame per expression code, seen from input camera ``--animation_view``,
- ``summary.json``: frame counts and timings.

A non-empty ``--out`` is refused unless ``--overwrite``, which first removes those four outputs of an
earlier run (other files stay). Every path ``inputs.json`` names must lie inside ``--inputs``.

The expression codes come from ``--expressions=seq.npy`` (``[T, D]``, one per frame) or, without it,
from the keyframe codes of ``inputs.json`` (``expressions``, or each view's ``expression``),
interpolated in a loop with ``--frames_per_keyframe`` frames between neighbours. The photos are
encoded once; each frame only runs the expression-dependent blocks, the head and the rasterizer.
"""

from __future__ import annotations

import json

import numpy as np
from absl import app, flags, logging

BUNDLE = flags.DEFINE_string("bundle", None, "Inference bundle directory (from avat3r-export).", required=True)
INPUTS = flags.DEFINE_string("inputs", None, "Input directory with inputs.json.", required=True)
OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
EXPRESSIONS = flags.DEFINE_string("expressions", None, ".npy of expression codes [T, D], one per animation frame.")
FRAMES_PER_KEYFRAME = flags.DEFINE_integer("frames_per_keyframe", 24, "Frames between consecutive keyframe codes of inputs.json.")
FPS = flags.DEFINE_float("fps", 24.0, "Frame rate of animation.mp4.")
ORBIT_VIEWS = flags.DEFINE_integer("orbit_views", 24, "Number of orbit renders.")
ORBIT_ELEVATION = flags.DEFINE_float("orbit_elevation", 10.0, "Elevation of the orbit cameras in degrees.")
RENDER_SIZE = flags.DEFINE_list("render_size", None, "Rendered image size 'H,W' (or one number for a square); default: the input size.")
ANIMATION_VIEW = flags.DEFINE_integer("animation_view", 0, "Input view whose camera films the animation.")
RENDER_BACKEND = flags.DEFINE_enum(
    "render_backend", None, ["auto", "pallas", "pallas_interpret", "xla", "reference"], "Rasterizer backend."
)
OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace the outputs of an earlier run in a non-empty --out.")
OUTPUTS = ("avatar.ply", "orbit", "animation.mp4", "summary.json")  # What this command writes into --out.
ATTENTION_IMPL = flags.DEFINE_enum(
    "attention_impl", None, ["xla", "cudnn", "pallas_tpu"], "Attention implementation (default: the bundle's)."
)


def parse_render_size(values: list[str] | None, default: tuple[int, int]) -> tuple[int, int]:
    if not values:
        return default
    try:
        sizes = [int(v) for v in values]
    except ValueError as error:
        raise ValueError(f"--render_size must be 'H,W' or one integer, got {values}") from error
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise ValueError(f"--render_size must be 'H,W' or one positive integer, got {values}")
    return (sizes[0], sizes[-1])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}")
    import jax

    from avat3r_jax.export import animate
    from avat3r_jax.export.bundle import BundleError, load_bundle
    from avat3r_jax.export.inputs import InputError, read_inputs
    from avat3r_jax.export.output_dir import OutputDirError, prepare_output_dir
    from avat3r_jax.export.ply import write_ply
    from avat3r_jax.export.runtime import InferenceModel
    from avat3r_jax.export.video import Mp4Writer, write_png
    from avat3r_jax.geometry import Cameras

    if not flags.FLAGS["verbosity"].present:  # JAX/Orbax INFO logs only on request
        logging.set_verbosity(logging.WARNING)
    try:
        bundle = load_bundle(BUNDLE.value)
        model = InferenceModel.from_bundle(bundle, model_attention_impl=ATTENTION_IMPL.value, render_backend=RENDER_BACKEND.value)
        inputs = read_inputs(INPUTS.value, model.settings)
        expressions = animate.expression_sequence(
            EXPRESSIONS.value, inputs.keyframes, FRAMES_PER_KEYFRAME.value, model.settings.expression_dim
        )
        input_size = (model.settings.image_height, model.settings.image_width)
        render_size = parse_render_size(RENDER_SIZE.value, input_size)
        if not 0 <= ANIMATION_VIEW.value < inputs.num_views:
            raise ValueError(f"--animation_view={ANIMATION_VIEW.value} but the inputs have {inputs.num_views} views")
        out = prepare_output_dir(OUT.value, OUTPUTS, OVERWRITE.value)  # Last: bad inputs clear nothing.
    except (BundleError, InputError, OutputDirError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    print(f"{inputs.num_views} input views, {len(expressions)} animation frames, rendering at {render_size[0]}x{render_size[1]}")

    encode_timer = animate.FrameTimer(warmup=0)
    context = encode_timer.time(model.encode, inputs.batch)
    gaussians = model.decode(context, expressions[:1])
    avatar = jax.tree.map(lambda leaf: leaf[0], gaussians)
    write_ply(out / "avatar.ply", avatar)

    K, world_to_cam = inputs.batch["K"][0], inputs.batch["world_to_cam"][0]  # [V, 3, 3], [V, 4, 4]
    orbit = animate.orbit_around(
        K, world_to_cam, animate.avatar_center(avatar.means), ORBIT_VIEWS.value, ORBIT_ELEVATION.value, input_size, render_size
    )
    for index in range(ORBIT_VIEWS.value):
        images = model.render(gaussians, orbit[index : index + 1][None], render_size).images  # [1, 1, H, W, 3]
        write_png(out / "orbit" / f"orbit_{index:03d}.png", np.asarray(images[0, 0]))

    view = ANIMATION_VIEW.value
    camera = Cameras(animate.render_intrinsics(K[view], input_size, render_size)[None, None], world_to_cam[view][None, None])
    frame_timer = animate.FrameTimer(warmup=1)
    with Mp4Writer(out / "animation.mp4", FPS.value) as writer:
        for code in expressions:
            images = frame_timer.time(lambda code: model.render(model.decode(context, code[None]), camera, render_size).images, code)
            writer.add(np.asarray(images[0, 0]))
    fps = 1.0 / frame_timer.median if frame_timer.seconds else None
    summary = {
        "views": inputs.num_views,
        "gaussians": int(avatar.count),
        "orbit_views": ORBIT_VIEWS.value,
        "animation_frames": writer.frames_written,
        "render_size": list(render_size),
        "encode_seconds_with_compile": encode_timer.seconds[0],
        "frame_seconds_median": frame_timer.median if frame_timer.seconds else None,
        "fps": fps,
        "device": str(jax.devices()[0].device_kind),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    rate = f"{fps:.1f} frames per second (decode + render, median after the first frame)" if fps else "too few frames to time"
    print(
        f"wrote {out}: avatar.ply ({avatar.count} Gaussians), {ORBIT_VIEWS.value} orbit views, {writer.frames_written}-frame animation.mp4"
    )
    print(f"animation: {rate}")


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
