"""Reader of the NeRSemble layout with extracted frames (github.com/tobias-kirschstein/nersemble).

One directory per participant under ``src`` (zero-padded id, for example ``018``)::

    <pid>/calibration/camera_params.json    {"intrinsics": 3x3 or {serial: 3x3}, "world_2_cam": {serial: 4x4}}
                                            (or <pid>/camera_params.json, the v1 location)
    <pid>/sequences/<SEQ>/[timesteps/]frame_<t:05d>/images-2x-73fps/cam_<serial>.{png,jpg}
                                            (or images-2x/, images/)
    <pid>/sequences/<SEQ>/[timesteps/]frame_<t:05d>/alpha_map-73fps/cam_<serial>.png   (or alpha_map/; optional)
    <pid>/sequences/<SEQ>/tracking/flame2023_tracking_v2.npz   FLAME tracking: "expression" [T, 100], "jaw" [T, 3],
                                            "eyes" [T, 6], "frames" [T] timestep ids (or flame2023_tracking.npz)
    optional per frame: position_map/cam_<serial>.{npz,npy}, feature_map/cam_<serial>.{npy,npz}

The calibration refers to full-resolution 2200x3208 (width x height) images in metres;
intrinsics are rescaled to the stored image size. A frame's expression code concatenates the
tracking arrays named by ``expression_keys``; timesteps without tracking are skipped.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re

import numpy as np

from data_pipelines import storage
from data_pipelines.real import common

log = logging.getLogger(__name__)

CALIBRATION_SIZE = (3208, 2200)  # (height, width)
_IMAGE_FOLDERS = ("images-2x-73fps", "images-2x", "images")
_ALPHA_FOLDERS = ("alpha_map-73fps", "alpha_map")
_TRACKING_FILES = ("flame2023_tracking_v2.npz", "flame2023_tracking.npz")
_FRAME_DIR = re.compile(r"frame_(\d+)$")


def read_calibration(participant: pathlib.Path, size: tuple[int, int] = CALIBRATION_SIZE) -> dict[str, common.Calibration]:
    path = common.first_existing([participant / "calibration" / "camera_params.json", participant / "camera_params.json"])
    if path is None:
        raise ValueError(f"{participant}: no calibration/camera_params.json (or camera_params.json)")
    params = json.loads(path.read_text())
    if "world_2_cam" not in params or "intrinsics" not in params:
        raise ValueError(f"{path} must hold 'intrinsics' and 'world_2_cam'")
    intrinsics = params["intrinsics"]
    cameras = {}
    for serial, pose in params["world_2_cam"].items():
        K = np.asarray(intrinsics[serial] if isinstance(intrinsics, dict) else intrinsics, np.float64)
        world_to_cam = np.asarray(pose, np.float64)
        if K.shape != (3, 3) or world_to_cam.shape != (4, 4):
            raise ValueError(f"{path}: camera {serial} has intrinsics {K.shape} and world_2_cam {world_to_cam.shape}")
        cameras[str(serial)] = common.Calibration(K, world_to_cam, size)
    return cameras


def read_tracking(sequence: pathlib.Path, expression_keys: tuple[str, ...]) -> dict[int, np.ndarray] | None:
    """timestep -> expression code, or None when the sequence has no tracking file."""
    path = common.first_existing([sequence / "tracking" / name for name in _TRACKING_FILES])
    if path is None:
        return None
    with np.load(path, allow_pickle=False) as tracking:
        missing = [k for k in expression_keys if k not in tracking.files]
        if missing:
            raise ValueError(f"{path} lacks {missing} (it has {tracking.files})")
        codes = np.concatenate([tracking[k].reshape(len(tracking[k]), -1) for k in expression_keys], -1)
        timesteps = tracking["frames"] if "frames" in tracking.files else np.arange(len(codes))
    return {int(t): code.astype(np.float32) for t, code in zip(timesteps, codes, strict=True)}


def _frame_dirs(sequence: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    root = sequence / "timesteps" if (sequence / "timesteps").is_dir() else sequence
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _FRAME_DIR.match(p.name))]
    return sorted(found)


def _per_camera(folder: pathlib.Path | None, extensions: tuple[str, ...]) -> dict[str, pathlib.Path]:
    if folder is None:
        return {}
    return {p.stem.removeprefix("cam_"): p for p in sorted(folder.iterdir()) if p.stem.startswith("cam_") and p.suffix in extensions}


def read_participant(
    participant: pathlib.Path,
    *,
    expression_keys: tuple[str, ...] = ("expression", "jaw"),
    sequences: tuple[str, ...] | None = None,
    frame_stride: int = 1,
    max_frames: int | None = None,
) -> common.RawSubject:
    calibration = read_calibration(participant)
    sequence_dirs = sorted(p for p in (participant / "sequences").iterdir() if p.is_dir()) if (participant / "sequences").is_dir() else []
    if sequences is not None:
        sequence_dirs = [p for p in sequence_dirs if p.name in sequences]
    frames, skipped = [], 0
    for sequence in sequence_dirs:
        tracking = read_tracking(sequence, expression_keys)
        if tracking is None:
            log.warning("%s/%s has no FLAME tracking; skipping it", participant.name, sequence.name)
            continue
        for timestep, frame_dir in _frame_dirs(sequence)[::frame_stride]:
            images = _per_camera(common.first_existing([frame_dir / f for f in _IMAGE_FOLDERS]), (".png", ".jpg", ".jpeg"))
            if timestep not in tracking or not images:
                skipped += 1
                continue
            alphas = _per_camera(common.first_existing([frame_dir / f for f in _ALPHA_FOLDERS]), (".png",))
            posmaps = _per_camera(common.first_existing([frame_dir / "position_map"]), (".npz", ".npy"))
            features = _per_camera(common.first_existing([frame_dir / "feature_map"]), (".npy", ".npz"))
            views = {
                serial: common.RawView(
                    image=common.file_loader(path),
                    mask=common.file_loader(alphas[serial]) if serial in alphas else None,
                    posmap=common.file_loader(posmaps[serial]) if serial in posmaps else None,
                    features=common.file_loader(features[serial]) if serial in features else None,
                )
                for serial, path in images.items()
            }
            frames.append(common.RawFrame(f"{sequence.name}/frame_{timestep:05d}", tracking[timestep], views))
    if skipped:
        log.warning("%s: skipped %d frames without tracking or images", participant.name, skipped)
    return common.RawSubject(participant.name, calibration, frames[:max_frames])


def find_participants(src: pathlib.Path) -> list[pathlib.Path]:
    found = sorted(p for p in src.iterdir() if p.is_dir() and p.name.isdigit() and (p / "sequences").is_dir())
    if not found:
        raise storage.DatasetError(f"no NeRSemble participants under {src}: expected <id>/sequences/ folders")
    return found


def convert(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    val_subjects: int = 0,
    test_subjects: int = 0,
    heldout_frames: int = 0,
    scale: float = 1.0,
    expression_keys: tuple[str, ...] = ("expression", "jaw"),
    sequences: tuple[str, ...] | None = None,
    frame_stride: int = 1,
    max_frames: int | None = None,
    progress: bool = True,
) -> storage.DatasetInfo:
    """Converts every participant under ``src`` (sorted by id: later ones are held out) into a dataset."""
    subjects = [
        read_participant(p, expression_keys=expression_keys, sequences=sequences, frame_stride=frame_stride, max_frames=max_frames)
        for p in find_participants(pathlib.Path(src))
    ]
    return common.write_dataset(
        subjects,
        out_dir,
        source="nersemble",
        scale=scale,
        val_subjects=val_subjects,
        test_subjects=test_subjects,
        heldout_frames=heldout_frames,
        parameters={"src": str(src), "expression_keys": list(expression_keys), "sequences": sequences, "frame_stride": frame_stride},
        progress=progress,
    )
