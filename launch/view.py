"""Look at an avatar live in the browser: ``avat3r-view --bundle=bundles/synthetic --inputs=my_head``.

Opens a viser server (default http://127.0.0.1:8080) showing the avatar's Gaussian splats, one
slider per expression dimension and keyframe playback (the ``expressions`` keyframes of
``inputs.json``, or ``--expressions=seq.npy``). The photos are encoded once; a slider move decodes
only the expression-dependent blocks. Needs ``pip install -e .[view]``. Ctrl-C stops it.
"""

from __future__ import annotations

import time

from absl import app, flags, logging

BUNDLE = flags.DEFINE_string("bundle", None, "Inference bundle directory (from avat3r-export).", required=True)
INPUTS = flags.DEFINE_string("inputs", None, "Input directory with inputs.json.", required=True)
EXPRESSIONS = flags.DEFINE_string("expressions", None, ".npy of keyframe expression codes [K, D] (default: inputs.json's).")
HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to serve on (0.0.0.0 for other machines).")
PORT = flags.DEFINE_integer("port", 8080, "Port to serve on.")
FRAMES_PER_KEYFRAME = flags.DEFINE_integer("frames_per_keyframe", 12, "Playback frames between consecutive keyframes.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}")
    try:
        import viser  # noqa: F401
    except ImportError:
        raise SystemExit("error: avat3r-view needs viser: pip install -e .[view]") from None
    import numpy as np

    from avat3r_jax.export import animate
    from avat3r_jax.export.bundle import BundleError, load_bundle
    from avat3r_jax.export.inputs import InputError, read_inputs
    from avat3r_jax.export.runtime import InferenceModel
    from avat3r_jax.export.viewer import AvatarViewer

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        bundle = load_bundle(BUNDLE.value)
        model = InferenceModel.from_bundle(bundle)
        inputs = read_inputs(INPUTS.value, model.settings)
        keyframes = animate.expression_sequence(EXPRESSIONS.value, inputs.keyframes, 1, model.settings.expression_dim)
    except (BundleError, InputError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    viewer = AvatarViewer(
        model, inputs, np.asarray(keyframes), host=HOST.value, port=PORT.value, frames_per_keyframe=FRAMES_PER_KEYFRAME.value
    )
    print(f"avatar viewer at {viewer.url} ({len(viewer.sliders)} expression sliders, {len(viewer.keyframes)} keyframes); Ctrl-C stops")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.close()


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
