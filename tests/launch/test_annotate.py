"""avat3r-data annotate: shards, camera groups, resuming after SIGKILL, device-count independence, trainer compatibility."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs.tiny import get_config
from data_pipelines import grain_pipeline, schema, sources, storage, synthetic
from data_pipelines.synthetic import rig
from launch import annotate, annotate_frames
from launch.data import build_parser
from tests.cli import REPO, run_module

FIXTURES = REPO / "tests" / "frontend" / "fixtures"
TINY = (
    f"--dust3r={FIXTURES / 'dust3r_tiny.safetensors'}",
    f"--sapiens={FIXTURES / 'sapiens_tiny.safetensors'}",
    "--dust3r-settings=tiny",
    "--sapiens-size=tiny",
    "--feature-channels=6",
    "--feature-size",
    "8",
    "8",
    "--dust3r-long-side=64",
    "--sapiens-long-side=64",
    "--alignment-iterations=5",
    "--frames-per-shard=1",
    "--projection-views=6",
    "--no-progress",
)


def records(directory) -> dict[str, list[bytes]]:
    return {split: [schema.serialize(r) for r in sources.open_source(directory, (split,))] for split in storage.STORED_SPLITS}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """12 frames of 4 views at 32x32 (3 subjects x 4 frames) and their uninterrupted annotation on one device."""
    root = tmp_path_factory.mktemp("annotate")
    spec = synthetic.SyntheticSpec(
        subjects=3, frames=4, cameras=4, resolution=32, expression_dim=8, feature_height=8, feature_width=8,
        val_subjects=1, test_subjects=1, heldout_frames=1, render_steps=24,
    )  # fmt: skip
    synthetic.generate(spec, root / "data", progress=False)
    result = run_module("launch.data", "annotate", f"--dataset={root / 'data'}", f"--out={root / 'reference'}", "--devices=1", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "12 of 12 shards on 1 devices" in result.stdout and "views/s" in result.stdout and "per view:" in result.stdout
    return root


def test_shards_cover_every_frame_once():
    index = np.array([[s, f, c] for s in range(2) for f in range(3) for c in range(2)], np.int32)
    assert annotate.frame_ranges(index) == [(i, i + 2) for i in range(0, 12, 2)]
    indices = {split: np.zeros((0, 3), np.int32) for split in storage.STORED_SPLITS} | {"train": index, "test": index[:4]}
    shards = annotate.plan_shards(indices, frames_per_shard=4)
    assert [(s.split, s.rows) for s in shards] == [("train", (0, 8)), ("train", (8, 12)), ("test", (0, 4))]
    assert [s.index for s in shards] == [0, 1, 2]
    with pytest.raises(annotate.AnnotateError, match="frames_per_shard"):
        annotate.plan_shards(indices, 0)


@pytest.mark.parametrize("cameras", [2, 3, 5, 8, 9, 80])
def test_camera_groups_make_every_camera_an_output_once(cameras):
    _, world_to_cam = rig.dome_cameras(np.random.default_rng(cameras), cameras, 32)
    groups = annotate_frames.camera_groups(world_to_cam)
    outputs = sorted(c for _, out in groups for c in out)
    assert outputs == list(range(cameras))
    for members, out in groups:
        assert 2 <= len(members) <= annotate_frames.MAX_GROUP and set(out) <= set(members) and len(set(members)) == len(members)
    with pytest.raises(annotate_frames.AnnotateError, match="at least 2 views"):
        annotate_frames.camera_groups(world_to_cam[:1])


def test_stored_confidence_keeps_the_trust_threshold():
    confidence = np.array([1.0, 1.5, np.exp(0.5), 2.0, 10.0, 3.0])
    valid = np.array([False, False, True, True, True, False])
    stored = annotate_frames.stored_confidence(confidence, valid)
    assert stored.dtype == np.float16
    np.testing.assert_array_equal(stored >= 0.5, valid)  # the data pipeline trusts points where stored >= 0.5
    assert stored[4] == 1.0 and 0.5 < stored[3] < 1.0


@pytest.mark.slow
def test_annotated_dataset_is_what_the_trainer_reads(dataset):
    original, annotated = records(dataset / "data"), records(dataset / "reference")
    assert {k: len(v) for k, v in original.items()} == {k: len(v) for k, v in annotated.items()}
    first = sources.open_source(dataset / "reference", ("train",))[0]
    source_first = sources.open_source(dataset / "data", ("train",))[0]
    assert first.image == source_first.image and np.array_equal(first.K, source_first.K)
    assert first.posmap.shape == (32, 32, 3) and first.features.shape == (8, 8, 6) and first.features.dtype == np.float16
    assert (dataset / "reference" / annotate.PROJECTION_FILE).is_file()
    assert storage.load_info(dataset / "reference").parameters["annotate"]["settings"]["feature_channels"] == 6
    batch = next(iter(grain_pipeline.make_dataset(get_config().data, dataset / "reference", split="train", num_epochs=1)))
    assert batch["features"].shape == (2, 2, 8, 8, 6) and np.isfinite(batch["features"]).all()
    assert 0 < batch["posmap_valid"].mean() < 1 and np.isfinite(batch["posmaps"]).all()


@pytest.mark.slow
def test_killed_on_one_device_then_resumed_on_two_gives_identical_records(dataset, tmp_path):
    """A SIGKILL between shards loses no finished shard; the restart skips them and, on two devices
    (one frame per device at a time, as eight would split them), writes the records of the
    uninterrupted one-device run. (Every device compiles the networks for itself: eight took minutes
    on a loaded 2-core machine.)"""
    out = tmp_path / "resumed"
    args = ["annotate", f"--dataset={dataset / 'data'}", f"--out={out}", *TINY]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "launch.data", *args, "--devices=1"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shards = out.with_name(f"{out.name}.partial") / annotate.SHARDS_DIR
    deadline = time.monotonic() + 240
    while process.poll() is None and not list(shards.glob("*.array_record")) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list(shards.glob("*.array_record")))
    # At least two frames (shards of one frame) are left, so both devices annotate some.
    assert 1 <= finished <= 10 and not out.exists(), (finished, process.stderr.read().decode()[-2000:])
    resumed = run_module("launch.data", *args, "--devices=2", timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "on 2 devices" in resumed.stdout and f"annotated {4 * (12 - finished)} views" in resumed.stdout, resumed.stdout
    assert records(out) == records(dataset / "reference")
    assert not out.with_name(f"{out.name}.partial").exists()


def test_bad_checkpoint_and_busy_out_are_one_line(dataset, tmp_path):
    out = tmp_path / "out"
    args = ["annotate", f"--dataset={dataset / 'data'}", f"--out={out}", *TINY]
    wrong = [a if not a.startswith("--dust3r=") else f"--dust3r={FIXTURES / 'sapiens_tiny.safetensors'}" for a in args]
    with pytest.raises(SystemExit, match=r"error: .*DUSt3R checkpoint"):
        annotate.run_command(build_parser().parse_args(wrong))
    assert not out.exists()
    out.mkdir()
    (out / "x").write_text("keep")
    with pytest.raises(SystemExit, match="exists and is not empty"):
        annotate.run_command(build_parser().parse_args(args))
    assert (out / "x").read_text() == "keep"
