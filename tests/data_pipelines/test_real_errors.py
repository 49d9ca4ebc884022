"""Bad release files: each conversion fails with one line naming the file (zip member, video frame,
view), and leaves no dataset (nor a temporary directory) behind; ``verify`` decodes every pixel."""

import functools
import json
import shutil
import zipfile

import numpy as np
import pytest

from data_pipelines import image_codec, schema, sources, storage
from data_pipelines.real import ava256, nersemble
from data_pipelines.real.common import ConversionError
from launch import data as data_cli
from tests.data_pipelines import layout_fixtures

AVA_PACKED, AVA_UNPACKED = layout_fixtures.AVA_CAPTURES[0], layout_fixtures.AVA_CAPTURES[1]
convert_ava = functools.partial(ava256.convert, expression_dim=6)  # the fixture's user code has 6 values


@pytest.fixture(scope="module")
def ava_master(tmp_path_factory):
    root = tmp_path_factory.mktemp("ava_master")
    layout_fixtures.write_ava256(root, np.random.default_rng(3), packed=(True, False))  # two captures
    return root


@pytest.fixture(scope="module")
def nersemble_master(tmp_path_factory):
    root = tmp_path_factory.mktemp("nersemble_master")
    layout_fixtures.write_nersemble(root, np.random.default_rng(4))
    return root


@pytest.fixture
def ava(ava_master, tmp_path):
    shutil.copytree(ava_master, tmp_path / "src")
    return tmp_path / "src"


@pytest.fixture
def ners(nersemble_master, tmp_path):
    shutil.copytree(nersemble_master, tmp_path / "src")
    return tmp_path / "src"


def assert_fails_naming(convert, src, *names: str) -> str:
    """Runs ``convert`` into ``src/../out``; asserts one line naming ``names`` and nothing left behind."""
    out = src.parent / "out"
    with pytest.raises(ConversionError) as caught:
        convert(src, out, progress=False)
    message = str(caught.value)
    assert "\n" not in message, message
    for name in names:
        assert name in message, (name, message)
    assert not out.exists() and not list(src.parent.glob(".out.tmp-*"))
    return message


def edit_calibration(src, edit):
    path = src / AVA_PACKED / "decoder" / "camera_calibration.json"
    calibration = json.loads(path.read_text())
    edit(calibration)
    path.write_text(json.dumps(calibration))
    return path


def rewrite_member(archive, member: str, data: bytes) -> None:
    with zipfile.ZipFile(archive) as z:
        members = {name: z.read(name) for name in z.namelist()}
    members[member] = data
    with zipfile.ZipFile(archive, "w") as z:
        for name, value in members.items():
            z.writestr(name, value)


def test_calibration_without_T(ava):
    path = edit_calibration(ava, lambda c: c["KRT"][1].pop("T"))
    assert_fails_naming(convert_ava, ava, str(path), "camera 400943", "'T'")


def test_calibration_with_null_K(ava):
    path = edit_calibration(ava, lambda c: c["KRT"][0].update(K=None))
    assert_fails_naming(convert_ava, ava, str(path), "camera 400940")


def test_calibration_KRT_not_a_list(ava):
    path = edit_calibration(ava, lambda c: c.update(KRT={"400940": 1}))
    assert_fails_naming(convert_ava, ava, str(path), "'KRT' list")


def test_image_archive_that_is_not_a_zip(ava):
    archive = ava / AVA_PACKED / "decoder" / "image" / "cam400940.zip"
    archive.write_bytes(b"not a zip archive")
    assert_fails_naming(convert_ava, ava, str(archive), "not a readable zip archive")


