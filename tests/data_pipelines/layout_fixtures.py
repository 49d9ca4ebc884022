"""Tiny Ava-256 and NeRSemble trees in their on-disk layouts, with known ground truth.

Position maps are made in each layout's own world (Ava-256: millimetres, heads moving per frame;
NeRSemble: metres, static world) by unprojecting pixel centres through the layout's cameras, so a
correct converter must produce position maps that project back onto the stored pixel grid through
the converted cameras (in metres, head frame for Ava-256, intrinsics rescaled to the stored size).
"""

import dataclasses
import io
import json
import pathlib
import zipfile

import numpy as np
from PIL import Image

from data_pipelines import image_codec


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


def unproject(K: np.ndarray, world_to_cam: np.ndarray, height: int, width: int, depth: np.ndarray) -> np.ndarray:
    """World points ``[H, W, 3]`` of the pixel centres at camera depths ``depth [H, W]``."""
    v, u = np.mgrid[:height, :width] + 0.5
    xy = (np.stack([u, v], -1) - K[:2, 2]) @ np.linalg.inv(K[:2, :2]).T
    cam = np.concatenate([xy, np.ones_like(xy[..., :1])], -1) * depth[..., None]
    cam_to_world = np.linalg.inv(world_to_cam)
    return cam @ cam_to_world[:3, :3].T + cam_to_world[:3, 3]


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@dataclasses.dataclass
class Truth:
    """What a converter must recover, keyed by (subject name, frame name, camera name)."""

    K: dict  # stored-size intrinsics
    expression: dict
    image_size: tuple[int, int]
    center: dict = dataclasses.field(default_factory=dict)  # camera centre in our world (metres, head frame)
    forward: dict = dataclasses.field(default_factory=dict)  # camera viewing direction in our world


