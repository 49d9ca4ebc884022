"""What the layout readers share: raw subjects/frames/views, unit and head-frame changes, record writing.

A reader turns an on-disk layout into ``RawSubject``s (calibration per camera, frames in video order
with an expression code and per-camera file loaders); ``write_dataset`` turns those into records.
Coordinates are changed into our convention on the way: ``world' = scale * head_from_world(world)``,
metres with the head at the origin when the layout provides head poses.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import os
import pathlib
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import tqdm

from data_pipelines import image_codec, schema, splits, storage

log = logging.getLogger(__name__)

Loader = Callable[[], bytes]


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A camera as the layout calibrates it: intrinsics for an image of ``size`` (height, width)."""

    K: np.ndarray  # [3, 3]
    world_to_cam: np.ndarray  # [4, 4], OpenCV, layout's world units
    size: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class RawView:
    image: Loader
    mask: Loader | None = None
    posmap: Loader | None = None  # .npy [H, W, 3] or .npz with "xyz" (and optional "confidence" [H, W])
    features: Loader | None = None  # .npy [h, w, C] or .npz with "features"


@dataclasses.dataclass(frozen=True)
class RawFrame:
    name: str
    expression: np.ndarray  # [D]
    views: dict[str, RawView]  # camera name -> files
    head_to_world: np.ndarray | None = None  # [4, 4] head pose in the layout's world, if tracked


@dataclasses.dataclass(frozen=True)
class RawSubject:
    name: str
    calibration: dict[str, Calibration]
    frames: list[RawFrame]


def file_loader(path: pathlib.Path) -> Loader:
    return path.read_bytes


@functools.lru_cache(maxsize=64)
def _open_zip(path: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)


def zip_loader(path: pathlib.Path, member: str) -> Loader:
    return lambda: _open_zip(str(path)).read(member)


def zip_members(path: pathlib.Path) -> set[str]:
    return set(_open_zip(str(path)).namelist())


def first_existing(candidates: list[pathlib.Path]) -> pathlib.Path | None:
    return next((p for p in candidates if p.exists()), None)


def load_array(data: bytes, what: str, npz_keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """``.npy`` bytes -> ``{npz_keys[0]: array}``; ``.npz`` bytes -> the listed keys present (never unpickles)."""
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"cannot read {what} as .npy/.npz without pickle: {e}") from e
    if isinstance(loaded, np.ndarray):
        return {npz_keys[0]: loaded}
    with loaded:
        if npz_keys[0] not in loaded.files:
            raise ValueError(f"{what} is an .npz without the key {npz_keys[0]!r} (it has {loaded.files})")
        return {k: loaded[k] for k in npz_keys if k in loaded.files}


def to_our_world(world_to_cam: np.ndarray, head_to_world: np.ndarray | None, scale: float) -> np.ndarray:
    """``world_to_cam [4, 4]`` in the layout's world -> in ours (head frame if given, metres via ``scale``)."""
    transform = world_to_cam.astype(np.float64) @ (np.eye(4) if head_to_world is None else head_to_world.astype(np.float64))
    transform[:3, 3] *= scale
    return transform.astype(np.float32)


def points_to_our_world(points: np.ndarray, head_to_world: np.ndarray | None, scale: float) -> np.ndarray:
    """World points ``[..., 3]`` of the layout -> ours."""
    points = points.astype(np.float64)
    if head_to_world is not None:
        rotation, translation = head_to_world[:3, :3], head_to_world[:3, 3]
        points = (points - translation) @ rotation  # R^T (x - t), row vectors
    return (points * scale).astype(np.float32)


def _image_bytes(data: bytes, what: str, reencode: str) -> tuple[bytes, tuple[int, int]]:
    """Keeps PNG/JPEG bytes as they are; anything else (AVIF, ...) is decoded and re-encoded."""
    try:
        schema.image_format(data)
        return data, image_codec.image_size(data, what=what)
    except schema.RecordError:
        pixels = image_codec.decode_rgb(data, what=what)
        encode = image_codec.encode_png if reencode == "png" else image_codec.encode_jpeg
        return encode(pixels), pixels.shape[:2]


