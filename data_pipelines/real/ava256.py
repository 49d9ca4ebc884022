"""Reader of Ava-256 as released (github.com/facebookresearch/ava-256: DATASHEET.md, data/ava_dataset.py).

One directory per capture under ``src`` (released as ``m--<date>--<time>--<SID>--GHS``)::

    <capture>/decoder/camera_calibration.json   {"KRT": [{"cameraId", "K" (3x3, stored transposed),
                                                 "T" (4x4: rows 0-2 R^T, row 3 t; world->camera), "distortion"}]}
    <capture>/decoder/frame_list.csv            "seg_id,frame_id", one row per frame, video order
    <capture>/decoder/image/cam<ID>.zip         members cam<ID>/<frame:06d>.avif (1024x667 or 2048x1334 RGB);
                                                or unpacked cam<ID>/<frame:06d>.{avif,png,jpg} folders
    <capture>/decoder/head_pose/head_pose.zip   members <frame:06d>.txt, 3x4 head->world (or a folder)
    <capture>/decoder/kinematic_tracking/registration_vertices.zip   members <frame:06d>.ply, the tracked
                                                mesh in the head frame (mm; or a registration_vertices/ folder)
    optional: decoder/expression_codes/<frame:06d>.npy (user codes [D], override the basis codes);
              decoder/{mask,position_map,feature_map}/ per camera like the images (PNG alpha, .npy/.npz)

Conventions (as the released loader and demos use them):

    ==========================  =================================================================
    pixel convention            pixel centres at integer coordinates: the loader's pixel grid is
                                ``arange(width)`` and demos/mesh.py draws ``K @ [R|t] @ x / 4``
                                onto the 4x-downsampled image; we add 0.5 after rescaling
    intrinsics reference size   4096x2668 (HxW) for every release package; rescaled per axis to
                                the stored image (x 1/4 for 1024x667, x 1/2 for 2048x1334)
    units                       millimetres (calibration, head poses, meshes); ``scale=0.001``
    extrinsic direction         "T" is world->camera, OpenCV axes; head poses are head->world
    world of the records        the head frame of each frame (cameras move, the head is still)
    expression codes            PCA basis of neutral-removed tracked meshes (``expression_basis``),
                                fitted on training subjects' training frames, saved with the
                                dataset as expression_basis.npz and reused for held-out subjects
    ==========================  =================================================================

A subject's neutral mesh is the mean of its ``EXP_neutral_peak`` frames (the segment the released
loader conditions on), or of all its frames when it has none. Lens distortion is ignored (the
released images are not undistorted; so does the released loader).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import pathlib

import numpy as np

from data_pipelines import storage
from data_pipelines.real import common, expression_basis, ply
from data_pipelines.real.common import ConversionError
from data_pipelines.splits import SplitPlan

log = logging.getLogger(__name__)

RELEASE = "ava256 decoder assets"
CALIBRATION_SIZE = (4096, 2668)  # (height, width) the intrinsics refer to
FIRST_PIXEL_CENTRE = 0.0
NEUTRAL_SEGMENT = "EXP_neutral_peak"
CONVENTIONS = {
    "pixel_centres": "integer in the release, +0.5 in the records",
    "intrinsics_reference_size": list(CALIBRATION_SIZE),
    "units": "millimetres",
    "extrinsics": "world->camera (OpenCV)",
    "world": "head frame per frame",
}
_IMAGE_EXTENSIONS = (".avif", ".png", ".jpg", ".jpeg")
_ARRAY_EXTENSIONS = (".npz", ".npy")


def read_calibration(path: pathlib.Path) -> dict[str, common.Calibration]:
    try:
        entries = json.loads(path.read_text())["KRT"]
        if not isinstance(entries, list):
            raise TypeError("'KRT' is not a list")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConversionError(f"{path} is not an Ava-256 calibration file (a JSON object with a 'KRT' list): {common.one_line(e)}") from e
    cameras = {}
    for n, entry in enumerate(entries):
        name = entry.get("cameraId", f"#{n}") if isinstance(entry, dict) else f"#{n}"
        try:
            K = np.asarray(entry["K"], np.float64).T
            stored = np.asarray(entry["T"], np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise ConversionError(f"{path}: camera {name} has no numeric 'K' and 'T' ({common.one_line(e)})") from e
        if K.shape != (3, 3) or stored.shape != (4, 4):
            raise ConversionError(f"{path}: camera {name} has K of shape {K.shape} and T of shape {stored.shape} (expected 3x3, 4x4)")
        world_to_cam = np.eye(4)
        world_to_cam[:3, :4] = stored[:4, :3].T
        cameras[str(name)] = common.Calibration(K, world_to_cam, CALIBRATION_SIZE, FIRST_PIXEL_CENTRE)
    return cameras


def read_frame_list(path: pathlib.Path) -> list[tuple[str, str]]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ConversionError(f"cannot read {path} ({common.one_line(e)})") from e
    if rows and not {"seg_id", "frame_id"} <= set(rows[0]):
        raise ConversionError(f"{path} must have the columns seg_id,frame_id; got {list(rows[0])}")
    for row in rows:
        if not (row["frame_id"] or "").strip().isdigit():
            raise ConversionError(f"{path}: frame_id {row['frame_id']!r} is not a frame number")
    return [(row["seg_id"], row["frame_id"]) for row in rows]


class _Files:
    """Files of one kind per frame: members of a zip, or files of a folder, named ``<prefix><frame:06d><ext>``."""

    def __init__(self, zip_path: pathlib.Path, folder: pathlib.Path, prefix: str, extensions: tuple[str, ...]):
        self.zip_path, self.folder, self.prefix, self.extensions = zip_path, folder, prefix, extensions
        self.members = common.zip_members(zip_path) if zip_path.is_file() else None

    def ref(self, frame_id: str) -> common.FileRef | None:
        stem = f"{int(frame_id):06d}"
        for ext in self.extensions:
            if self.members is not None and (member := f"{self.prefix}{stem}{ext}") in self.members:
                return common.FileRef(self.zip_path, member)
            if (path := self.folder / f"{stem}{ext}").is_file():
                return common.FileRef(path)
        return None


def _per_camera(root: pathlib.Path, camera: str, extensions: tuple[str, ...]) -> _Files:
    return _Files(root / f"cam{camera}.zip", root / f"cam{camera}", f"cam{camera}/", extensions)


def _head_pose(ref: common.FileRef) -> np.ndarray:
    try:
        pose = np.loadtxt(ref.read().decode().splitlines(), dtype=np.float64).reshape(-1, 4)
        if pose.shape[0] not in (3, 4):
            raise ValueError(f"{pose.size} values instead of a 3x4 matrix")
    except (ValueError, UnicodeDecodeError) as e:
        raise ConversionError(f"head pose {ref} is not a 3x4 matrix of numbers ({common.one_line(e)})") from e
    return np.vstack([pose[:3], [0.0, 0.0, 0.0, 1.0]])


def _mesh(ref: common.FileRef) -> np.ndarray:
    try:
        return ply.read_vertices(ref.read(), str(ref))
    except ConversionError:
        raise
    except Exception as e:
        raise ConversionError(f"tracked mesh {ref} cannot be read ({common.one_line(e)})") from e


@dataclasses.dataclass
class _Capture:
    """One capture before its expression codes are known."""

    subject: common.RawSubject
    meshes: list[common.FileRef | None]  # per frame: its tracked mesh
    user_codes: list[tuple[pathlib.Path, np.ndarray] | None]  # per frame: (file, code) of expression_codes/
    neutral: list[common.FileRef]  # meshes of the neutral segment (or empty)


def read_capture(capture: pathlib.Path, *, frame_stride: int = 1, max_frames: int | None = None) -> _Capture:
    decoder = capture / "decoder"
    calibration = read_calibration(decoder / "camera_calibration.json")
    all_frames = read_frame_list(decoder / "frame_list.csv")
    frame_list = all_frames[::frame_stride][:max_frames]
    poses = _Files(decoder / "head_pose" / "head_pose.zip", decoder / "head_pose", "", (".txt",))
    tracking = decoder / "kinematic_tracking"
    meshes = _Files(tracking / "registration_vertices.zip", tracking / "registration_vertices", "", (".ply",))
    kinds = {
        name: {cam: _per_camera(decoder / name, cam, ext) for cam in calibration}
        for name, ext in (
            ("image", _IMAGE_EXTENSIONS),
            ("mask", (".png",)),
            ("position_map", _ARRAY_EXTENSIONS),
            ("feature_map", _ARRAY_EXTENSIONS),
        )
    }
    frames, frame_meshes, codes, skipped = [], [], [], 0
    for segment, frame_id in frame_list:
        stem = f"{int(frame_id):06d}"
        code_path = decoder / "expression_codes" / f"{stem}.npy"
        code = None
        if code_path.is_file():
            code = (code_path, common.load_array(code_path.read_bytes(), str(code_path), ("code",))["code"].reshape(-1))
        mesh = meshes.ref(frame_id)
        views = {}
        for cam in calibration:
            if (image := kinds["image"][cam].ref(frame_id)) is not None:
                views[cam] = common.RawView(
                    image=image,
                    mask=kinds["mask"][cam].ref(frame_id),
                    posmap=kinds["position_map"][cam].ref(frame_id),
                    features=kinds["feature_map"][cam].ref(frame_id),
                )
        pose = poses.ref(frame_id)
        if not views or (code is None and mesh is None) or pose is None:
            skipped += 1  # dropped frames (~0.1% of the release) lack images, meshes or poses
            continue
        frames.append(common.RawFrame(f"{segment}/{stem}", np.zeros(0, np.float32), views, _head_pose(pose)))
        frame_meshes.append(mesh)
        codes.append(code)
    if skipped:
        log.warning("%s: skipped %d of %d frames without images, head pose, or mesh/code", capture.name, skipped, len(frame_list))
    neutral = [ref for seg, frame_id in all_frames if seg == NEUTRAL_SEGMENT and (ref := meshes.ref(frame_id)) is not None][:8]
    subject = common.RawSubject(capture.name, calibration, frames, RELEASE, head_frame=True, skipped_frames=skipped)
    return _Capture(subject, frame_meshes, codes, neutral)


def _neutral(capture: _Capture) -> np.ndarray:
    """The capture's neutral mesh ``[V, 3]`` (mm): mean of its neutral segment, else of all its frames."""
    return np.mean([_mesh(ref) for ref in capture.neutral or [m for m in capture.meshes if m is not None]], axis=0)