def camera_pose_in(world_to_cam: np.ndarray, world_from_ours: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre and viewing direction of a layout camera in our world (``x_ours = scale * world_from_ours^-1 x``)."""
    cam_to_world = np.linalg.inv(world_to_cam)
    ours_from_world = np.linalg.inv(world_from_ours)
    center = ours_from_world[:3, :3] @ cam_to_world[:3, 3] + ours_from_world[:3, 3]
    return scale * center, ours_from_world[:3, :3] @ cam_to_world[:3, 2]


AVA_CAMERAS = ("400940", "400943", "401031")


def ava_transposed_extrinsics(world_to_cam: np.ndarray) -> np.ndarray:
    """Ava-256's "T": the 3x4 [R | t] stored transposed in a 4x4 (rows 0-2: R^T, row 3: t)."""
    stored = np.zeros((4, 4))
    stored[:4, :3] = world_to_cam[:3, :4].T
    stored[3, 3] = 1.0
    return stored


AVA_SIZE = (32, 21)  # stored (height, width); the calibration refers to 4096 x 2668


def write_ava256(root: pathlib.Path, rng: np.random.Generator) -> Truth:
    """Two captures: one as released (AVIF images in per-camera zips, head poses in a zip), one unpacked
    (PNG folders, masks, head poses as text files); one frame of the second lacks an expression code."""
    height, width = AVA_SIZE
    K_stored = np.array([[40.0, 0.0, width / 2 + 0.3], [0.0, 41.0, height / 2 - 0.2], [0.0, 0.0, 1.0]])
    K_calib = K_stored * np.array([[2668 / width], [4096 / height], [1.0]])
    truth = Truth({}, {}, AVA_SIZE)
    for capture_index, capture in enumerate(("20230101--1000--AAA001", "20230102--1100--BBB002")):
        decoder = root / capture / "decoder"
        decoder.mkdir(parents=True)
        cameras = {cam: camera_looking_at_origin(rng, 1000.0) for cam in AVA_CAMERAS}  # millimetres
        krt = [{"cameraId": cam, "K": K_calib.T.tolist(), "T": ava_transposed_extrinsics(w2c).tolist()} for cam, w2c in cameras.items()]
        (decoder / "camera_calibration.json").write_text(json.dumps({"KRT": krt}))
        frame_ids = ["21", "22", "25"]
        (decoder / "frame_list.csv").write_text("seg_id,frame_id\n" + "".join(f"EXP_{i // 2}," + f + "\n" for i, f in enumerate(frame_ids)))
        packed = capture_index == 0
        (decoder / "image").mkdir()
        zips = {cam: zipfile.ZipFile(decoder / "image" / f"cam{cam}.zip", "w") for cam in AVA_CAMERAS} if packed else {}
        poses = {}
        for frame_id in frame_ids:
            stem = f"{int(frame_id):06d}"
            head_to_world = rigid(rotation(rng, 0.3), rng.uniform(-50, 50, 3))  # millimetres
            poses[stem] = head_to_world
            code = rng.normal(size=6).astype(np.float32)
            if not (capture_index == 1 and frame_id == "25"):
                (decoder / "expression_codes").mkdir(exist_ok=True)
                np.save(decoder / "expression_codes" / f"{stem}.npy", code)
                truth.expression[(capture, f"EXP_{frame_ids.index(frame_id) // 2}/{stem}")] = code
            for cam, w2c in cameras.items():
                name = (capture, f"EXP_{frame_ids.index(frame_id) // 2}/{stem}", cam)
                truth.K[name] = K_stored
                truth.center[name], truth.forward[name] = camera_pose_in(w2c, head_to_world, 0.001)
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                if packed:
                    buffer = io.BytesIO()
                    Image.fromarray(pixels).save(buffer, format="AVIF")
                    zips[cam].writestr(f"cam{cam}/{stem}.avif", buffer.getvalue())
                else:
                    (decoder / "image" / f"cam{cam}").mkdir(parents=True, exist_ok=True)
                    (decoder / "image" / f"cam{cam}" / f"{stem}.png").write_bytes(image_codec.encode_png(pixels))
                    (decoder / "mask" / f"cam{cam}").mkdir(parents=True, exist_ok=True)
                    mask = (rng.uniform(size=(height, width)) > 0.3).astype(np.uint8) * 255
                    (decoder / "mask" / f"cam{cam}" / f"{stem}.png").write_bytes(image_codec.encode_png(mask))
                depth = rng.uniform(900.0, 1100.0, (height, width))
                xyz = unproject(K_stored, w2c, height, width, depth)  # layout world (mm) of each stored pixel
                (decoder / "position_map" / f"cam{cam}").mkdir(parents=True, exist_ok=True)
                confidence = rng.uniform(size=(height, width)).astype(np.float32)
                (decoder / "position_map" / f"cam{cam}" / f"{stem}.npz").write_bytes(npz_bytes(xyz=xyz, confidence=confidence))
                (decoder / "feature_map" / f"cam{cam}").mkdir(parents=True, exist_ok=True)
                np.save(decoder / "feature_map" / f"cam{cam}" / f"{stem}.npy", rng.normal(size=(4, 3, 5)).astype(np.float32))
        for z in zips.values():
            z.close()
        (decoder / "head_pose").mkdir()
        lines = {stem: "\n".join(" ".join(f"{v:.9f}" for v in row) for row in pose[:3]) for stem, pose in poses.items()}
        if packed:
            with zipfile.ZipFile(decoder / "head_pose" / "head_pose.zip", "w") as z:
                for stem, text in lines.items():
                    z.writestr(f"{stem}.txt", text)
        else:
            for stem, text in lines.items():
                (decoder / "head_pose" / f"{stem}.txt").write_text(text)
    return truth


NERSEMBLE_SERIALS = ("220700191", "222200037", "222200039", "222200046")
NERSEMBLE_SIZE = (40, 28)  # stored (height, width); calibration refers to 3208 x 2200


def write_nersemble(root: pathlib.Path, rng: np.random.Generator) -> Truth:
    """Participants 017 (v2 calibration location, frames under timesteps/) and 018 (v1 location);
    one sequence each with FLAME tracking for 3 timesteps and a 4th timestep without tracking."""
    height, width = NERSEMBLE_SIZE
    K_stored = np.array([[45.0, 0.0, width / 2], [0.0, 45.0, height / 2], [0.0, 0.0, 1.0]])
    K_calib = K_stored * np.array([[2200 / width], [3208 / height], [1.0]])
    truth = Truth({}, {}, NERSEMBLE_SIZE)
    for pid in ("017", "018"):
        participant = root / pid
        cameras = {serial: camera_looking_at_origin(rng, 1.0) for serial in NERSEMBLE_SERIALS}
        params = {"intrinsics": K_calib.tolist(), "world_2_cam": {s: w2c.tolist() for s, w2c in cameras.items()}}
        calibration = participant / "calibration" / "camera_params.json" if pid == "017" else participant / "camera_params.json"
        calibration.parent.mkdir(parents=True, exist_ok=True)
        calibration.write_text(json.dumps(params))
        sequence = participant / "sequences" / "EXP-1-head"
        frames_root = sequence / "timesteps" if pid == "017" else sequence
        tracking = {"expression": rng.normal(size=(3, 10)), "jaw": rng.normal(size=(3, 3)), "eyes": rng.normal(size=(3, 6))}
        (sequence / "tracking").mkdir(parents=True)
        np.savez(sequence / "tracking" / "flame2023_tracking_v2.npz", frames=np.arange(3), **tracking)
        for t in range(4):
            frame_dir = frames_root / f"frame_{t:05d}"
            for sub in ("images-2x", "alpha_map", "position_map"):
                (frame_dir / sub).mkdir(parents=True)
            if t < 3:
                code = np.concatenate([tracking["expression"][t], tracking["jaw"][t]]).astype(np.float32)
                truth.expression[(pid, f"EXP-1-head/frame_{t:05d}")] = code
            for serial, w2c in cameras.items():
                name = (pid, f"EXP-1-head/frame_{t:05d}", serial)
                truth.K[name] = K_stored
                truth.center[name], truth.forward[name] = camera_pose_in(w2c, np.eye(4), 1.0)
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                (frame_dir / "images-2x" / f"cam_{serial}.jpg").write_bytes(image_codec.encode_jpeg(pixels))
                alpha = np.zeros((height, width), np.uint8)
                alpha[5:-5, 4:-4] = 255
                (frame_dir / "alpha_map" / f"cam_{serial}.png").write_bytes(image_codec.encode_png(alpha))
                xyz = unproject(K_stored, w2c, height, width, rng.uniform(0.9, 1.1, (height, width)))
                np.save(frame_dir / "position_map" / f"cam_{serial}.npy", xyz)
    return truth