def make_record(
    subject: int,
    frame: int,
    camera: int,
    names: tuple[str, str, str],
    raw_frame: RawFrame,
    view: RawView,
    calibration: Calibration,
    *,
    scale: float,
    reencode: str,
) -> schema.ViewRecord:
    what = f"{names[0]}/{names[1]}/{names[2]}"
    image, (height, width) = _image_bytes(view.image(), f"image of {what}", reencode)
    K = calibration.K.astype(np.float64).copy()
    K[0] *= width / calibration.size[1]
    K[1] *= height / calibration.size[0]
    mask = None
    if view.mask is not None:
        alpha = image_codec.decode_grey(view.mask(), what=f"mask of {what}")
        if alpha.shape != (height, width):
            raise ValueError(f"mask of {what} is {alpha.shape}, its image {(height, width)}")
        mask = image_codec.encode_png(alpha)
    posmap = confidence = None
    if view.posmap is not None:
        arrays = load_array(view.posmap(), f"position map of {what}", ("xyz", "confidence"))
        if arrays["xyz"].ndim != 3 or arrays["xyz"].shape[-1] != 3:
            raise ValueError(f"position map of {what} must be [H, W, 3], got {arrays['xyz'].shape}")
        posmap = points_to_our_world(arrays["xyz"], raw_frame.head_to_world, scale).astype(np.float16)
        if "confidence" in arrays:
            confidence = arrays["confidence"].astype(np.float16)
    features = None
    if view.features is not None:
        features = load_array(view.features(), f"feature map of {what}", ("features",))["features"]
        if features.ndim != 3:
            raise ValueError(f"feature map of {what} must be [h, w, C], got {features.shape}")
        features = features.astype(np.float16)
    return schema.ViewRecord(
        subject=subject,
        frame=frame,
        camera=camera,
        image=image,
        mask=mask,
        K=K.astype(np.float32),
        world_to_cam=to_our_world(calibration.world_to_cam, raw_frame.head_to_world, scale),
        expression=np.asarray(raw_frame.expression, np.float32).reshape(-1),
        posmap=posmap,
        posmap_confidence=confidence,
        features=features,
        subject_name=names[0],
        frame_name=names[1],
        camera_name=names[2],
    )


def write_dataset(
    subjects: list[RawSubject],
    out_dir: str | os.PathLike,
    *,
    source: str,
    scale: float,
    val_subjects: int,
    test_subjects: int,
    heldout_frames: int,
    reencode: str = "png",
    parameters: dict[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> storage.DatasetInfo:
    """Writes the records of ``subjects`` (in order) with held-out subjects and frames."""
    if not subjects:
        raise ValueError(f"no subjects found to convert into {out_dir}")
    plan = splits.SplitPlan(len(subjects), val_subjects, test_subjects, heldout_frames)
    camera_names = sorted({name for s in subjects for name in s.calibration})
    camera_ids = {name: i for i, name in enumerate(camera_names)}
    total = sum(len(f.views) for s in subjects for f in s.frames)
    with (
        storage.DatasetWriter(out_dir, overwrite=overwrite) as writer,
        tqdm.tqdm(total=total, desc=f"converting {source}", disable=not progress) as bar,
    ):
        for s, subject in enumerate(subjects):
            if not subject.frames:
                raise ValueError(f"subject {subject.name} has no frames")
            for f, raw_frame in enumerate(subject.frames):
                split = plan.split_of(s, f, len(subject.frames))
                for camera_name in sorted(raw_frame.views, key=camera_ids.__getitem__):
                    if camera_name not in subject.calibration:
                        raise ValueError(f"{subject.name}/{raw_frame.name}: camera {camera_name} has images but no calibration")
                    record = make_record(
                        s,
                        f,
                        camera_ids[camera_name],
                        (subject.name, raw_frame.name, camera_name),
                        raw_frame,
                        raw_frame.views[camera_name],
                        subject.calibration[camera_name],
                        scale=scale,
                        reencode=reencode,
                    )
                    writer.write(split, record)
                    bar.update(1)
        return writer.close(
            source=source,
            subject_names=[s.name for s in subjects],
            camera_names=camera_names,
            parameters={
                "scale": scale,
                "val_subjects": val_subjects,
                "test_subjects": test_subjects,
                "heldout_frames": heldout_frames,
                **(parameters or {}),
            },
        )