def _offsets(capture: _Capture, frames: list[int], neutral: np.ndarray) -> np.ndarray:
    """Neutral-removed tracked vertices ``[len(frames), V, 3]`` (mm) of ``frames`` of one capture."""
    vertices = [_mesh(capture.meshes[f]) for f in frames]
    for f, v in zip(frames, vertices, strict=True):
        if v.shape != neutral.shape:
            raise ConversionError(f"tracked mesh {capture.meshes[f]} has {v.shape[0]} vertices, the neutral mesh {neutral.shape[0]}")
    return np.stack(vertices) - neutral


def _encode(capture: _Capture, frames: list[int], basis: expression_basis.ExpressionBasis, chunk: int = 256) -> dict[int, np.ndarray]:
    """frame -> basis code of its tracked mesh, ``chunk`` meshes in memory at a time."""
    if not frames:
        return {}
    neutral, codes = _neutral(capture), {}
    for start in range(0, len(frames), chunk):
        part = frames[start : start + chunk]
        codes.update(zip(part, basis.encode(_offsets(capture, part, neutral)), strict=True))
    return codes


def _training_frames(captures: list[_Capture], plan: SplitPlan, limit: int) -> list[tuple[int, int]]:
    """(capture, frame) pairs of the train split with a mesh, evenly thinned to at most ``limit``."""
    pairs = [
        (s, f)
        for s, c in enumerate(captures)
        for f in range(len(c.subject.frames))
        if c.meshes[f] is not None and plan.split_of(s, f, len(c.subject.frames)) == "train"
    ]
    return [pairs[i] for i in np.linspace(0, len(pairs) - 1, limit).round().astype(int)] if len(pairs) > limit else pairs


