"""Reader of NeRSemble's releases: v1 extracted frames, v2 and benchmark per-camera videos.

Sources: github.com/tobias-kirschstein/nersemble (v1, ``data_manager/multi_view_data.py`` and its
nerfstudio data parser), nersemble-data (v2, ``constants.py``, ``data/nersemble_data.py``) and
nersemble-benchmark (``constants.py``, ``data/benchmark_data.py``, ``models/flame.py``)::

    v1 frames     <pid>/camera_params.json (or calibration/camera_params.json)
                  <pid>/sequences/<SEQ>/[timesteps/]frame_<t:05d>/images-2x-73fps/cam_<serial>.png
                                                      (or images-2x/, images/; .jpg too)
                  <pid>/sequences/<SEQ>/[timesteps/]frame_<t:05d>/alpha_map-73fps/cam_<serial>.png (or alpha_map/)
    v2 videos     <pid>/calibration/camera_params.json
                  <pid>/sequences/<SEQ>/images/cam_<serial>.mp4
    benchmark     <benchmark>/<task>/<pid>/calibration/camera_params.json   (task: nvs, mono_flame_avatar)
                  <pid>/sequences/<SEQ>/images/cam_<serial>.mp4, alpha_maps/cam_<serial>.mp4
                  <pid>/sequences/<SEQ>/tracking/flame2023_tracking_v2.npz  (or flame2023_tracking.npz)

    camera_params.json: {"world_2_cam": {serial: 4x4}, "intrinsics": 3x3 (v1, v2) or {serial: 3x3} (benchmark)}
    FLAME tracking .npz: expression [T, 100], jaw [T, 3], eyes [T, 6], neck [T, 3], rotation [T, 3],
                  rotation_matrices [T, 3, 3], translation [T, 3], scale [1, 1], shape [1, 300], frames [T]

Conventions, per release:

    ==========================  ===================  ===================  =======================
    ..                          v1 frames            v2 videos            benchmark videos
    ==========================  ===================  ===================  =======================
    images                      PNG per frame        mp4 per camera       mp4 per camera (and
                                (images-2x:          (H.264)              alpha-map mp4s);
                                1604x1100)                                mono_flame_avatar:
                                                                          512x512 face crops
    pixel convention            centres at +0.5      centres at +0.5      centres at +0.5
    intrinsics reference size   3208x2200 (HxW),     3208x2200 (HxW),     each camera's own K
                                one K, rescaled per  one K, rescaled per  for the released
                                axis to the image    axis to the video    images, used as is
    units                       metres               metres               metres
    extrinsic direction         world->camera,       world->camera,       world->camera,
                                OpenCV               OpenCV               OpenCV
    expression codes from       a FLAME tracking     a FLAME tracking     the shipped FLAME
                                file (not shipped)   file (not shipped)   tracking
                                or user codes        or user codes
    ==========================  ===================  ===================  =======================

Pixel centres at +0.5: the v1 training code's nerfstudio cameras cast rays through pixel + 0.5 and
rescale K by the image scale. The records keep the release's static world (the tracked head moves
in it). Codes concatenate the tracking arrays named by ``expression_keys`` per timestep, by
default expression (100), jaw (3) and eyes (6): 109 values.

User codes ``<SEQ>/expression_codes/frame_<t:05d>.npy`` override tracking. Video frames are
timesteps: frame ``t`` of every camera's video is timestep ``t`` (tracking's ``frames`` lists
them). Timesteps without a code are skipped. The tracked head pose (``rotation_matrices``,
``translation``, ``scale``) is drawn on the contact sheet.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re

import numpy as np

from data_pipelines import storage
from data_pipelines.real import common, video
from data_pipelines.real.common import ConversionError
from data_pipelines.splits import SplitPlan

log = logging.getLogger(__name__)

CALIBRATION_SIZE = (3208, 2200)  # (height, width) of the full-resolution images of v1 and v2
FIRST_PIXEL_CENTRE = 0.5
EXPRESSION_KEYS = ("expression", "jaw", "eyes")
CONVENTIONS = {
    "pixel_centres": "+0.5 in the release and the records",
    "intrinsics_reference_size": f"{list(CALIBRATION_SIZE)} for one shared K; the released images for per-camera K",
    "units": "metres",
    "extrinsics": "world->camera (OpenCV)",
    "world": "static capture world",
}
_IMAGE_FOLDERS = ("images-2x-73fps", "images-2x", "images")
_ALPHA_FOLDERS = ("alpha_map-73fps", "alpha_map")
_TRACKING_FILES = ("flame2023_tracking_v2.npz", "flame2023_tracking.npz")
_FRAME_DIR = re.compile(r"frame_(\d+)$")


def _first_existing(candidates: list[pathlib.Path]) -> pathlib.Path | None:
    return next((p for p in candidates if p.exists()), None)


def read_calibration(participant: pathlib.Path) -> tuple[dict[str, common.Calibration], bool]:
    """Cameras by serial, and whether each has its own intrinsics (benchmark) instead of a shared K."""
    path = _first_existing([participant / "calibration" / "camera_params.json", participant / "camera_params.json"])
    if path is None:
        raise ConversionError(f"{participant}: no calibration/camera_params.json (or camera_params.json)")
    try:
        params = json.loads(path.read_text())
        poses, intrinsics = params["world_2_cam"], params["intrinsics"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConversionError(f"{path} must be JSON with 'intrinsics' and 'world_2_cam' ({common.one_line(e)})") from e
    per_camera = isinstance(intrinsics, dict)
    cameras = {}
    for serial, pose in poses.items():
        try:
            K = np.asarray(intrinsics[serial] if per_camera else intrinsics, np.float64)
            world_to_cam = np.asarray(pose, np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise ConversionError(f"{path}: camera {serial} has no numeric intrinsics and world_2_cam ({common.one_line(e)})") from e
        if K.shape != (3, 3) or world_to_cam.shape != (4, 4):
            shapes = f"intrinsics {K.shape} and world_2_cam {world_to_cam.shape}"
            raise ConversionError(f"{path}: camera {serial} has {shapes} (expected 3x3, 4x4)")
        reference = None if per_camera else CALIBRATION_SIZE
        cameras[str(serial)] = common.Calibration(K, world_to_cam, reference, FIRST_PIXEL_CENTRE)
    return cameras, per_camera


def read_tracking(sequence: pathlib.Path, expression_keys: tuple[str, ...]) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
    """timestep -> (expression code, tracked head->world [4, 4] or None); empty without a tracking file."""
    path = _first_existing([sequence / "tracking" / name for name in _TRACKING_FILES])
    if path is None:
        return {}
    try:
        with np.load(path, allow_pickle=False) as tracking:
            arrays = {k: tracking[k] for k in tracking.files}
    except (OSError, ValueError, EOFError) as e:
        raise ConversionError(f"FLAME tracking {path} cannot be read ({common.one_line(e)})") from e
    missing = [k for k in expression_keys if k not in arrays]
    if missing:
        raise ConversionError(f"FLAME tracking {path} lacks {missing} (it has {sorted(arrays)})")
    codes = np.concatenate([arrays[k].reshape(len(arrays[k]), -1) for k in expression_keys], -1).astype(np.float32)
    timesteps = arrays.get("frames", np.arange(len(codes)))
    lengths = {k: len(arrays[k]) for k in (*expression_keys, "frames", "rotation_matrices", "translation") if k in arrays}
    if len(set(lengths.values())) != 1:
        raise ConversionError(f"FLAME tracking {path}: arrays disagree in length {lengths}")
    poses = [None] * len(codes)
    if "rotation_matrices" in arrays and "translation" in arrays:
        scale = float(np.asarray(arrays.get("scale", 1.0)).reshape(-1)[0])
        poses = [_pose(r * scale, t) for r, t in zip(arrays["rotation_matrices"], arrays["translation"], strict=True)]
    return {int(t): (code, pose) for t, code, pose in zip(timesteps, codes, poses, strict=True)}


def _pose(linear: np.ndarray, translation: np.ndarray) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = linear, translation
    return pose


def _user_codes(sequence: pathlib.Path) -> dict[int, np.ndarray]:
    folder = sequence / "expression_codes"
    if not folder.is_dir():
        return {}
    codes = {}
    for path in sorted(folder.glob("frame_*.npy")):
        if m := _FRAME_DIR.match(path.stem):
            codes[int(m.group(1))] = common.load_array(path.read_bytes(), str(path), ("code",))["code"].reshape(-1)
    return codes


def _per_camera(folder: pathlib.Path | None, extensions: tuple[str, ...]) -> dict[str, pathlib.Path]:
    if folder is None:
        return {}
    return {p.stem.removeprefix("cam_"): p for p in sorted(folder.iterdir()) if p.stem.startswith("cam_") and p.suffix in extensions}


def _frame_dirs(sequence: pathlib.Path) -> dict[int, pathlib.Path]:
    root = sequence / "timesteps" if (sequence / "timesteps").is_dir() else sequence
    return dict(sorted((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _FRAME_DIR.match(p.name))))


def _frame_views(frame_dir: pathlib.Path) -> dict[str, common.RawView]:
    """v1: one image file per camera in the frame's folder."""
    images = _per_camera(_first_existing([frame_dir / f for f in _IMAGE_FOLDERS]), (".png", ".jpg", ".jpeg"))
    alphas = _per_camera(_first_existing([frame_dir / f for f in _ALPHA_FOLDERS]), (".png",))
    posmaps = _per_camera(_first_existing([frame_dir / "position_map"]), (".npz", ".npy"))
    features = _per_camera(_first_existing([frame_dir / "feature_map"]), (".npy", ".npz"))
    optional = lambda files, serial: common.FileRef(files[serial]) if serial in files else None
    return {
        serial: common.RawView(common.FileRef(path), optional(alphas, serial), optional(posmaps, serial), optional(features, serial))
        for serial, path in images.items()
    }


