"""From nothing to an avatar in one command: ``avat3r-quickstart --workdir=runs/quickstart``.

Generates the procedural head dataset, trains ``configs/synthetic.py`` (or ``--config``) within
``--minutes`` of wall time in all (``train.time_budget``: the schedule is fitted to the time left;
on a GPU the full schedule fits), exports an inference bundle, renders a held-out subject with
``avat3r-infer`` and ends by printing where everything is: ``avatar.ply``, an orbit video and GIF,
an animation video, the eval grid, and held-out-subject PSNR against the mean-colour baseline.
What it changes for a CPU, and for the bundle, is in ``launch/device_sizing.py``.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

from absl import flags, logging

from launch.config_cli import CONFIG, run_app
from launch.device_sizing import inference_config, sized_for_device

WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Run directory: data, checkpoints, bundle, renders.")
MINUTES = flags.DEFINE_float("minutes", 18.0, "Wall-clock budget of the whole command (generation, training, export, rendering).")
RENDER_SIZE = flags.DEFINE_integer("render_size", 128, "Size of the orbit and animation renders (square).")
ORBIT_VIEWS = flags.DEFINE_integer("orbit_views", 36, "Orbit frames.")

AFTER_TRAINING_SECONDS = 120.0  # Export, the held-out inputs and avat3r-infer (a new process that compiles again) on a 2-core CPU.
INPUT_KEYS = ("images", "masks", "K", "world_to_cam", "posmaps", "posmap_valid", "features")


def last_eval(workdir: pathlib.Path) -> dict[str, float]:
    """The newest ``eval/*`` record of ``metrics.jsonl`` (empty if the run never evaluated)."""
    record: dict[str, float] = {}
    path = workdir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        entry = json.loads(line)
        if any(key.startswith("eval/") for key in entry):
            record = entry
    return record


def write_heldout_inputs(config, data_dir: pathlib.Path, directory: pathlib.Path) -> pathlib.Path:
    """The first held-out (test split) subject's input views, keyframes from its batch's expression codes."""
    from avat3r_jax.export.inputs import write_inputs
    from data_pipelines import grain_pipeline

    batch = next(iter(grain_pipeline.make_dataset(config.data, data_dir, split="test", num_epochs=1)))
    return write_inputs(directory, {key: batch[key][0] for key in INPUT_KEYS}, keyframes=batch["expression"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}")
    start = time.monotonic()
    import jax

    from avat3r_jax.export import video
    from avat3r_jax.export.bundle import save_bundle
    from avat3r_jax.export.from_checkpoint import load_checkpoint_params
    from avat3r_jax.train.time_budget import train_within_budget
    from avat3r_jax.train.trainer import StopFlag
    from launch.train_data import grain_iterators, prepare_dataset

    workdir = pathlib.Path(WORKDIR.value)
    budget = 60.0 * MINUTES.value
    config, reason = sized_for_device(CONFIG.value, jax.default_backend())
    logging.info("quickstart: %s", reason)
    data_dir = prepare_dataset(config, workdir)
    logging.info("dataset ready in %s after %.0f s", data_dir, time.monotonic() - start)
    with config.unlocked():
        config.train.time_budget = max(budget - (time.monotonic() - start) - AFTER_TRAINING_SECONDS, 60.0)
    stop = StopFlag()
    stop.install()
    result, plan = train_within_budget(config, workdir, grain_iterators(config, data_dir), stop)
    if result.stopped_by_signal and stop:
        raise SystemExit(f"stopped at step {result.step}: run the same command again to resume")
    trained = time.monotonic()

    trained_config, params, step = load_checkpoint_params(workdir)
    bundle = workdir / "bundle"
    save_bundle(bundle, inference_config(trained_config), params, {}, source={"workdir": str(workdir.absolute()), "step": step})
    inputs = write_heldout_inputs(config, data_dir, workdir / "heldout_inputs")
    render = workdir / "avatar"
    command = [sys.executable, "-m", "launch.infer", f"--bundle={bundle}", f"--inputs={inputs}", f"--out={render}", "--overwrite"]
    command += [f"--render_size={RENDER_SIZE.value}", f"--orbit_views={ORBIT_VIEWS.value}", "--frames_per_keyframe=12"]
    subprocess.run(command, check=True)
    frames = video.write_orbit_videos(render / "orbit", render / "orbit.mp4", render / "orbit.gif")

    scores = last_eval(workdir)
    grids = sorted((workdir / "eval").glob("val_subjects_step*.png"))
    psnr, baseline = scores.get("eval/val_subjects/psnr"), scores.get("eval/val_subjects/mean_color_psnr")
    minutes = (time.monotonic() - start) / 60.0
    print(f"\nquickstart done in {minutes:.1f} min ({plan.num_steps} steps; {plan.reason}; rendering {(time.monotonic() - trained):.0f} s)")
    print(f"  avatar (INRIA 3DGS .ply):  {render / 'avatar.ply'}")
    print(f"  orbit video / GIF:         {render / 'orbit.mp4'}  {render / 'orbit.gif'}  ({frames} frames)")
    print(f"  animation video:           {render / 'animation.mp4'}")
    print(f"  eval grid (held-out):      {grids[-1] if grids else 'none (the run did not reach its evaluation)'}")
    if psnr is not None:
        gain = psnr - baseline
        print(f"  held-out subjects PSNR {psnr:.2f} dB at step {scores['step']} (mean-colour baseline {baseline:.2f} dB, {gain:+.1f} dB)")
    print(f"  look at it live:           avat3r-view --bundle={bundle} --inputs={inputs}")


def run() -> None:
    flags.FLAGS.set_default("config", "configs/synthetic.py")
    run_app(main)


if __name__ == "__main__":
    run()