def expression_codes(
    captures: list[_Capture], plan: SplitPlan, dim: int, basis: expression_basis.ExpressionBasis | None, fit_frames: int
) -> tuple[list[common.RawSubject], expression_basis.ExpressionBasis | None]:
    """Subjects with codes: user codes where given, else the basis codes of their tracked meshes."""
    needs_basis = any(code is None for c in captures for code in c.user_codes)
    if needs_basis and basis is None:
        pairs = _training_frames(captures, plan, fit_frames)
        by_capture = {s: [f for t, f in pairs if t == s] for s in {s for s, _ in pairs}}
        offsets = [_offsets(captures[s], frames, _neutral(captures[s])) for s, frames in sorted(by_capture.items())]
        try:
            basis = expression_basis.fit(np.concatenate(offsets) if offsets else np.zeros((0, 1, 3)), dim)
        except ValueError as e:
            raise ConversionError(f"expression basis from kinematic_tracking/registration_vertices: {e}") from e
    subjects = []
    for capture in captures:
        for path, code in filter(None, capture.user_codes if needs_basis else []):
            if code.shape != (basis.dim,):
                raise ConversionError(f"user expression code {path} has shape {code.shape}; the basis codes have {basis.dim} values")
        basis_codes = _encode(capture, [f for f, code in enumerate(capture.user_codes) if code is None], basis)
        frames = [
            dataclasses.replace(frame, expression=code[1] if code is not None else basis_codes[f])
            for f, (frame, code) in enumerate(zip(capture.subject.frames, capture.user_codes, strict=True))
        ]
        subjects.append(dataclasses.replace(capture.subject, frames=frames))
    return subjects, basis if needs_basis else None


