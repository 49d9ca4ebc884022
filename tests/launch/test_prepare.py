"""avat3r-prepare on rendered synthetic photos: an input directory avat3r-infer accepts; bad inputs are one line each."""

import json
import shutil

import imageio.v3 as iio
import numpy as np
import pytest

from avat3r_jax.export.bundle import save_bundle
from avat3r_jax.export.inputs import read_inputs
from avat3r_jax.export.params import flatten_params
from avat3r_jax.model import ModelSettings
from configs.tiny import get_config
from data_pipelines import image_codec
from tests.cli import REPO, run_module
from tests.export.examples import random_params
from tests.frontend.synthetic_photos import shoot

FIXTURES = REPO / "tests" / "frontend" / "fixtures"
DUST3R = FIXTURES / "dust3r_tiny.safetensors"
SAPIENS = FIXTURES / "sapiens_tiny.safetensors"
TINY = (
    "--config=configs/tiny.py",
    "--dust3r_settings=tiny",
    "--sapiens_size=tiny",
    "--dust3r_long_side=64",
    "--sapiens_long_side=64",
    "--alignment_iterations=10",
)
VIEWS = (1, 2)  # of shoot(): the two middle cameras (yaw about -20 and +20 degrees); the tiny model takes 2 views


def prepare(photos, out, *extra, dust3r=DUST3R, sapiens=SAPIENS):
    return run_module("launch.prepare", f"--photos={photos}", f"--out={out}", f"--dust3r={dust3r}", f"--sapiens={sapiens}", *TINY, *extra)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """Two RGBA photos of a procedural head and their true cameras (cameras.json, keyed by file name)."""
    root = tmp_path_factory.mktemp("prepare")
    photos, truth = root / "photos", shoot()
    photos.mkdir()
    cameras = {}
    for view in VIEWS:
        rgba = np.concatenate([truth.images[view], truth.alpha[view][..., None]], -1)
        iio.imwrite(photos / f"photo{view}.png", image_codec.to_uint8(rgba))
        cameras[f"photo{view}.png"] = {"K": truth.K[view].tolist(), "world_to_cam": truth.world_to_cam[view].tolist()}
    (root / "cameras.json").write_text(json.dumps(cameras))
    return root


def assert_one_error_line(result, *fragments):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr[-2000:]
    assert all(fragment in lines[-1] for fragment in fragments), lines[-1]


def assert_nothing_written(out):
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


@pytest.mark.slow
def test_prepare_then_infer_end_to_end(photo_dir, tmp_path):
    out = tmp_path / "inputs"
    result = prepare(photo_dir / "photos", out, f"--cameras={photo_dir / 'cameras.json'}")
    assert result.returncode == 0, result.stderr[-3000:]
    stages = ("photos: 2", "point maps: DUSt3R on 2 image pairs", "known-camera alignment", "head frame", "crops: 2 views at 32x32")
    for stage in (*stages, "features:"):
        assert stage in result.stdout, result.stdout
    assert "warning: no --feature_projection given" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "contact_sheet.png",
        "inputs.json",
        "prepare.json",
        *sorted(f"view{i}{end}" for i in range(2) for end in ("_features.npy", "_mask.png", "_posmap.npy", "_posmap_valid.npy", ".png")),
    ]
    config = get_config()
    inputs = read_inputs(out, ModelSettings.from_config(config))
    batch = inputs.batch
    assert batch["images"].shape == (1, 2, 32, 32, 3) and batch["features"].shape == (1, 2, 8, 8, 6)
    # The given cameras were the training rig's: the head frame keeps them (within the rig's jitter).
    truth = shoot()
    for index, view in enumerate(VIEWS):
        centre = -batch["world_to_cam"][0, index, :3, :3].T @ batch["world_to_cam"][0, index, :3, 3]
        true_centre = -truth.world_to_cam[view, :3, :3].T @ truth.world_to_cam[view, :3, 3]
        assert np.linalg.norm(centre - true_centre) < 0.1
    # The crops hold the head as the training views do: most of the alpha mask is kept, centred.
    masks = batch["masks"][0, ..., 0]
    assert 0.5 < masks.mean() / truth.alpha[list(VIEWS)].mean() < 1.5
    sheet = iio.imread(out / "contact_sheet.png")
    assert sheet.shape == (2 * (32 + 2), 4 * (32 + 2), 3)
    summary = json.loads((out / "prepare.json").read_text())
    assert summary["cameras"] == "given (--cameras)" and summary["feature_projection"]["fitted_on_these_photos"]

    config = get_config()
    _, params = random_params(config, np.random.default_rng(0))
    save_bundle(tmp_path / "bundle", config, flatten_params(params), {}, source={"test": "random params"})
    np.save(tmp_path / "codes.npy", np.zeros((2, config.data.expression_dim), np.float32))
    inferred = run_module(
        "launch.infer",
        f"--bundle={tmp_path / 'bundle'}",
        f"--inputs={out}",
        f"--out={tmp_path / 'avatar'}",
        f"--expressions={tmp_path / 'codes.npy'}",
        "--orbit_views=2",
    )
    assert inferred.returncode == 0, inferred.stderr[-3000:]
    assert (tmp_path / "avatar" / "avatar.ply").is_file() and (tmp_path / "avatar" / "animation.mp4").is_file()


@pytest.mark.slow
def test_one_photo_gets_cameras_from_dust3r(photo_dir, tmp_path):
    photos = tmp_path / "one"
    photos.mkdir()
    shutil.copy(photo_dir / "photos" / "photo1.png", photos / "photo1.png")
    out = tmp_path / "inputs"
    result = prepare(photos, out, f"--feature_projection={tmp_path / 'missing.npz'}")
    assert_one_error_line(result, "no feature projection file at")
    assert_nothing_written(out)
    result = prepare(photos, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "global alignment" in result.stdout and "centre from the points" in result.stdout
    assert len(json.loads((out / "inputs.json").read_text())["views"]) == 1


@pytest.mark.parametrize("count", [0, 5])
def test_wrong_photo_count(photo_dir, tmp_path, count):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(count):
        shutil.copy(photo_dir / "photos" / "photo1.png", photos / f"p{i}.png")
    out = tmp_path / "inputs"
    assert_one_error_line(prepare(photos, out), f"holds {count} photos", "give 1 to 4")
    assert_nothing_written(out)


def test_unreadable_photo(photo_dir, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(photo_dir / "photos", photos)
    (photos / "photo3.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "inputs"
    assert_one_error_line(prepare(photos, out), "photo3.jpg cannot be read as an image")
    assert_nothing_written(out)


def test_checkpoint_of_another_model(photo_dir, tmp_path):
    out = tmp_path / "inputs"
    assert_one_error_line(prepare(photo_dir / "photos", out, dust3r=SAPIENS), "DUSt3R checkpoint", "missing")
    assert_nothing_written(out)


def test_truncated_checkpoint(photo_dir, tmp_path):
    truncated = tmp_path / "sapiens.safetensors"
    truncated.write_bytes(SAPIENS.read_bytes()[: SAPIENS.stat().st_size // 2])
    out = tmp_path / "inputs"
    assert_one_error_line(prepare(photo_dir / "photos", out, sapiens=truncated), str(truncated))
    assert_nothing_written(out)


def test_non_empty_out_is_refused(photo_dir, tmp_path):
    out = tmp_path / "inputs"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_one_error_line(prepare(photo_dir / "photos", out), "exists and is not an empty directory")
    assert (out / "keep.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
