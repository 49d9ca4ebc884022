"""avat3r-export and avat3r-infer end to end on a synthetic subject (subprocesses, as a user runs them)."""

import json

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
from safetensors.numpy import load_file

from avat3r_jax.checkpoint import Checkpointer
from avat3r_jax.export.inputs import write_inputs
from avat3r_jax.train import optimizer
from avat3r_jax.train.state import create_train_state
from configs.tiny import get_config
from data_pipelines import grain_pipeline, synthetic
from tests.cli import run_module
from tests.export.examples import random_params

plyfile = pytest.importorskip("plyfile")

INPUT_KEYS = ("images", "masks", "K", "world_to_cam", "posmaps", "posmap_valid", "features")


@pytest.fixture(scope="module")
def subject_and_run(tmp_path_factory):
    """A synthetic subject's input directory (the data pipeline's test split) and a run with one checkpoint."""
    root = tmp_path_factory.mktemp("cli")
    config = get_config()
    data_dir = synthetic.ensure_dataset(config.data, root / "data")
    batch = next(iter(grain_pipeline.make_dataset(config.data, data_dir, split="test", num_epochs=1)))
    # Input views of the first example; the animation interpolates the batch's expression codes.
    write_inputs(root / "inputs", {key: batch[key][0] for key in INPUT_KEYS}, keyframes=batch["expression"])
    _, params = random_params(config, np.random.default_rng(0))
    checkpointer = Checkpointer(root / "run" / "checkpoints", async_save=False)
    checkpointer.save(10, create_train_state(params, optimizer.make_optimizer(config.train, params), seed=0), config=config.to_dict())
    checkpointer.close()
    return root


def test_export_then_infer_writes_ply_orbit_and_video(subject_and_run):
    root = subject_and_run
    exported = run_module("launch.export", f"--workdir={root / 'run'}", f"--out={root / 'bundle'}", "--no_jax_export", "--to-pytorch")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "checkpoint step 10" in exported.stdout
    torch_weights = load_file(root / "bundle" / "pytorch" / "model.safetensors")
    assert torch_weights["tokenizer.patch_embed.weight"].shape == (64, 8 * 8 * 13)  # [out, in]: 8x8 patches of 13 channels
    assert torch_weights["blocks.1.self_attention.qkv.weight"].shape == (3 * 64, 64)

    inferred = run_module(
        "launch.infer",
        f"--bundle={root / 'bundle'}",
        f"--inputs={root / 'inputs'}",
        f"--out={root / 'out'}",
        "--frames_per_keyframe=2",
        "--orbit_views=3",
        "--render_size=40,48",
    )
    assert inferred.returncode == 0, inferred.stderr[-3000:]
    assert "frames per second" in inferred.stdout
    out = root / "out"

    vertex = plyfile.PlyData.read(str(out / "avatar.ply"))["vertex"]
    assert vertex.count == 2 * 32 * 32  # one Gaussian per input pixel of the 2 views
    names = [p.name for p in vertex.properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] and names[-8:-4] == [
        "opacity",
        "scale_0",
        "scale_1",
        "scale_2",
    ]

    orbit = sorted((out / "orbit").glob("*.png"))
    assert [p.name for p in orbit] == ["orbit_000.png", "orbit_001.png", "orbit_002.png"]
    images = [iio.imread(p) for p in orbit]
    assert all(image.shape == (40, 48, 3) for image in images)
    assert all(image.std() > 1 for image in images)  # the head is visible, not a blank background
    assert not np.array_equal(images[0], images[1])  # different viewpoints

    assert imageio_ffmpeg.count_frames_and_secs(str(out / "animation.mp4"))[0] == 4  # 2 keyframes x 2 frames
    summary = json.loads((out / "summary.json").read_text())
    assert summary["animation_frames"] == 4 and summary["views"] == 2 and summary["fps"] > 0


def test_infer_reports_bad_inputs_clearly(subject_and_run, tmp_path):
    root = subject_and_run
    if not (root / "bundle").exists():
        assert run_module("launch.export", f"--workdir={root / 'run'}", f"--out={root / 'bundle'}", "--no_jax_export").returncode == 0
    np.save(tmp_path / "seq.npy", np.zeros((5, 3), np.float32))
    result = run_module(
        "launch.infer",
        f"--bundle={root / 'bundle'}",
        f"--inputs={root / 'inputs'}",
        f"--out={tmp_path}",
        f"--expressions={tmp_path / 'seq.npy'}",
    )
    assert result.returncode != 0
    assert "error: --expressions" in result.stderr and "must hold codes [T, 8]" in result.stderr


def test_infer_refuses_a_non_empty_out_without_overwrite(subject_and_run, tmp_path):
    root = subject_and_run
    if not (root / "bundle").exists():
        assert run_module("launch.export", f"--workdir={root / 'run'}", f"--out={root / 'bundle'}", "--no_jax_export").returncode == 0
    (tmp_path / "orbit").mkdir()
    (tmp_path / "orbit" / "orbit_099.png").write_bytes(b"stale")
    result = run_module("launch.infer", f"--bundle={root / 'bundle'}", f"--inputs={root / 'inputs'}", f"--out={tmp_path}")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --out={tmp_path} is not empty; pass --overwrite to replace the outputs of an earlier run "
        "(avatar.ply, orbit, animation.mp4, summary.json)"
    ), result.stderr[-2000:]
    assert (tmp_path / "orbit" / "orbit_099.png").read_bytes() == b"stale"
