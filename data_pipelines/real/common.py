"""What the layout readers share: raw subjects/frames/views, camera conventions, record writing.

A reader turns an on-disk release into ``RawSubject``s (calibration per camera, frames in video
order with an expression code and per-camera file references); ``write_dataset`` turns those into
records. On the way, coordinates change into ours: ``world' = scale * head_from_world(world)``
(metres; the head at the origin when the subject is expressed in its head frame), and intrinsics
into the stored image's pixels with pixel centres at +0.5 (``stored_intrinsics``).

Every image is decoded in full and its size checked against the calibration while it is written;
a file that fails raises ``ConversionError``: one line naming the view, the file (and zip member or
video frame) and the reason. The dataset directory appears only when every record is written.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import os
import pathlib
import zipfile
from typing import Any, Protocol

import numpy as np
import tqdm

from data_pipelines import image_codec, schema, splits, storage
from data_pipelines.real import overlay

log = logging.getLogger(__name__)

SHEET_FILE = "contact_sheet.png"


class ConversionError(ValueError):
    """A release file that cannot be converted; the message is one line naming the file."""


def one_line(error: BaseException) -> str:
    """The first line of an exception's message (ffmpeg and zipfile errors span many)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else 'no reason given'}"


class Ref(Protocol):
    """Where one image (or array) of a view comes from; ``str()`` names it for error messages."""

    def read(self) -> bytes | np.ndarray: ...


