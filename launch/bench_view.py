"""Viewer latency: how long a slider move takes to become new splats (decode on the cached encode,
splat arrays, viser's scene update), with the config's model at its initial weights.

    python -m launch.bench_view --config=configs/synthetic.py --moves=20

Reports the encode time (once per avatar, with compilation), then the median and worst of
``--moves`` slider moves after one warm-up move; no browser is attached (the browser's own drawing
is not timed).
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
from absl import flags

from launch.config_cli import CONFIG, run_app

MOVES = flags.DEFINE_integer("moves", 20, "Timed slider moves.")
PORT = flags.DEFINE_integer("port", 8097, "Port of the (unwatched) viewer.")


def main(argv: list[str]) -> None:
    del argv
    import jax
    from flax import nnx

    from avat3r_jax.export.inputs import AvatarInputs
    from avat3r_jax.export.runtime import InferenceModel
    from avat3r_jax.export.viewer import AvatarViewer
    from avat3r_jax.model import Avat3r
    from launch.bench_train import random_batch

    config = CONFIG.value
    params = nnx.split(Avat3r(config, rngs=nnx.Rngs(config.seed)), nnx.Param)[1]
    model = InferenceModel(config, params)
    rng = np.random.default_rng(0)
    batch = {k: v for k, v in random_batch(config, 1, rng).items() if k in model.settings.model_input_keys}
    keyframes = rng.normal(size=(4, model.settings.expression_dim)).astype(np.float32)
    start = time.perf_counter()
    viewer = AvatarViewer(model, AvatarInputs(batch, keyframes, []), keyframes, port=PORT.value)
    open_seconds = time.perf_counter() - start
    try:
        moves = []
        for index in range(MOVES.value + 1):
            slider = viewer.sliders[index % len(viewer.sliders)]
            start = time.perf_counter()
            slider.value = float(slider.max if index % 2 else slider.min)  # as a browser move does: on_update -> decode
            viewer.wait_idle()
            moves.append(time.perf_counter() - start)
    finally:
        viewer.close()
    timed = moves[1:]
    result = {
        "device": jax.devices()[0].device_kind,
        "gaussians": int(model.settings.num_views * model.settings.image_height * model.settings.image_width),
        "open_seconds_with_compile": round(open_seconds, 2),
        "move_ms_median": round(1e3 * statistics.median(timed), 1),
        "move_ms_max": round(1e3 * max(timed), 1),
        "moves": len(timed),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    run_app(main)
