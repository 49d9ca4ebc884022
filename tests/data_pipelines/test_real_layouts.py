"""Converters of the Ava-256 and NeRSemble layouts, on tiny trees built in those layouts."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from avat3r_jax import geometry
from data_pipelines import grain_pipeline, image_codec, storage
from data_pipelines.real import ava256, nersemble
from launch import data as data_cli
from tests.data_pipelines import layout_fixtures


@pytest.fixture(scope="module")
def ava_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ava256")
    return root, layout_fixtures.write_ava256(root, np.random.default_rng(0))


@pytest.fixture(scope="module")
def nersemble_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("nersemble")
    return root, layout_fixtures.write_nersemble(root, np.random.default_rng(1))


def all_records(data_dir):
    source = storage.open_source(data_dir, storage.STORED_SPLITS)
    return [source[i] for i in range(len(source))]


def assert_posmaps_project_onto_pixels(record, atol_px: float):
    """The converted position map, through the converted camera, lands on the stored pixel centres."""
    height, width = image_codec.image_size(record.image)
    assert record.posmap.shape == (height, width, 3)
    uv, depth = geometry.project_points(
        jnp.asarray(record.K), jnp.asarray(record.world_to_cam), jnp.asarray(record.posmap.reshape(-1, 3).astype(np.float32))
    )
    centers = np.asarray(geometry.pixel_grid(height, width)).reshape(-1, 2)
    assert np.abs(np.asarray(uv) - centers).max() < atol_px
    return np.asarray(depth)


def assert_camera_pose(record, truth, key):
    """Camera centre and viewing axis against the fixture's (head pose inverted, units scaled)."""
    center = np.asarray(geometry.camera_centers(jnp.asarray(record.world_to_cam)))
    np.testing.assert_allclose(center, truth.center[key], atol=1e-5)
    np.testing.assert_allclose(record.world_to_cam[2, :3], truth.forward[key], atol=1e-5)  # row 2 of R: the optical axis


def test_ava256_conversion(ava_tree, tmp_path):
    root, truth = ava_tree
    info = ava256.convert(root, tmp_path / "out", val_subjects=1, heldout_frames=1, progress=False)
    assert info.source == "ava256" and info.camera_names == sorted(layout_fixtures.AVA_CAMERAS)
    assert info.expression_dim == 6 and info.feature_channels == 5
    counts = {split: info.splits[split]["num_records"] for split in storage.STORED_SPLITS}
    # capture 1: 3 frames (2 train, 1 held out); capture 2 (validation identity): 2 frames with codes.
    assert counts == {"train": 6, "val_expressions": 3, "val_subjects": 6, "test": 0}
    records = all_records(tmp_path / "out")
    for record in records:
        key = (record.subject_name, record.frame_name, record.camera_name)
        np.testing.assert_allclose(record.K, truth.K[key], rtol=1e-5)
        np.testing.assert_array_equal(record.expression, truth.expression[key[:2]])
        depth = assert_posmaps_project_onto_pixels(record, atol_px=0.02)
        assert depth.min() > 0.85 and depth.max() < 1.15  # millimetres became metres
        assert_camera_pose(record, truth, key)
        assert record.features.shape == (4, 3, 5) and record.posmap_confidence is not None
        packed = record.subject_name.endswith("AAA001")
        assert (record.mask is None) == packed  # only the unpacked capture has masks
        assert image_codec.decode_rgb(record.image).shape == (*layout_fixtures.AVA_SIZE, 3)
    assert {r.subject_name for r in records} == {"20230101--1000--AAA001", "20230102--1100--BBB002"}
    assert [r.frame for r in records if r.subject == 0 and r.camera == 0] == [0, 1, 2]


def test_ava256_head_frame_makes_the_head_static_across_frames(ava_tree, tmp_path):
    """Cameras are static in the capture world while the head moves; in the head frame it is the
    other way round, so one camera's converted pose differs between frames of a capture."""
    root, _ = ava_tree
    ava256.convert(root, tmp_path / "out", progress=False)
    records = [r for r in all_records(tmp_path / "out") if r.subject == 0 and r.camera == 0]
    assert not np.allclose(records[0].world_to_cam, records[1].world_to_cam, atol=1e-3)