@functools.lru_cache(maxsize=64)
def _open_zip(path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ConversionError(f"{path} is not a readable zip archive ({one_line(e)})") from e


def forget_open_files() -> None:
    """Drops cached zip handles, so a new conversion sees the files as they are now."""
    _open_zip.cache_clear()


def zip_members(path: pathlib.Path) -> set[str]:
    return set(_open_zip(str(path)).namelist())


@dataclasses.dataclass(frozen=True)
class FileRef:
    """The bytes of a file on disk, or of ``member`` of the zip archive at ``path``."""

    path: pathlib.Path
    member: str | None = None

    def read(self) -> bytes:
        if self.member is None:
            return self.path.read_bytes()
        return _open_zip(str(self.path)).read(self.member)

    def __str__(self) -> str:
        return str(self.path) if self.member is None else f"{self.path} (zip member {self.member})"


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A camera as the release calibrates it.

    ``K`` is in the release's pixel convention (``first_pixel_centre``: 0.0 when pixel centres
    are at integer coordinates, 0.5 when at +0.5 like ours) for images of ``reference_size``
    (height, width); ``None`` means the intrinsics refer to the released images themselves.
    """

    K: np.ndarray  # [3, 3]
    world_to_cam: np.ndarray  # [4, 4], OpenCV, release's world units
    reference_size: tuple[int, int] | None
    first_pixel_centre: float


def stored_intrinsics(calibration: Calibration, size: tuple[int, int], what: str) -> np.ndarray:
    """``K [3, 3]`` (float64) for a stored image of ``size`` (height, width), pixel centres at +0.5.

    Scales from the reference size (per axis), then moves the principal point by
    ``0.5 - first_pixel_centre``. Raises when the image's aspect ratio differs from the reference
    by more than a pixel of rounding, or the principal point falls outside the image.
    """
    height, width = size
    ref_height, ref_width = calibration.reference_size or size
    if abs(ref_height * width / ref_width - height) > 1.0:
        raise ConversionError(f"{what} is {width}x{height} (WxH); its calibration refers to {ref_width}x{ref_height} images")
    K = np.diag([width / ref_width, height / ref_height, 1.0]) @ np.asarray(calibration.K, np.float64)
    K[:2, 2] += 0.5 - calibration.first_pixel_centre
    if not (0 < K[0, 2] < width and 0 < K[1, 2] < height):
        raise ConversionError(f"{what}: principal point {K[:2, 2].round(2).tolist()} lies outside its {width}x{height} image")
    return K


@dataclasses.dataclass(frozen=True)
class RawView:
    image: Ref  # encoded bytes (PNG/JPEG/AVIF) or decoded uint8 [H, W, 3] (video frames)
    mask: Ref | None = None  # alpha as an encoded image or a decoded [H, W, 3] frame (first channel)
    posmap: Ref | None = None  # .npy [H, W, 3] or .npz with "xyz" (and optional "confidence" [H, W])
    features: Ref | None = None  # .npy [h, w, C] or .npz with "features"


@dataclasses.dataclass(frozen=True)
class RawFrame:
    name: str
    expression: np.ndarray  # [D]
    views: dict[str, RawView]  # camera name -> files
    head_to_world: np.ndarray | None = None  # [4, 4] tracked head pose in the release's world, if any


@dataclasses.dataclass(frozen=True)
class RawSubject:
    name: str
    calibration: dict[str, Calibration]
    frames: list[RawFrame]
    release: str  # which published release the reader recognised, e.g. "nersemble v2 videos"
    head_frame: bool = False  # records in the head frame (frames must carry head_to_world)
    skipped_frames: int = 0


def load_array(data: bytes, what: str, npz_keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """``.npy`` bytes -> ``{npz_keys[0]: array}``; ``.npz`` bytes -> the listed keys present (never unpickles)."""
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ConversionError(f"cannot read {what} as .npy/.npz without pickle ({one_line(e)})") from e
    if isinstance(loaded, np.ndarray):
        return {npz_keys[0]: loaded}
    with loaded:
        if npz_keys[0] not in loaded.files:
            raise ConversionError(f"{what} is an .npz without the key {npz_keys[0]!r} (it has {loaded.files})")
        return {k: loaded[k] for k in npz_keys if k in loaded.files}


def ours_from_world(head_to_world: np.ndarray | None, scale: float) -> np.ndarray:
    """``[4, 4]`` (float64) taking release-world points to ours: into the head frame if given, then scaled."""
    transform = np.eye(4) if head_to_world is None else np.linalg.inv(head_to_world.astype(np.float64))
    return np.diag([scale, scale, scale, 1.0]) @ transform


def to_our_world(world_to_cam: np.ndarray, head_to_world: np.ndarray | None, scale: float) -> np.ndarray:
    """``world_to_cam [4, 4]`` in the release's world -> in ours (rotation kept, translation scaled)."""
    transform = world_to_cam.astype(np.float64) @ (np.eye(4) if head_to_world is None else head_to_world.astype(np.float64))
    transform[:3, 3] *= scale
    return transform.astype(np.float32)


def points_to_our_world(points: np.ndarray, head_to_world: np.ndarray | None, scale: float) -> np.ndarray:
    """Release-world points ``[..., 3]`` -> ours."""
    transform = ours_from_world(head_to_world, scale)
    return (points.astype(np.float64) @ transform[:3, :3].T + transform[:3, 3]).astype(np.float32)


def _read(ref: Ref, what: str) -> bytes | np.ndarray:
    try:
        return ref.read()
    except ConversionError as e:
        raise ConversionError(f"{what}: {e}") from e
    except Exception as e:  # zip CRC errors, OS errors, ffmpeg errors: all name the file.
        raise ConversionError(f"{what}: cannot read {ref} ({one_line(e)})") from e


def _decoded_image(ref: Ref, what: str, reencode: str) -> tuple[bytes, np.ndarray]:
    """Encoded record image and its fully decoded pixels ``[H, W, 3]`` (PNG/JPEG bytes kept as they are)."""
    data = _read(ref, what)
    if isinstance(data, np.ndarray):
        pixels = data
    else:
        try:
            pixels = image_codec.decode_rgb(data, what=str(ref))
        except ValueError as e:  # image_codec names the file
            raise ConversionError(f"{what}: {str(e).splitlines()[0]}") from e
    if isinstance(data, bytes):
        try:
            schema.image_format(data)
            return data, pixels  # PNG and JPEG are stored as released
        except schema.RecordError:
            pass
    encode = image_codec.encode_png if reencode == "png" else image_codec.encode_jpeg
    return encode(np.ascontiguousarray(pixels, np.uint8)), pixels


