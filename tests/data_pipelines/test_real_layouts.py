"""Converters of Ava-256 and NeRSemble, on tiny trees written as the releases publish them.

The fixtures draw dots at the projections of known 3D points with each release's own camera
conventions; here the points, in our world, are projected through the stored records and must
land on the dots' centroids within 0.1 px.
"""

import numpy as np
import pytest

from avat3r_jax.config import base_config
from data_pipelines import grain_pipeline, image_codec, storage
from data_pipelines.real import ava256, expression_basis, nersemble, overlay
from launch import data as data_cli
from tests.data_pipelines import layout_fixtures

TOLERANCE_PX = 0.1
BASIS_DIM = 6


@pytest.fixture(scope="module")
def ava_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ava256")
    return root, layout_fixtures.write_ava256(root, np.random.default_rng(0))


@pytest.fixture(scope="module")
def nersemble_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("nersemble")
    return root, layout_fixtures.write_nersemble(root, np.random.default_rng(1))


@pytest.fixture(scope="module")
def ava_data(ava_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("ava_out") / "data"
    info = ava256.convert(ava_tree[0], out, val_subjects=1, heldout_frames=1, expression_dim=BASIS_DIM, progress=False)
    return out, info


@pytest.fixture(scope="module")
def nersemble_data(nersemble_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("nersemble_out") / "data"
    return out, nersemble.convert(nersemble_tree[0], out, test_subjects=1, progress=False)


def all_records(data_dir):
    source = storage.open_source(data_dir, storage.STORED_SPLITS)
    return [source[i] for i in range(len(source))]


def dot_centroids(pixels: np.ndarray, near: np.ndarray, radius: int = 4) -> np.ndarray:
    """Intensity centroids ``[N, 2]`` (pixel centres at +0.5) of the dots within ``radius`` of ``near``."""
    grey = pixels[..., 0].astype(np.float64)
    centroids = []
    for u, v in near:
        col, row = int(np.floor(u)), int(np.floor(v))
        rows, cols = slice(max(row - radius, 0), row + radius + 1), slice(max(col - radius, 0), col + radius + 1)
        window = grey[rows, cols]
        vv, uu = np.mgrid[rows, cols] + 0.5
        centroids.append([(window * uu).sum() / window.sum(), (window * vv).sum() / window.sum()])
    return np.array(centroids)


def reprojection_errors(record, points: np.ndarray, shift_px: float = 0.0) -> np.ndarray:
    """Distances (px) between ``points`` projected through the record (principal point moved by
    ``shift_px``) and the dots of the record's decoded image."""
    K = record.K.astype(np.float64).copy()
    K[:2, 2] += shift_px
    uv, depth = overlay.project(K, record.world_to_cam, points)
    assert (depth > 0).all()
    return np.linalg.norm(dot_centroids(image_codec.decode_rgb(record.image), uv) - uv, axis=-1)


def test_ava256_known_points_reproject_through_the_records(ava_data, ava_tree):
    out, _ = ava_data
    truth = ava_tree[1]
    records = all_records(out)
    assert len(records) == 3 * 9 * 3
    for record in records:
        key = (record.subject_name, record.frame_name, record.camera_name)
        assert image_codec.decode_rgb(record.image).shape == (*layout_fixtures.AVA_SIZE, 3)
        assert reprojection_errors(record, truth.points[key]).max() < TOLERANCE_PX, key
    # The test sees half a pixel: Ava-256's integer pixel centres left unshifted miss the dots.
    first = records[0]
    assert reprojection_errors(first, truth.points[(first.subject_name, first.frame_name, first.camera_name)], -0.5).min() > 0.4


def test_ava256_records_splits_masks_maps_and_user_codes(ava_data, ava_tree):
    out, info = ava_data
    truth = ava_tree[1]
    assert info.source == "ava256" and info.camera_names == sorted(layout_fixtures.AVA_CAMERAS)
    assert info.expression_dim == BASIS_DIM and info.feature_channels == 5
    counts = {split: info.splits[split]["num_records"] for split in storage.STORED_SPLITS}
    assert counts == {"train": 48, "val_expressions": 6, "val_subjects": 27, "test": 0}  # 9 frames x 3 cameras per capture
    assert info.parameters["layouts"] == {"ava256 decoder assets": {"subjects": 3, "frames": 27, "views": 81, "skipped_frames": 0}}
    for record in all_records(out):
        unpacked = record.subject_name == layout_fixtures.AVA_CAPTURES[1]
        assert (record.mask is not None) == unpacked and (record.posmap is not None) == unpacked
        if unpacked:  # position maps unprojected from the release's integer pixel centres land on ours
            height, width = layout_fixtures.AVA_SIZE
            uv, depth = overlay.project(record.K, record.world_to_cam, record.posmap.reshape(-1, 3).astype(np.float64))
            v, u = np.mgrid[:height, :width] + 0.5
            assert np.abs(uv - np.stack([u, v], -1).reshape(-1, 2)).max() < 0.05
            assert depth.min() > 0.85 and depth.max() < 1.15  # millimetres became metres
        key = (record.subject_name, record.frame_name)
        if key in truth.expression:  # the user's code overrides the basis code
            np.testing.assert_array_equal(record.expression, truth.expression[key])


def frame_codes(records, subject: str) -> dict[str, np.ndarray]:
    return {r.frame_name: r.expression for r in records if r.subject_name == subject and r.camera == 0}


def test_ava256_expression_basis_codes_reconstruct_and_separate_expressions(ava_data, ava_tree):
    """Codes of the held-out capture (basis fitted on the other two) reconstruct its tracked meshes
    within 0.25 mm RMS (5x the 0.05 mm tracking noise; 0.07 mm measured, the expression offsets
    are ~4 mm RMS), and
    the same expression on two subjects is closer in code space than two expressions of one subject."""
    out, _ = ava_data
    truth = ava_tree[1]
    basis = expression_basis.ExpressionBasis.load(out / expression_basis.FILE)
    assert basis.dim == BASIS_DIM and basis.num_vertices == layout_fixtures.AVA_VERTICES
    records = all_records(out)
    held_out = layout_fixtures.AVA_CAPTURES[2]
    codes = frame_codes(records, held_out)
    meshes = {frame: truth.vertices[(held_out, frame)] for frame in codes}
    neutral = np.mean([m for f, m in meshes.items() if f.startswith("EXP_neutral_peak")], axis=0)
    frames = sorted(codes)
    reconstructed = neutral + basis.decode(np.stack([codes[f] for f in frames]))
    target = np.stack([meshes[f] for f in frames])
    error_rms = np.sqrt(np.mean((reconstructed - target) ** 2))
    offset_rms = np.sqrt(np.mean((target - neutral) ** 2))
    assert error_rms < 5 * layout_fixtures.AVA_NOISE_MM and offset_rms > 2.0, (error_rms, offset_rms)

    def mean_code(subject, segment):
        return np.mean([c for f, c in frame_codes(records, subject).items() if f.startswith(segment)], axis=0)

    subjects = (layout_fixtures.AVA_CAPTURES[0], held_out)
    same_expression = [np.linalg.norm(mean_code(subjects[0], e) - mean_code(subjects[1], e)) for e in ("EXP_smile", "EXP_jaw_open")]
    same_subject = [np.linalg.norm(mean_code(s, "EXP_smile") - mean_code(s, "EXP_jaw_open")) for s in subjects]
    assert max(same_expression) < min(same_subject), (same_expression, same_subject)


def test_ava256_saved_basis_is_reused_for_held_out_subjects(ava_data, ava_tree, tmp_path):
    """Converting with the training dataset's basis gives the held-out capture the same codes."""
    out, _ = ava_data
    again = ava256.convert(ava_tree[0], tmp_path / "again", val_subjects=1, basis_path=out / expression_basis.FILE, progress=False)
    assert "through the basis" in again.parameters["conventions"]["expressions"]
    held_out = layout_fixtures.AVA_CAPTURES[2]
    first, second = frame_codes(all_records(out), held_out), frame_codes(all_records(tmp_path / "again"), held_out)
    for frame, code in first.items():
        np.testing.assert_allclose(second[frame], code, atol=1e-5)


def test_nersemble_known_points_reproject_for_frames_videos_and_crops(nersemble_data, nersemble_tree):
    out, _ = nersemble_data
    truth = nersemble_tree[1]
    for record in all_records(out):
        key = (record.subject_name, record.frame_name, record.camera_name)
        assert image_codec.decode_rgb(record.image).shape[:2] == truth.sizes[record.subject_name]
        assert reprojection_errors(record, truth.points[key]).max() < TOLERANCE_PX, key


def test_nersemble_releases_codes_and_masks(nersemble_data, nersemble_tree):
    out, info = nersemble_data
    truth = nersemble_tree[1]
    assert info.expression_dim == 109 and info.subject_names == ["017", "018", "mono_flame_avatar/393"]
    assert info.parameters["layouts"] == {
        "nersemble v1 frames": {"subjects": 1, "frames": 3, "views": 9, "skipped_frames": 1},  # timestep 3 untracked
        "nersemble v2 videos": {"subjects": 1, "frames": 3, "views": 9, "skipped_frames": 0},
        "nersemble benchmark videos": {"subjects": 1, "frames": 4, "views": 12, "skipped_frames": 0},
    }
    assert info.splits["test"]["num_records"] == 12
    frames = {}
    for record in all_records(out):
        frames.setdefault(record.subject_name, set()).add(record.frame_name)
        np.testing.assert_array_equal(record.expression, truth.expression[(record.subject_name, record.frame_name)])
        mask = image_codec.decode_grey(record.mask) if record.mask is not None else None
        assert (mask is None) == (record.subject_name == "018")  # v2 ships no alpha maps
        if record.subject_name == "mono_flame_avatar/393":
            assert mask.min() >= 254  # the alpha-map video's frame
    assert frames["018"] == {f"{layout_fixtures.SEQUENCE}/frame_{t:05d}" for t in (0, 2, 3)}  # video frames by tracked timestep


def test_nersemble_frame_stride(nersemble_tree, tmp_path):
    nersemble.convert(nersemble_tree[0], tmp_path / "out", frame_stride=2, progress=False)
    frames = {}
    for record in all_records(tmp_path / "out"):
        frames.setdefault(record.subject_name, set()).add(int(record.frame_name[-5:]))
    assert frames == {"017": {0, 2}, "018": {0, 3}, "mono_flame_avatar/393": {0, 2}}


def axis_midpoint_colour(data_dir, subject_name: str, head_to_ours: np.ndarray) -> np.ndarray:
    """Colour of the contact sheet at the middle of the first view's projected x axis."""
    sheet = image_codec.decode_rgb((data_dir / "contact_sheet.png").read_bytes())
    first = min((r for r in all_records(data_dir) if r.subject == 0 and r.frame == 0), key=lambda r: r.camera)
    assert first.subject_name == subject_name
    uv, _ = overlay.project(first.K, first.world_to_cam, overlay.axis_points(head_to_ours, 0.1))
    u, v = np.floor((uv[0] + uv[1]) / 2).astype(int)
    return sheet[v, u]


def test_contact_sheets_draw_head_pose_axes(ava_data, nersemble_data, nersemble_tree):
    ava_out, _ = ava_data
    sheet = image_codec.decode_rgb((ava_out / "contact_sheet.png").read_bytes())
    assert sheet.shape == (layout_fixtures.AVA_SIZE[0], 3 * layout_fixtures.AVA_SIZE[1], 3)  # the 3 views of the first frame
    np.testing.assert_array_equal(axis_midpoint_colour(ava_out, layout_fixtures.AVA_CAPTURES[0], np.eye(4)), [255, 0, 0])  # head frame
    tracking = np.load(nersemble_tree[0] / "017" / "sequences" / layout_fixtures.SEQUENCE / "tracking" / "flame2023_tracking_v2.npz")
    pose = layout_fixtures.rigid(tracking["rotation_matrices"][0], tracking["translation"][0])
    np.testing.assert_array_equal(axis_midpoint_colour(nersemble_data[0], "017", pose), [255, 0, 0])


def test_cli_convert_prints_layouts_and_inspects(ava_tree, tmp_path, capsys):
    out = tmp_path / "ava"
    argv = ["convert", "--layout", "ava256", "--src", str(ava_tree[0]), "--out", str(out), "--val-subjects", "1", "--expression-dim", "6"]
    data_cli.main(argv)
    printed = capsys.readouterr().out
    assert "ava256 decoder assets: 3 subjects, 27 frames, 81 views" in printed and "pixel_centres: integer" in printed
    assert "contact_sheet.png" in printed and storage.load_info(out).expression_dim == 6
    sheet = tmp_path / "sheet.png"
    data_cli.main(["inspect", str(out), "--sheet", str(sheet), "--size", "24", "16", "--verify"])
    assert image_codec.decode_rgb(sheet.read_bytes()).shape == (4 * 24, 3 * 16, 3)


def test_converted_data_through_the_pipeline(ava_data):
    out, _ = ava_data
    config = base_config().data
    config.update(
        image_height=16,
        image_width=16,
        num_input_views=2,
        num_target_views=3,
        different_frame_prob=0.5,
        feature_height=4,
        feature_width=4,
        feature_channels=5,
        expression_dim=BASIS_DIM,
        batch_size=2,
        num_threads=2,
        prefetch_batches=2,
    )
    batch = next(iter(grain_pipeline.make_dataset(config, out, split="train", seed=0)))
    assert batch["images"].shape == (2, 2, 16, 16, 3) and batch["target_images"].shape == (2, 3, 16, 16, 3)
    assert batch["expression"].shape == (2, BASIS_DIM)


def test_missing_layouts_are_reported(tmp_path):
    with pytest.raises(storage.DatasetError, match="no Ava-256 captures"):
        ava256.convert(tmp_path, tmp_path / "out", progress=False)
    with pytest.raises(storage.DatasetError, match="no NeRSemble participants"):
        nersemble.convert(tmp_path, tmp_path / "out", progress=False)