def test_nersemble_conversion(nersemble_tree, tmp_path):
    root, truth = nersemble_tree
    info = nersemble.convert(root, tmp_path / "out", test_subjects=1, progress=False)
    assert info.expression_dim == 13 and info.feature_channels == 0
    assert info.subject_names == ["017", "018"] and info.camera_names == sorted(layout_fixtures.NERSEMBLE_SERIALS)
    assert {split: info.splits[split]["num_records"] for split in storage.STORED_SPLITS} == {
        "train": 12,
        "val_expressions": 0,
        "val_subjects": 0,
        "test": 12,
    }
    for record in all_records(tmp_path / "out"):
        key = (record.subject_name, record.frame_name, record.camera_name)
        np.testing.assert_allclose(record.K, truth.K[key], rtol=1e-5)
        np.testing.assert_allclose(record.expression, truth.expression[key[:2]], rtol=1e-6)
        assert_posmaps_project_onto_pixels(record, atol_px=0.02)
        assert_camera_pose(record, truth, key)
        assert image_codec.decode_grey(record.mask).shape == layout_fixtures.NERSEMBLE_SIZE
        assert record.features is None and record.frame_name != "EXP-1-head/frame_00003"  # untracked frame skipped


def test_converted_data_through_the_pipeline(nersemble_tree, tmp_path):
    root, _ = nersemble_tree
    nersemble.convert(root, tmp_path / "out", heldout_frames=1, progress=False)
    config = ml_collections.ConfigDict(
        {
            "image_height": 16,
            "image_width": 16,
            "num_input_views": 2,
            "num_target_views": 3,
            "different_frame_prob": 0.5,
            "feature_height": 4,
            "feature_width": 4,
            "feature_channels": 7,
            "expression_dim": 13,
            "batch_size": 2,
            "num_workers": 0,
            "num_threads": 2,
            "prefetch_batches": 2,
        }
    )
    batch = next(iter(grain_pipeline.make_dataset(config, tmp_path / "out", split="train", seed=0)))
    assert batch["images"].shape == (2, 2, 16, 16, 3) and batch["target_images"].shape == (2, 3, 16, 16, 3)
    assert batch["features"].shape == (2, 2, 4, 4, 7) and not batch["features"].any()  # no feature maps: zeros
    assert batch["posmap_valid"].all()  # .npy position maps without confidence: all trusted
    points = jnp.asarray(batch["posmaps"].reshape(2, 2, -1, 3))
    uv, _ = geometry.project_points(jnp.asarray(batch["K"]), jnp.asarray(batch["world_to_cam"]), points)
    # 28x40 centre-cropped to 28x28 and shrunk to 16x16, nearest-neighbour maps: within half a source pixel.
    error = np.linalg.norm(np.asarray(uv) - np.asarray(geometry.pixel_grid(16, 16)).reshape(1, 1, -1, 2), axis=-1)
    assert error.max() < 0.5 * np.hypot(16 / 28, 16 / 28) + 1e-3


def test_cli_convert_and_inspect(ava_tree, tmp_path, capsys):
    root, _ = ava_tree
    out = tmp_path / "ava"
    data_cli.main(["convert", "--layout", "ava256", "--src", str(root), "--out", str(out), "--val-subjects", "1", "--max-frames", "2"])
    assert "val_subjects" in capsys.readouterr().out
    sheet = tmp_path / "sheet.png"
    data_cli.main(["inspect", str(out), "--sheet", str(sheet), "--size", "24", "16", "--verify"])
    assert image_codec.decode_rgb(sheet.read_bytes()).shape == (4 * 24, 3 * 16, 3)  # 4 rows, max(V, T) = 3 cameras


def test_missing_layouts_are_reported(tmp_path):
    with pytest.raises(storage.DatasetError, match="no Ava-256 captures"):
        ava256.convert(tmp_path, tmp_path / "out", progress=False)
    with pytest.raises(storage.DatasetError, match="no NeRSemble participants"):
        nersemble.convert(tmp_path, tmp_path / "out", progress=False)