def _video_views(sequence: pathlib.Path, timestep: int) -> dict[str, common.RawView]:
    """v2 and benchmark: frame ``timestep`` of each camera's video (and alpha-map video)."""
    images = _per_camera(sequence / "images", (".mp4",))
    alphas = _per_camera(_first_existing([sequence / "alpha_maps"]), (".mp4",))
    return {
        serial: common.RawView(
            video.VideoFrameRef(path, timestep), video.VideoFrameRef(alphas[serial], timestep) if serial in alphas else None
        )
        for serial, path in images.items()
    }


def read_participant(
    participant: pathlib.Path,
    name: str,
    *,
    expression_keys: tuple[str, ...] = EXPRESSION_KEYS,
    sequences: tuple[str, ...] | None = None,
    frame_stride: int = 1,
    max_frames: int | None = None,
) -> common.RawSubject:
    calibration, per_camera = read_calibration(participant)
    folder = participant / "sequences"
    sequence_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and (sequences is None or p.name in sequences))
    frames, skipped, releases = [], 0, set()
    for sequence in sequence_dirs:
        tracking = read_tracking(sequence, expression_keys)
        user = _user_codes(sequence)
        is_video = bool(_per_camera(_first_existing([sequence / "images"]), (".mp4",)))
        frame_dirs = {} if is_video else _frame_dirs(sequence)
        timesteps = sorted(set(tracking) | set(user)) if is_video else list(frame_dirs)
        if not timesteps:
            continue
        releases.add("nersemble benchmark videos" if per_camera else "nersemble v2 videos" if is_video else "nersemble v1 frames")
        for timestep in timesteps[::frame_stride]:
            code, head_to_world = user.get(timestep), tracking.get(timestep, (None, None))[1]
            if code is None and timestep in tracking:
                code = tracking[timestep][0]
            views = _video_views(sequence, timestep) if is_video else _frame_views(frame_dirs[timestep])
            if code is None or not views:
                skipped += 1
                continue
            frames.append(common.RawFrame(f"{sequence.name}/frame_{timestep:05d}", code, views, head_to_world))
    if skipped:
        log.warning("%s: skipped %d timesteps without an expression code (tracking or user codes) or images", name, skipped)
    if len(releases) > 1:
        raise ConversionError(f"{participant}: sequences of different releases ({sorted(releases)}); convert them separately")
    release = releases.pop() if releases else "nersemble (no sequences with frames)"
    return common.RawSubject(name, calibration, frames[:max_frames], release, skipped_frames=skipped)


