"""Reader of the Ava-256 layout (github.com/facebookresearch/ava-256, the released decoder assets).

One directory per capture under ``src`` (for example ``20230405--1635--AAN112``)::

    <capture>/decoder/camera_calibration.json   {"KRT": [{"cameraId", "K" (3x3, stored transposed),
                                                 "T" (4x4 world->camera, stored transposed), ...}]}
    <capture>/decoder/frame_list.csv            header "seg_id,frame_id", one row per frame, video order
    <capture>/decoder/image/cam<ID>.zip         members cam<ID>/<frame:06d>.avif (as released), or
    <capture>/decoder/image/cam<ID>/<frame:06d>.{avif,png,jpg}   (unpacked per-camera folders)
    <capture>/decoder/head_pose/head_pose.zip   members <frame:06d>.txt, 3x4 head->world (optional; or a folder)
    <capture>/decoder/expression_codes/<frame:06d>.npy   per-frame expression code [D] (user-provided: Ava-256
                                                 ships no codes; frames without one are skipped)
    optional, same per-camera pattern as images:  mask/ (PNG alpha), position_map/ (.npy/.npz),
                                                 feature_map/ (.npy/.npz)

Calibration is for 2668x4096 (width x height) images in millimetres; intrinsics are rescaled to
the stored image size and the world is converted to metres (``scale=0.001``). With head poses the
cameras and position maps are expressed in the head frame, as the Ava-256 loader does. Lens
distortion is ignored (the images are not undistorted).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import pathlib

import numpy as np

from data_pipelines import storage
from data_pipelines.real import common

log = logging.getLogger(__name__)

CALIBRATION_SIZE = (4096, 2668)  # (height, width) of the images the calibration refers to
_IMAGE_EXTENSIONS = (".avif", ".png", ".jpg", ".jpeg")
_ARRAY_EXTENSIONS = (".npz", ".npy")


def read_calibration(path: pathlib.Path, size: tuple[int, int] = CALIBRATION_SIZE) -> dict[str, common.Calibration]:
    try:
        entries = json.loads(path.read_text())["KRT"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not an Ava-256 calibration file (a JSON object with a 'KRT' list): {e}") from e
    cameras = {}
    for entry in entries:
        K = np.asarray(entry["K"], np.float64).T
        world_to_cam = np.eye(4)
        world_to_cam[:3, :4] = np.asarray(entry["T"], np.float64)[:4, :3].T
        if K.shape != (3, 3):
            raise ValueError(f"{path}: camera {entry['cameraId']} has K of shape {K.shape}")
        cameras[str(entry["cameraId"])] = common.Calibration(K, world_to_cam, size)
    return cameras


def read_frame_list(path: pathlib.Path) -> list[tuple[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"seg_id", "frame_id"} <= set(rows[0]):
        raise ValueError(f"{path} must have the columns seg_id,frame_id; got {list(rows[0])}")
    return [(row["seg_id"], row["frame_id"]) for row in rows]


class _PerCamera:
    """Files of one kind (image, mask, ...) per camera and frame: a zip per camera or a folder per camera."""

    def __init__(self, root: pathlib.Path, camera: str, extensions: tuple[str, ...]):
        self.zip_path = root / f"cam{camera}.zip"
        self.folder = root / f"cam{camera}"
        self.camera = camera
        self.extensions = extensions
        self.members = common.zip_members(self.zip_path) if self.zip_path.is_file() else None

    def loader(self, frame_id: str) -> common.Loader | None:
        stem = f"{int(frame_id):06d}"
        for ext in self.extensions:
            if self.members is not None:
                member = f"cam{self.camera}/{stem}{ext}"
                if member in self.members:
                    return common.zip_loader(self.zip_path, member)
            path = self.folder / f"{stem}{ext}"
            if path.is_file():
                return common.file_loader(path)
        return None


def _head_poses(decoder: pathlib.Path) -> dict[str, np.ndarray] | None:
    """frame stem -> head->world [4, 4], or None without head-pose data."""
    archive, folder = decoder / "head_pose" / "head_pose.zip", decoder / "head_pose"
    if archive.is_file():
        texts = {pathlib.Path(m).stem: common.zip_loader(archive, m) for m in common.zip_members(archive) if m.endswith(".txt")}
    elif folder.is_dir():
        texts = {p.stem: common.file_loader(p) for p in folder.glob("*.txt")}
    else:
        return None
    poses = {}
    for stem, load in texts.items():
        pose = np.loadtxt(load().decode().splitlines(), dtype=np.float64).reshape(-1, 4)[:3]
        poses[stem] = np.vstack([pose, [0.0, 0.0, 0.0, 1.0]])
    return poses


def read_capture(capture: pathlib.Path, *, frame_stride: int = 1, max_frames: int | None = None) -> common.RawSubject:
    decoder = capture / "decoder"
    calibration = read_calibration(decoder / "camera_calibration.json")
    frame_list = read_frame_list(decoder / "frame_list.csv")[::frame_stride][:max_frames]
    poses = _head_poses(decoder)
    kinds = {
        name: {cam: _PerCamera(decoder / name, cam, ext) for cam in calibration}
        for name, ext in (
            ("image", _IMAGE_EXTENSIONS),
            ("mask", (".png",)),
            ("position_map", _ARRAY_EXTENSIONS),
            ("feature_map", _ARRAY_EXTENSIONS),
        )
    }
    frames, skipped = [], 0
    for segment, frame_id in frame_list:
        stem = f"{int(frame_id):06d}"
        code_path = decoder / "expression_codes" / f"{stem}.npy"
        if not code_path.is_file():
            skipped += 1
            continue
        views = {}
        for cam in calibration:
            image = kinds["image"][cam].loader(frame_id)
            if image is not None:
                views[cam] = common.RawView(
                    image=image,
                    mask=kinds["mask"][cam].loader(frame_id),
                    posmap=kinds["position_map"][cam].loader(frame_id),
                    features=kinds["feature_map"][cam].loader(frame_id),
                )
        if not views:
            skipped += 1
            continue
        head_to_world = None
        if poses is not None:
            if stem not in poses:
                raise ValueError(f"{capture.name}: frame {frame_id} has no head pose in {decoder / 'head_pose'}")
            head_to_world = poses[stem]
        expression = np.load(code_path, allow_pickle=False)
        frames.append(common.RawFrame(f"{segment}/{stem}", expression, views, head_to_world))
    if skipped:
        log.warning("%s: skipped %d of %d frames without an expression code or images", capture.name, skipped, len(frame_list))
    return common.RawSubject(capture.name, calibration, frames)


def find_captures(src: pathlib.Path) -> list[pathlib.Path]:
    captures = sorted(p for p in src.iterdir() if (p / "decoder" / "camera_calibration.json").is_file())
    if not captures:
        raise storage.DatasetError(f"no Ava-256 captures under {src}: expected <capture>/decoder/camera_calibration.json")
    return captures


def convert(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    val_subjects: int = 0,
    test_subjects: int = 0,
    heldout_frames: int = 0,
    scale: float = 0.001,
    frame_stride: int = 1,
    max_frames: int | None = None,
    progress: bool = True,
) -> storage.DatasetInfo:
    """Converts every capture under ``src`` (sorted by name: later ones are held out) into a dataset."""
    subjects = [read_capture(c, frame_stride=frame_stride, max_frames=max_frames) for c in find_captures(pathlib.Path(src))]
    return common.write_dataset(
        subjects,
        out_dir,
        source="ava256",
        scale=scale,
        val_subjects=val_subjects,
        test_subjects=test_subjects,
        heldout_frames=heldout_frames,
        parameters={"src": str(src), "frame_stride": frame_stride, "max_frames": max_frames},
        progress=progress,
    )
