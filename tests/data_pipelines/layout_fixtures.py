"""Tiny Ava-256 and NeRSemble trees written as the releases publish them, with known ground truth.

Written from the published formats, not from our readers: Ava-256 as in its DATASHEET.md and
data/ava_dataset.py (AVIF images in per-camera zips, transposed KRT for 4096x2668 images in mm,
head poses and PLY meshes in zips, pixel centres at integer coordinates as its loader and demos
draw them); NeRSemble as in its v1 data manager (PNG frame folders, one K for 3208x2200), v2 and
benchmark toolkits (per-camera mp4 videos; the benchmark with per-camera K of its cropped images
and FLAME tracking .npz), pixel centres at +0.5 as its nerfstudio cameras use them.

Every image shows Gaussian dots at the projections of known 3D points, so a converter is correct
when the points, moved into our world, project through the stored records onto the dots.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pathlib
import zipfile

import imageio.v2 as imageio
import numpy as np
import plyfile
from PIL import Image

from data_pipelines import image_codec

DOT_SIGMA = 1.2  # pixels


def rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-max_angle, max_angle)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def rigid(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = r, t
    return m


def camera_looking_at_origin(rng: np.random.Generator, distance: float) -> np.ndarray:
    """OpenCV world->camera of a camera at ``distance`` in front (+z side), looking at the origin."""
    eye = np.array([rng.uniform(-0.4, 0.4), rng.uniform(-0.2, 0.2), 1.0])
    eye = distance * eye / np.linalg.norm(eye)
    forward = -eye / np.linalg.norm(eye)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    r = np.stack([right, down, forward])
    return rigid(r, -r @ eye)


def apply(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ transform[:3, :3].T + transform[:3, 3]


def project(K: np.ndarray, world_to_cam: np.ndarray, points: np.ndarray) -> np.ndarray:
    cam = apply(world_to_cam, points)
    return cam[:, :2] / cam[:, 2:] @ K[:2, :2].T + K[:2, 2]


def unproject(K: np.ndarray, world_to_cam: np.ndarray, height: int, width: int, depth: np.ndarray, first_centre: float) -> np.ndarray:
    """World points ``[H, W, 3]`` of the pixel centres (at ``first_centre`` + index) at camera depths ``depth``."""
    v, u = np.mgrid[:height, :width] + first_centre
    xy = (np.stack([u, v], -1) - K[:2, 2]) @ np.linalg.inv(K[:2, :2]).T
    cam = np.concatenate([xy, np.ones_like(xy[..., :1])], -1) * depth[..., None]
    return apply(np.linalg.inv(world_to_cam), cam)


def dots(height: int, width: int, uv: np.ndarray, first_centre: float) -> np.ndarray:
    """uint8 ``[H, W, 3]``: black with a white Gaussian dot at each ``uv [N, 2]`` (release's pixel convention)."""
    v, u = np.mgrid[:height, :width] + first_centre
    value = sum(np.exp(-((u - x) ** 2 + (v - y) ** 2) / (2 * DOT_SIGMA**2)) for x, y in uv)
    return np.repeat(np.round(np.clip(value, 0, 1) * 255).astype(np.uint8)[..., None], 3, -1)


def avif(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="AVIF", quality=100)
    return buffer.getvalue()


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def ply_bytes(vertices: np.ndarray) -> bytes:
    table = np.array([tuple(v) for v in vertices], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    buffer = io.BytesIO()
    plyfile.PlyData([plyfile.PlyElement.describe(table, "vertex")], text=False).write(buffer)
    return buffer.getvalue()


def write_video(path: pathlib.Path, frames: list[np.ndarray]) -> None:
    """An H.264 mp4 (lossless quantiser, 4:4:4 so the dots keep their sub-pixel centres)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(
        str(path), fps=24, codec="libx264", macro_block_size=1, pixelformat="yuv444p", ffmpeg_params=["-qp", "0"], ffmpeg_log_level="error"
    )
    for frame in frames:
        writer.append_data(frame)
    writer.close()


@dataclasses.dataclass
class Truth:
    """What a converter must recover, keyed by (subject name, frame name, camera name)."""

    points: dict = dataclasses.field(default_factory=dict)  # known points in our world (metres) drawn as dots
    expression: dict = dataclasses.field(default_factory=dict)  # (subject, frame) -> code, where the release gives one
    vertices: dict = dataclasses.field(default_factory=dict)  # (subject, frame) -> tracked mesh [V, 3] (mm, head frame)
    expression_of: dict = dataclasses.field(default_factory=dict)  # (subject, frame) -> expression name
    sizes: dict = dataclasses.field(default_factory=dict)  # subject -> stored image (height, width)


# --- Ava-256 -----------------------------------------------------------------------------------

AVA_CAMERAS = ("400940", "400943", "401031")
AVA_CAPTURES = ("m--20230101--1000--AAA001--GHS", "m--20230102--1100--BBB002--GHS", "m--20230103--1200--CCC003--GHS")
AVA_SIZE = (64, 42)  # stored (height, width); the calibration refers to 4096 x 2668
AVA_FULL = (4096, 2668)
AVA_VERTICES = 40
AVA_NOISE_MM = 0.05  # tracking noise on every vertex coordinate
AVA_EXPRESSIONS = {"EXP_neutral_peak": 2, "EXP_smile": 2, "EXP_jaw_open": 2, "EXP_free_face": 3}  # segment -> frames


def ava_transposed_extrinsics(world_to_cam: np.ndarray) -> np.ndarray:
    """Ava-256's "T": the 3x4 [R | t] stored transposed in a 4x4 (rows 0-2: R^T, row 3: t)."""
    stored = np.zeros((4, 4))
    stored[:4, :3] = world_to_cam[:3, :4].T
    stored[3, 3] = 1.0
    return stored


def write_ava256(root: pathlib.Path, rng: np.random.Generator, packed: tuple[bool, ...] = (True, False, True)) -> Truth:
    """Three captures (two packed as released, one unpacked into PNG folders with masks and position
    maps; user-made feature maps in all). Meshes: a subject's identity plus shared expression blendshapes (scaled a little per
    subject) weighted per segment; the free segment is random. One frame of capture 0 has a user code."""
    height, width = AVA_SIZE
    truth = Truth()
    blendshapes = rng.normal(0, 4.0, (3, AVA_VERTICES, 3))  # mm
    weights = {"EXP_neutral_peak": np.zeros(3), "EXP_smile": np.array([1.0, 0.2, 0.0]), "EXP_jaw_open": np.array([0.0, 0.3, 1.0])}
    template = rng.normal(0, 60.0, (AVA_VERTICES, 3))
    points_head = np.array([[-30.0, -22.0, 0.0], [30.0, -15.0, 8.0], [0.0, 34.0, -8.0]])  # mm, head frame
    for c, capture in enumerate(AVA_CAPTURES[: len(packed)]):
        decoder = root / capture / "decoder"
        decoder.mkdir(parents=True)
        truth.sizes[capture] = AVA_SIZE
        identity = template + rng.normal(0, 15.0, template.shape)
        style = 1.0 + rng.normal(0, 0.1, 3)
        cameras = {cam: camera_looking_at_origin(rng, 1000.0) for cam in AVA_CAMERAS}  # millimetres
        K_full = np.array([[200.0 * 4096 / height, 0, 1334.0 + 150 * rng.uniform(-1, 1)], [0, 200.0 * 4096 / height, 2048.0], [0, 0, 1]])
        krt = [
            {"cameraId": cam, "K": K_full.T.tolist(), "T": ava_transposed_extrinsics(w2c).tolist(), "distortion": [0.0] * 4}
            for cam, w2c in cameras.items()
        ]
        (decoder / "camera_calibration.json").write_text(json.dumps({"KRT": krt}))
        rows = [(segment, str(100 + 3 * i)) for i, segment in enumerate(s for s, n in AVA_EXPRESSIONS.items() for _ in range(n))]
        (decoder / "frame_list.csv").write_text("seg_id,frame_id\n" + "".join(f"{s},{f}\n" for s, f in rows))
        K_stored = np.diag([width / AVA_FULL[1], height / AVA_FULL[0], 1.0]) @ K_full  # as the loader divides K by its downsample
        archives = {}
        if packed[c]:
            (decoder / "image").mkdir()
            archives = {cam: zipfile.ZipFile(decoder / "image" / f"cam{cam}.zip", "w") for cam in AVA_CAMERAS}
        poses, meshes = {}, {}
        for segment, frame_id in rows:
            stem = f"{int(frame_id):06d}"
            name = f"{segment}/{stem}"
            head_to_world = rigid(rotation(rng, 0.2), rng.uniform(-20, 20, 3))  # mm
            poses[stem] = head_to_world
            w = weights.get(segment, rng.normal(0, 0.7, 3))
            vertices = identity + np.einsum("e,evk->vk", w * style, blendshapes) + rng.normal(0, AVA_NOISE_MM, identity.shape)
            meshes[stem] = vertices
            truth.vertices[(capture, name)] = vertices
            truth.expression_of[(capture, name)] = segment
            if c == 0 and segment == "EXP_free_face" and stem.endswith("121"):
                code = rng.normal(size=6).astype(np.float32)
                (decoder / "expression_codes").mkdir()
                np.save(decoder / "expression_codes" / f"{stem}.npy", code)
                truth.expression[(capture, name)] = code
            for cam, w2c in cameras.items():
                truth.points[(capture, name, cam)] = 0.001 * points_head  # our world: head frame, metres
                uv = project(K_stored, w2c, apply(head_to_world, points_head))  # integer pixel centres
                pixels = dots(height, width, uv, first_centre=0.0)
                (decoder / "feature_map" / f"cam{cam}").mkdir(parents=True, exist_ok=True)  # user-made, every capture
                np.save(decoder / "feature_map" / f"cam{cam}" / f"{stem}.npy", rng.normal(size=(4, 3, 5)).astype(np.float32))
                if packed[c]:
                    archives[cam].writestr(f"cam{cam}/{stem}.avif", avif(pixels))
                    continue
                for kind in ("image", "mask", "position_map"):
                    (decoder / kind / f"cam{cam}").mkdir(parents=True, exist_ok=True)
                (decoder / "image" / f"cam{cam}" / f"{stem}.png").write_bytes(image_codec.encode_png(pixels))
                mask = (rng.uniform(size=(height, width)) > 0.3).astype(np.uint8) * 255
                (decoder / "mask" / f"cam{cam}" / f"{stem}.png").write_bytes(image_codec.encode_png(mask))
                xyz = unproject(K_stored, w2c, height, width, rng.uniform(900.0, 1100.0, (height, width)), first_centre=0.0)
                confidence = rng.uniform(size=(height, width)).astype(np.float32)
                (decoder / "position_map" / f"cam{cam}" / f"{stem}.npz").write_bytes(npz_bytes(xyz=xyz, confidence=confidence))
        for archive in archives.values():
            archive.close()
        (decoder / "head_pose").mkdir()
        (decoder / "kinematic_tracking").mkdir()
        with (
            zipfile.ZipFile(decoder / "head_pose" / "head_pose.zip", "w") as pose_zip,
            zipfile.ZipFile(decoder / "kinematic_tracking" / "registration_vertices.zip", "w") as mesh_zip,
        ):
            for stem, pose in poses.items():
                pose_zip.writestr(f"{stem}.txt", "\n".join(" ".join(f"{v:.12f}" for v in row) for row in pose[:3]))
                mesh_zip.writestr(f"{stem}.ply", ply_bytes(meshes[stem]))
    return truth


# --- NeRSemble ---------------------------------------------------------------------------------

NERSEMBLE_SERIALS = ("220700191", "222200037", "222200039")
NERSEMBLE_FULL = (3208, 2200)
NERSEMBLE_SIZE = (64, 44)  # v1 and v2 stored (height, width), from 3208 x 2200
BENCHMARK_SIZE = (48, 48)  # the benchmark's cropped images
NERSEMBLE_TIMESTEPS = 4
SEQUENCE = "EXP-1-head"


def flame_tracking(rng: np.random.Generator, frames: np.ndarray) -> dict[str, np.ndarray]:
    """A FLAME tracking file's arrays as the benchmark publishes them (``FlameTracking``)."""
    n = len(frames)
    return {
        "shape": rng.normal(size=(1, 300)),
        "expression": rng.normal(size=(n, 100)),
        "rotation": rng.normal(0, 0.1, (n, 3)),
        "rotation_matrices": np.stack([rotation(rng, 0.3) for _ in range(n)]),
        "translation": rng.normal(0, 0.02, (n, 3)),
        "jaw": rng.normal(0, 0.1, (n, 3)),
        "frames": frames,
        "scale": np.ones((1, 1)),
        "neck": rng.normal(0, 0.1, (n, 3)),
        "eyes": rng.normal(0, 0.1, (n, 6)),
    }


def write_nersemble(root: pathlib.Path, rng: np.random.Generator) -> Truth:
    """Three releases side by side: 017 as v1 frames (PNG, a tracking file added as a user would,
    timestep 3 untracked, timestep 1 with a user code), 018 as v2 videos (tracking for timesteps
    0, 2, 3 added), and mono_flame_avatar/393 as the benchmark (48x48 crops with per-camera K,
    alpha-map videos, its own tracking)."""
    truth = Truth()
    points = np.array([[-0.04, -0.03, 0.0], [0.04, -0.02, 0.01], [0.0, 0.045, -0.01]])  # metres, world
    for subject, release in (("017", "v1"), ("018", "v2"), ("mono_flame_avatar/393", "benchmark")):
        participant = root / subject
        sequence = participant / "sequences" / SEQUENCE
        cameras = {serial: camera_looking_at_origin(rng, 1.0) for serial in NERSEMBLE_SERIALS}
        height, width = BENCHMARK_SIZE if release == "benchmark" else NERSEMBLE_SIZE
        truth.sizes[subject] = (height, width)
        if release == "benchmark":  # a crop of a downscaled image: K of its own pixels, principal point off-centre
            K_stored = {
                s: np.array([[250.0, 0, 21.0 + 4 * rng.uniform()], [0, 250.0, 26.0 - 4 * rng.uniform()], [0, 0, 1]]) for s in cameras
            }
            intrinsics = {s: k.tolist() for s, k in K_stored.items()}
        else:
            K_full = np.array([[9000.0, 0, 1100.0 + 80], [0, 9000.0, 1604.0 - 50], [0, 0, 1]])
            K_stored = dict.fromkeys(cameras, np.diag([width / NERSEMBLE_FULL[1], height / NERSEMBLE_FULL[0], 1.0]) @ K_full)
            intrinsics = K_full.tolist()
        calibration = participant / ("camera_params.json" if release == "v1" else "calibration/camera_params.json")
        calibration.parent.mkdir(parents=True)
        calibration.write_text(json.dumps({"world_2_cam": {s: w2c.tolist() for s, w2c in cameras.items()}, "intrinsics": intrinsics}))
        tracked = np.array([0, 1, 2]) if release == "v1" else np.array([0, 2, 3]) if release == "v2" else np.arange(NERSEMBLE_TIMESTEPS)
        tracking = flame_tracking(rng, tracked)
        (sequence / "tracking").mkdir(parents=True)
        np.savez(sequence / "tracking" / "flame2023_tracking_v2.npz", **tracking)
        for i, t in enumerate(tracked):
            code = np.concatenate([tracking["expression"][i], tracking["jaw"][i], tracking["eyes"][i]])
            truth.expression[(subject, f"{SEQUENCE}/frame_{t:05d}")] = code.astype(np.float32)
        if release == "v1":
            user_code = rng.normal(size=109).astype(np.float32)
            (sequence / "expression_codes").mkdir()
            np.save(sequence / "expression_codes" / "frame_00001.npy", user_code)
            truth.expression[(subject, f"{SEQUENCE}/frame_00001")] = user_code
        frames = {s: [] for s in cameras}
        for t in range(NERSEMBLE_TIMESTEPS):
            frame_points = points + rng.normal(0, 0.005, points.shape)  # the points move per timestep
            for serial, w2c in cameras.items():
                truth.points[(subject, f"{SEQUENCE}/frame_{t:05d}", serial)] = frame_points
                frames[serial].append(dots(height, width, project(K_stored[serial], w2c, frame_points), first_centre=0.5))
        for serial, images in frames.items():
            if release == "v1":
                for t, pixels in enumerate(images):
                    frame_dir = sequence / f"frame_{t:05d}"
                    (frame_dir / "images-2x-73fps").mkdir(parents=True, exist_ok=True)
                    (frame_dir / "alpha_map-73fps").mkdir(exist_ok=True)
                    (frame_dir / "images-2x-73fps" / f"cam_{serial}.png").write_bytes(image_codec.encode_png(pixels))
                    alpha = np.zeros((height, width), np.uint8)
                    alpha[5:-5, 4:-4] = 255
                    (frame_dir / "alpha_map-73fps" / f"cam_{serial}.png").write_bytes(image_codec.encode_png(alpha))
            else:
                write_video(sequence / "images" / f"cam_{serial}.mp4", images)
                if release == "benchmark":
                    write_video(sequence / "alpha_maps" / f"cam_{serial}.mp4", [np.full_like(p, 255) for p in images])
    return truth