def _decoded_mask(ref: Ref, what: str, size: tuple[int, int]) -> bytes:
    data = _read(ref, what)
    if isinstance(data, np.ndarray):
        alpha = data[..., 0] if data.ndim == 3 else data
    else:
        try:
            alpha = image_codec.decode_grey(data, what=str(ref))
        except ValueError as e:  # image_codec names the file
            raise ConversionError(f"{what}: {str(e).splitlines()[0]}") from e
    if alpha.shape != size:
        raise ConversionError(f"{what}: {ref} is {alpha.shape[1]}x{alpha.shape[0]}, its image {size[1]}x{size[0]} (WxH)")
    return image_codec.encode_png(np.ascontiguousarray(alpha, np.uint8))


@dataclasses.dataclass(frozen=True)
class WrittenView:
    """A converted view with its decoded pixels (for the contact sheet)."""

    record: schema.ViewRecord
    pixels: np.ndarray  # uint8 [H, W, 3]
    head_to_ours: np.ndarray | None  # [4, 4] tracked head pose in our world


def make_view(
    ids: tuple[int, int, int],
    names: tuple[str, str, str],
    raw_frame: RawFrame,
    view: RawView,
    calibration: Calibration,
    *,
    scale: float,
    head_frame: bool,
    reencode: str,
) -> WrittenView:
    where = "/".join(names)
    image, pixels = _decoded_image(view.image, f"image of view {where}", reencode)
    size = pixels.shape[:2]
    K = stored_intrinsics(calibration, size, f"image of view {where} ({view.image})")
    head = raw_frame.head_to_world if head_frame else None
    mask = None if view.mask is None else _decoded_mask(view.mask, f"mask of view {where}", size)
    posmap = confidence = None
    if view.posmap is not None:
        what = f"position map of view {where} ({view.posmap})"
        arrays = load_array(_read(view.posmap, what), what, ("xyz", "confidence"))
        if arrays["xyz"].ndim != 3 or arrays["xyz"].shape[-1] != 3:
            raise ConversionError(f"{what} must be [H, W, 3], got {arrays['xyz'].shape}")
        posmap = points_to_our_world(arrays["xyz"], head, scale).astype(np.float16)
        if "confidence" in arrays:
            confidence = arrays["confidence"].astype(np.float16)
    features = None
    if view.features is not None:
        what = f"feature map of view {where} ({view.features})"
        features = load_array(_read(view.features, what), what, ("features",))["features"]
        if features.ndim != 3:
            raise ConversionError(f"{what} must be [h, w, C], got {features.shape}")
        features = features.astype(np.float16)
    try:
        record = schema.ViewRecord(
            subject=ids[0],
            frame=ids[1],
            camera=ids[2],
            image=image,
            mask=mask,
            K=K.astype(np.float32),
            world_to_cam=to_our_world(calibration.world_to_cam, head, scale),
            expression=np.asarray(raw_frame.expression, np.float32).reshape(-1),
            posmap=posmap,
            posmap_confidence=confidence,
            features=features,
            subject_name=names[0],
            frame_name=names[1],
            camera_name=names[2],
        )
    except schema.RecordError as e:
        raise ConversionError(f"view {where}: {one_line(e)}") from e
    head_to_ours = None
    if raw_frame.head_to_world is not None:
        # Head-local points taken as metres: the axes are drawn ``axis_length`` metres long in our world.
        head_to_ours = ours_from_world(head, scale) @ raw_frame.head_to_world.astype(np.float64) @ np.diag([1 / scale] * 3 + [1.0])
    return WrittenView(record, pixels, head_to_ours)