def find_captures(src: pathlib.Path) -> list[pathlib.Path]:
    if not src.is_dir():
        raise storage.DatasetError(f"no Ava-256 captures under {src}: it is not a directory")
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
    expression_dim: int = 16,
    basis_path: str | os.PathLike | None = None,
    fit_frames: int = 4096,
    progress: bool = True,
) -> storage.DatasetInfo:
    """Converts every capture under ``src`` (sorted by name: later ones are held out) into a dataset.

    Frames without a user code get ``expression_dim`` basis codes: from the basis at ``basis_path``
    (for example the ``expression_basis.npz`` of the training dataset, to convert held-out subjects
    alone) or fitted on at most ``fit_frames`` training frames.
    """
    common.forget_open_files()
    captures = [read_capture(c, frame_stride=frame_stride, max_frames=max_frames) for c in find_captures(pathlib.Path(src))]
    plan = SplitPlan(len(captures), val_subjects, test_subjects, heldout_frames)
    basis = expression_basis.ExpressionBasis.load(basis_path) if basis_path is not None else None
    subjects, used = expression_codes(captures, plan, expression_dim, basis, fit_frames)
    if used is None:
        source = "user codes (decoder/expression_codes/)"
    elif basis_path is not None:
        source = f"registration_vertices through the basis {basis_path} ({used.dim} components)"
    else:
        source = f"registration_vertices through a {used.dim}-component basis fitted on training frames ({expression_basis.FILE})"
    return common.write_dataset(
        subjects,
        out_dir,
        source="ava256",
        scale=scale,
        plan=plan,
        conventions={**CONVENTIONS, "expressions": source},
        extra_files={expression_basis.FILE: used.to_bytes()} if used is not None else None,
        parameters={"src": str(src), "frame_stride": frame_stride, "max_frames": max_frames},
        progress=progress,
    )