def test_truncated_avif_member(ava):
    archive = ava / AVA_PACKED / "decoder" / "image" / "cam400943.zip"
    member = "cam400943/000103.avif"
    with zipfile.ZipFile(archive) as z:
        data = z.read(member)
    rewrite_member(archive, member, data[: len(data) // 2])
    assert_fails_naming(convert_ava, ava, str(archive), member, f"view {AVA_PACKED}/EXP_neutral_peak/000103/400943")


def test_truncated_png_with_intact_header(ava):
    path = ava / AVA_UNPACKED / "decoder" / "image" / "cam401031" / "000106.png"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    assert image_codec.image_size(path.read_bytes()) == layout_fixtures.AVA_SIZE  # the header still reads
    assert_fails_naming(convert_ava, ava, str(path), f"view {AVA_UNPACKED}/EXP_smile/000106/401031")


def test_image_of_another_size_than_the_calibration(ava):
    path = ava / AVA_UNPACKED / "decoder" / "image" / "cam400940" / "000100.png"
    path.write_bytes(image_codec.encode_png(np.zeros((64, 64, 3), np.uint8)))
    assert_fails_naming(convert_ava, ava, str(path), "64x64", "refers to 2668x4096")


def test_head_pose_that_is_not_a_matrix(ava):
    archive = ava / AVA_PACKED / "decoder" / "head_pose" / "head_pose.zip"
    rewrite_member(archive, "000109.txt", b"1 0 0\nnot a pose")
    assert_fails_naming(convert_ava, ava, str(archive), "000109.txt")


def test_truncated_mesh(ava):
    archive = ava / AVA_UNPACKED / "decoder" / "kinematic_tracking" / "registration_vertices.zip"
    with zipfile.ZipFile(archive) as z:
        data = z.read("000112.ply")
    rewrite_member(archive, "000112.ply", data[:-40])
    assert_fails_naming(convert_ava, ava, str(archive), "000112.ply", "truncated")


def test_user_code_of_another_size_than_the_basis(ava):
    path = ava / AVA_PACKED / "decoder" / "expression_codes" / "000121.npy"
    np.save(path, np.zeros(3, np.float32))  # the basis codes have the default 16 values
    assert_fails_naming(ava256.convert, ava, str(path), "16 values")


def test_truncated_video(ners):
    path = ners / "018" / "sequences" / layout_fixtures.SEQUENCE / "images" / "cam_222200037.mp4"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_fails_naming(nersemble.convert, ners, str(path), "view 018/")


def test_video_shorter_than_its_tracking(ners):
    path = ners / "018" / "sequences" / layout_fixtures.SEQUENCE / "images" / "cam_222200039.mp4"
    layout_fixtures.write_video(path, [np.zeros((*layout_fixtures.NERSEMBLE_SIZE, 3), np.uint8)] * 2)
    assert_fails_naming(nersemble.convert, ners, str(path), "no frame 2", "view 018/EXP-1-head/frame_00002/222200039")


def test_tracking_without_eyes(ners):
    path = ners / "mono_flame_avatar" / "393" / "sequences" / layout_fixtures.SEQUENCE / "tracking" / "flame2023_tracking_v2.npz"
    with np.load(path) as tracking:
        arrays = {k: tracking[k] for k in tracking.files if k != "eyes"}
    np.savez(path, **arrays)
    assert_fails_naming(nersemble.convert, ners, str(path), "['eyes']")


def test_camera_params_without_world_2_cam(ners):
    path = ners / "018" / "calibration" / "camera_params.json"
    path.write_text(json.dumps({"intrinsics": np.eye(3).tolist()}))
    assert_fails_naming(nersemble.convert, ners, str(path), "world_2_cam")


def test_cli_reports_one_line(ava):
    archive = ava / AVA_PACKED / "decoder" / "image" / "cam400940.zip"
    archive.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SystemExit) as caught:
        data_cli.main(["convert", "--layout", "ava256", "--src", str(ava), "--out", str(ava.parent / "out")])
    assert str(caught.value).startswith("avat3r-data convert: ") and str(archive) in str(caught.value)
    assert "\n" not in str(caught.value) and not (ava.parent / "out").exists()


def test_verify_decodes_every_image(tmp_path):
    """A record whose PNG has an intact header but truncated pixels passes the schema, not ``verify``."""
    pixels = np.random.default_rng(0).integers(0, 256, (16, 12, 3), dtype=np.uint8)
    png = image_codec.encode_png(pixels)
    record = lambda frame, image: schema.ViewRecord(
        subject=0, frame=frame, camera=0, image=image, K=np.eye(3, dtype=np.float32), world_to_cam=np.eye(4, dtype=np.float32),
        expression=np.zeros(2, np.float32), subject_name="s", frame_name=f"f{frame}", camera_name="c",
    )  # fmt: skip
    with storage.DatasetWriter(tmp_path / "data") as writer:
        writer.write("train", record(0, png))
        writer.write("train", record(1, png[: len(png) * 2 // 3]))
        writer.close(source="test", subject_names=["s"], camera_names=["c"], parameters={})
    sources.verify(tmp_path / "data")  # files and index are fine
    with pytest.raises(schema.CorruptRecordError) as caught:
        sources.verify(tmp_path / "data", read_all=True)
    assert "view s/f1/c" in str(caught.value) and "\n" not in str(caught.value)