def find_participants(src: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
    """``(folder, name)`` of each participant: ``<pid>/`` under ``src`` or under a benchmark task folder of ``src``."""
    if not src.is_dir():
        raise storage.DatasetError(f"no NeRSemble participants under {src}: it is not a directory")
    is_participant = lambda p: p.is_dir() and p.name.isdigit() and (p / "sequences").is_dir()
    found = [(p, p.name) for p in sorted(src.iterdir()) if is_participant(p)]
    for task in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.isdigit()):
        found += [(p, f"{task.name}/{p.name}") for p in sorted(task.iterdir()) if is_participant(p)]
    if not found:
        raise storage.DatasetError(f"no NeRSemble participants under {src}: expected <id>/sequences/ folders (or <task>/<id>/sequences/)")
    return found


def convert(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    val_subjects: int = 0,
    test_subjects: int = 0,
    heldout_frames: int = 0,
    scale: float = 1.0,
    expression_keys: tuple[str, ...] = EXPRESSION_KEYS,
    sequences: tuple[str, ...] | None = None,
    frame_stride: int = 1,
    max_frames: int | None = None,
    progress: bool = True,
) -> storage.DatasetInfo:
    """Converts every participant under ``src`` (sorted by id: later ones are held out) into a dataset."""
    common.forget_open_files()
    subjects = [
        read_participant(p, name, expression_keys=expression_keys, sequences=sequences, frame_stride=frame_stride, max_frames=max_frames)
        for p, name in find_participants(pathlib.Path(src))
    ]
    try:
        return common.write_dataset(
            subjects,
            out_dir,
            source="nersemble",
            scale=scale,
            plan=SplitPlan(len(subjects), val_subjects, test_subjects, heldout_frames),
            conventions={**CONVENTIONS, "expressions": f"FLAME tracking {list(expression_keys)} or user codes (expression_codes/)"},
            parameters={"src": str(src), "expression_keys": list(expression_keys), "sequences": sequences, "frame_stride": frame_stride},
            progress=progress,
        )
    finally:
        video.close_all()