def layout_summary(subjects: list[RawSubject]) -> dict[str, dict[str, Any]]:
    """Per release: subjects, frames, views, skipped frames."""
    summary: dict[str, dict[str, Any]] = {}
    for subject in subjects:
        entry = summary.setdefault(subject.release, {"subjects": 0, "frames": 0, "views": 0, "skipped_frames": 0})
        entry["subjects"] += 1
        entry["frames"] += len(subject.frames)
        entry["views"] += sum(len(f.views) for f in subject.frames)
        entry["skipped_frames"] += subject.skipped_frames
    return summary


def write_dataset(
    subjects: list[RawSubject],
    out_dir: str | os.PathLike,
    *,
    source: str,
    scale: float,
    plan: splits.SplitPlan,
    conventions: dict[str, Any],
    reencode: str = "png",
    extra_files: dict[str, bytes] | None = None,
    parameters: dict[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> storage.DatasetInfo:
    """Writes the records of ``subjects`` (in order) into ``plan``'s splits, plus ``extra_files``
    and a contact sheet (``SHEET_FILE``) of the first frame: every view with the tracked head-pose
    axes projected through its converted camera."""
    if not subjects:
        raise ConversionError(f"no subjects found to convert into {out_dir}")
    camera_names = sorted({name for s in subjects for name in s.calibration})
    camera_ids = {name: i for i, name in enumerate(camera_names)}
    total = sum(len(f.views) for s in subjects for f in s.frames)
    for subject in subjects:
        if not subject.frames:
            raise ConversionError(f"subject {subject.name} ({subject.release}) has no frames with images and an expression code")
    sheet_views: list[WrittenView] = []
    with (
        storage.DatasetWriter(out_dir, overwrite=overwrite) as writer,
        tqdm.tqdm(total=total, desc=f"converting {source}", disable=not progress) as bar,
    ):
        for s, subject in enumerate(subjects):
            for f, raw_frame in enumerate(subject.frames):
                split = plan.split_of(s, f, len(subject.frames))
                for camera_name in sorted(raw_frame.views, key=camera_ids.__getitem__):
                    if camera_name not in subject.calibration:
                        raise ConversionError(f"{subject.name}/{raw_frame.name}: camera {camera_name} has images but no calibration")
                    written = make_view(
                        (s, f, camera_ids[camera_name]),
                        (subject.name, raw_frame.name, camera_name),
                        raw_frame,
                        raw_frame.views[camera_name],
                        subject.calibration[camera_name],
                        scale=scale,
                        head_frame=subject.head_frame,
                        reencode=reencode,
                    )
                    writer.write(split, written.record)
                    if s == 0 and f == 0:
                        sheet_views.append(written)
                    bar.update(1)
        for name, data in {**(extra_files or {}), SHEET_FILE: contact_sheet(sheet_views)}.items():
            writer.add_file(name, data)
        return writer.close(
            source=source,
            subject_names=[s.name for s in subjects],
            camera_names=camera_names,
            parameters={
                "scale": scale,
                "val_subjects": plan.val_subjects,
                "test_subjects": plan.test_subjects,
                "heldout_frames": plan.heldout_frames,
                "layouts": layout_summary(subjects),
                "conventions": conventions,
                **(parameters or {}),
            },
        )


def contact_sheet(views: list[WrittenView], axis_length: float = 0.1) -> bytes:
    """PNG of the views side by side, each with the head-pose axes (x red, y green, z blue,
    ``axis_length`` metres) projected through its stored camera."""
    drawn = []
    for view in views:
        pixels = view.pixels.copy()
        if view.head_to_ours is not None:
            axes = overlay.axis_points(view.head_to_ours, axis_length)
            uv, depth = overlay.project(view.record.K, view.record.world_to_cam, axes)
            if (depth > 0).all():
                pixels = overlay.draw_axes(pixels, uv)
        drawn.append(pixels)
    return image_codec.encode_png(overlay.tile(drawn))
