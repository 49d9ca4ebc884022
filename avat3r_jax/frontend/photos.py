"""A user's photos in: 1 to 4 image files of any size, and where to crop each so the head sits as in training.

``read_photos`` reads every image file of a directory with its EXIF orientation applied (phones
store portrait photos sideways plus an orientation tag) and its alpha channel, when it has one,
as the mask. Anything wrong is one ``PhotoError`` line naming the file.

``head_crop_box`` places the model-sized crop of one photo: centred on where the head centre
projects, and sized so the head appears as large as in the training data. In training a head of
radius ``r`` at distance ``d_train`` is seen with a focal length of ``focal_ratio * max(H, W)``
output pixels (``data_pipelines`` centre-crops the rig's square images to the model's aspect), so
it spans ``focal_ratio * max(H, W) * r / d_train`` pixels; a camera at distance ``d`` gets the same
span from a crop whose focal length is ``focal_ratio * max(H, W) * d / d_train``. The crop itself
(intrinsics and resampling) is ``crops``' job.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from avat3r_jax.frontend.head_frame import TRAINING_RIG, TrainingRig, camera_centres

MAX_PHOTOS = 4
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".avif", ".heic", ".tif", ".tiff", ".bmp")

Box = tuple[float, float, float, float]  # left, top, width, height in the photo's pixels


class PhotoError(ValueError):
    """The photos cannot be used (count, unreadable file, ...)."""


@dataclasses.dataclass(frozen=True)
class Photo:
    name: str  # file name in the photo directory
    rgb: np.ndarray  # [H, W, 3] float32 in [0, 1], upright
    alpha: np.ndarray | None  # [H, W, 1] float32 in [0, 1], or None when the file has no alpha channel

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[0], self.rgb.shape[1]


def photo_files(directory: str | pathlib.Path) -> list[pathlib.Path]:
    """The image files of ``directory`` (by extension, hidden files skipped), sorted by name; 1 to 4 of them."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise PhotoError(f"photo directory {directory} does not exist")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in PHOTO_EXTENSIONS and not p.name.startswith("."))
    if not 1 <= len(files) <= MAX_PHOTOS:
        listed = f": {', '.join(p.name for p in files)}" if files else ""
        raise PhotoError(
            f"{directory} holds {len(files)} photos{listed}; give 1 to {MAX_PHOTOS} photos of the head ({', '.join(PHOTO_EXTENSIONS)})"
        )
    return files


def read_photo(path: pathlib.Path) -> Photo:
    """One image file, upright (EXIF orientation applied), as float32 RGB and optional alpha."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise PhotoError(f"photo {path} cannot be read as an image ({type(error).__name__}: {error})") from error
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    pixels = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    if pixels.dtype != np.uint8:
        raise PhotoError(f"photo {path}: unsupported pixel type {pixels.dtype} (mode {image.mode})")
    values = pixels.astype(np.float32) / 255.0
    return Photo(path.name, values[..., :3], values[..., 3:] if has_alpha else None)


def read_photos(directory: str | pathlib.Path) -> list[Photo]:
    return [read_photo(path) for path in photo_files(directory)]


def crop_focal(distance: float, out_height: int, out_width: int, rig: TrainingRig = TRAINING_RIG) -> float:
    """Focal length (output pixels) at which a head ``distance`` away appears as large as in training."""
    return rig.focal_ratio * max(out_height, out_width) * distance / rig.camera_distance


def _head_projection(K: np.ndarray, world_to_cam: np.ndarray, rig: TrainingRig) -> tuple[float, float, float]:
    """Pixel ``(u, v)`` of the head centre (the rig's look-at point) and its distance from the camera."""
    K, world_to_cam = np.asarray(K, np.float64), np.asarray(world_to_cam, np.float64)
    centre = world_to_cam[:3, :3] @ np.asarray(rig.look_at) + world_to_cam[:3, 3]
    if centre[2] <= 0:
        raise PhotoError("the head centre lies behind the camera: the cameras do not look at the head")
    u, v = (K[:2, :2] @ (centre[:2] / centre[2])) + K[:2, 2]
    return float(u), float(v), float(np.linalg.norm(camera_centres(world_to_cam) - np.asarray(rig.look_at)))


def head_crop_box(K: np.ndarray, world_to_cam: np.ndarray, out_height: int, out_width: int, rig: TrainingRig = TRAINING_RIG) -> Box:
    """The crop ``(left, top, width, height)`` of a photo with head-frame camera ``K [3, 3]``, ``world_to_cam [4, 4]``.

    Centred on the projection of the head centre; resizing it to ``out_height x out_width`` gives
    the training focal length for the camera's distance (see the module docstring). The box may
    reach past the photo's edges (``crops`` pads those pixels).
    """
    u, v, distance = _head_projection(K, world_to_cam, rig)
    focal = crop_focal(distance, out_height, out_width, rig)
    width, height = K[0, 0] * out_width / focal, K[1, 1] * out_height / focal
    return (u - width / 2, v - height / 2, float(width), float(height))


def head_in_photo(K: np.ndarray, world_to_cam: np.ndarray, size: tuple[int, int], rig: TrainingRig = TRAINING_RIG) -> float:
    """Fraction of the head's projected square (side ``2 f r / d``, ``r = rig.head_radius``) inside a photo of ``size``."""
    u, v, distance = _head_projection(K, world_to_cam, rig)
    half_w, half_h = K[0, 0] * rig.head_radius / distance, K[1, 1] * rig.head_radius / distance
    inside_w = max(0.0, min(u + half_w, size[1]) - max(u - half_w, 0.0))
    inside_h = max(0.0, min(v + half_h, size[0]) - max(v - half_h, 0.0))
    return inside_w * inside_h / (4 * half_w * half_h)
