"""The input directory of ``avat3r-infer``: 1 to 4 photos of a head, their cameras and preprocessed maps.

``inputs.json`` lists the views (paths relative to the directory)::

    {
      "views": [
        {
          "image": "view0.png",                      # RGB or RGBA photo (alpha becomes the mask)
          "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],  # intrinsics in pixels, pixel centres at +0.5
          "world_to_cam": [[...], [...], [...], [0, 0, 0, 1]],  # OpenCV: x right, y down, z forward
          "mask": "view0_mask.png",                  # optional foreground alpha
          "posmap": "view0_posmap.npy",              # [H, W, 3] world xyz per pixel (DUSt3R-style)
          "posmap_valid": "view0_valid.npy",         # optional [H, W] 0/1 (1 = trusted, e.g. confidence >= 0.5)
          "features": "view0_features.npy",          # [h, w, C] feature map (Sapiens-style)
          "expression": [0.1, ...]                   # optional: this view's expression code [D]
        }
      ],
      "expressions": [[...], [...]]                  # optional: keyframe codes [K, D] for the animation
    }

All images must have the model's size (``data.image_height`` x ``data.image_width``). Position maps
and feature maps are needed when the model uses them (``model.use_posmap`` / ``model.use_features``);
when they are missing the reader says which preprocessing produces them. A view whose position map
is mostly invalid (non-finite or masked) is warned about: its pixels give the avatar few Gaussians.

Every path must stay inside the directory: relative, without ``..``, and not through a symbolic
link that leads out of it. Such a path is refused with one message that does not depend on whether
its target exists (the reader never looks outside the directory).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Any

import imageio.v3 as iio
import numpy as np

from avat3r_jax.export.paths import contained
from avat3r_jax.model import ModelSettings
from avat3r_jax.spec import from_stored

log = logging.getLogger(__name__)

INPUTS_FILE = "inputs.json"
MAX_VIEWS = 4
MIN_VALID_FRACTION = 0.5  # Below this share of valid position-map pixels a view is warned about.
POSMAP_HELP = (
    "a per-pixel world-space position map [H, W, 3] saved as .npy: run a pointmap model (DUSt3R/MASt3R) on the "
    "input views, align its points to the cameras' world frame (e.g. by the known camera centres) and store the "
    "points at full image resolution, with a 0/1 'posmap_valid' map (confidence >= 0.5)"
)
FEATURES_HELP = (
    "a feature map [h, w, C] saved as .npy: run the feature backbone the model was trained with "
    "(Sapiens-style, data.feature_channels channels) on the image and store its last feature map"
)


class InputError(ValueError):
    """The input directory is incomplete or inconsistent."""


@dataclasses.dataclass(frozen=True)
class AvatarInputs:
    batch: dict[str, np.ndarray]  # model inputs with a batch axis of 1: images [1, V, H, W, 3], ...
    keyframes: np.ndarray | None  # [K, D] expression codes for the default animation, or None
    names: list[str]  # image file of each view

    @property
    def num_views(self) -> int:
        return self.batch["images"].shape[1]


def read_inputs(directory: str | pathlib.Path, settings: ModelSettings) -> AvatarInputs:
    """Reads and checks an input directory against the model's expected sizes."""
    directory = pathlib.Path(directory)
    path = contained_path(directory, INPUTS_FILE, str(directory))
    if not path.is_file():
        raise InputError(f"{directory} has no {INPUTS_FILE} (it lists the views; see avat3r_jax/export/inputs.py for the format)")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not valid JSON: {error}") from error
    views = spec.get("views") if isinstance(spec, dict) else None
    max_views = min(MAX_VIEWS, settings.num_views) if settings.use_view_embedding else MAX_VIEWS
    if not isinstance(views, list) or not 1 <= len(views) <= max_views:
        count = len(views) if isinstance(views, list) else "no"
        raise InputError(f"{path}: expected a 'views' list of 1 to {max_views} views for this model, got {count} views")
    per_view = [_read_view(directory, index, view, settings) for index, view in enumerate(views)]
    batch = {key: np.stack([view[key] for view in per_view])[None] for key in per_view[0]}
    return AvatarInputs(batch, _keyframes(spec, views, settings.expression_dim, path), [view["image"] for view in views])


def _read_view(directory: pathlib.Path, index: int, view: Any, s: ModelSettings) -> dict[str, np.ndarray]:
    where = f"view {index}"
    if not isinstance(view, dict) or "image" not in view:
        raise InputError(f"{where}: each view needs at least 'image', 'K' and 'world_to_cam'")
    where = f"view {index} ({view['image']})"
    size = (s.image_height, s.image_width)
    image, alpha = _read_image(contained_path(directory, view["image"], where), where)
    if image.shape[:2] != size:
        raise InputError(
            f"{where}: image is {image.shape[0]}x{image.shape[1]} but the model takes {size[0]}x{size[1]} "
            "(crop/resize the photo and adjust K accordingly)"
        )
    out = {"images": image}
    if "mask" in view:
        mask, _ = _read_image(contained_path(directory, view["mask"], f"{where} mask"), f"{where} mask")
        _check_size(mask, size, f"{where} mask")
        out["masks"] = mask.mean(-1, keepdims=True)
    else:
        out["masks"] = alpha
    out["K"], out["world_to_cam"] = _read_camera(view, where)
    if s.use_posmap:
        if "posmap" not in view:
            raise InputError(f"{where}: no 'posmap', but this model (model.use_posmap=True) needs {POSMAP_HELP}")
        posmap = _read_npy(contained_path(directory, view["posmap"], f"{where} posmap"), f"{where} posmap")
        if posmap.shape != (*size, 3):
            raise InputError(f"{where}: posmap must be [{size[0]}, {size[1]}, 3] (the image size), got {list(posmap.shape)}")
        valid = np.isfinite(posmap).all(-1, keepdims=True)
        if "posmap_valid" in view:
            given = _read_npy(contained_path(directory, view["posmap_valid"], f"{where} posmap_valid"), f"{where} posmap_valid")
            if given.shape not in (size, (*size, 1)):
                raise InputError(f"{where}: posmap_valid must be [{size[0]}, {size[1]}] (or with a trailing 1), got {list(given.shape)}")
            valid &= given.reshape(*size, 1) > 0.5
        _warn_if_mostly_invalid(valid, where)
        out["posmaps"] = np.where(valid, posmap, 0.0).astype(np.float32)
        out["posmap_valid"] = valid.astype(np.float32)
    if s.use_features:
        if "features" not in view:
            raise InputError(f"{where}: no 'features', but this model (model.use_features=True) needs {FEATURES_HELP}")
        features = _read_npy(contained_path(directory, view["features"], f"{where} features"), f"{where} features")
        if features.ndim != 3 or features.shape[-1] != s.feature_channels:
            raise InputError(f"{where}: features must be [h, w, {s.feature_channels}] (data.feature_channels), got {list(features.shape)}")
        if not np.isfinite(features).all():
            raise InputError(f"{where}: features contain non-finite values")
        out["features"] = features.astype(np.float32)
    return out


def contained_path(directory: pathlib.Path, name: Any, where: str) -> pathlib.Path:
    """``directory / name`` resolved, when ``name`` stays inside ``directory`` (``paths.contained``);
    otherwise one refusal that says nothing about whether the target exists."""
    target = contained(directory, name)
    if target is None:
        raise InputError(
            f"{where}: {name!r} is not a path inside the input directory "
            "(paths must be relative, without '..', and must not link out of the directory)"
        )
    return target


def _warn_if_mostly_invalid(valid: np.ndarray, where: str) -> None:
    """Warns when under ``MIN_VALID_FRACTION`` of a view's position map is valid (``valid [H, W, 1]``)."""
    fraction = float(valid.mean())
    if fraction == 0.0:
        log.warning("%s: no pixel of the position map is valid (all non-finite or masked): this view adds nothing to the avatar", where)
    elif fraction < MIN_VALID_FRACTION:
        log.warning("%s: only %.0f%% of the position map is valid: this view adds few Gaussians to the avatar", where, 100 * fraction)


def _read_image(path: pathlib.Path, where: str) -> tuple[np.ndarray, np.ndarray]:
    """-> RGB ``[H, W, 3]`` and alpha ``[H, W, 1]`` as float32 in [0, 1]."""
    if not path.is_file():
        raise InputError(f"{where}: image file {path} does not exist")
    try:
        raw = np.asarray(iio.imread(path))
    except Exception as error:
        raise InputError(f"{where}: cannot read {path} as an image ({type(error).__name__}: {error})") from error
    if raw.dtype == np.uint8:
        image = raw.astype(np.float32) / 255.0
    elif raw.dtype == np.uint16:
        image = raw.astype(np.float32) / 65535.0
    else:
        raise InputError(f"{where}: {path} has pixel type {raw.dtype}; expected 8- or 16-bit")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise InputError(f"{where}: {path} has shape {list(raw.shape)}; expected a grey, RGB or RGBA image")
    alpha = image[..., 3:] if image.shape[-1] == 4 else np.ones_like(image[..., :1])
    rgb = np.repeat(image, 3, -1) if image.shape[-1] == 1 else image[..., :3]
    return rgb, alpha


def _check_size(image: np.ndarray, size: tuple[int, int], where: str) -> None:
    if image.shape[:2] != size:
        raise InputError(f"{where}: size {image.shape[0]}x{image.shape[1]} does not match the image size {size[0]}x{size[1]}")


def _read_npy(path: pathlib.Path, where: str) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{where}: file {path} does not exist")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InputError(f"{where}: cannot read {path} as a .npy array ({error})") from error
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise InputError(f"{where}: {path} holds {array.dtype}, expected numbers")
    return array.astype(np.float32)


def _read_camera(view: dict[str, Any], where: str) -> tuple[np.ndarray, np.ndarray]:
    cameras = {}
    for key, shape in (("K", (3, 3)), ("world_to_cam", (4, 4))):
        if key not in view:
            raise InputError(f"{where}: camera {key!r} is missing")
        try:
            value = np.asarray(view[key], np.float64)
        except (TypeError, ValueError) as error:
            raise InputError(f"{where}: camera {key!r} is not a numeric matrix ({error})") from error
        if value.shape != shape:
            raise InputError(f"{where}: camera {key!r} must be {shape[0]}x{shape[1]}, got shape {list(value.shape)}")
        if not np.isfinite(value).all():
            raise InputError(f"{where}: camera {key!r} has non-finite entries")
        cameras[key] = value
    K, world_to_cam = cameras["K"], cameras["world_to_cam"]
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0, 0, 1]) or K[1, 0] != 0:
        raise InputError(f"{where}: K must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0, got {K.tolist()}")
    rotation = world_to_cam[:3, :3]
    orthonormal = np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4) and np.linalg.det(rotation) > 0
    if not orthonormal or not np.allclose(world_to_cam[3], [0, 0, 0, 1]):
        raise InputError(f"{where}: world_to_cam must be a rigid transform [[R, t], [0, 0, 0, 1]] with a rotation R (orthonormal, det +1)")
    return K.astype(np.float32), world_to_cam.astype(np.float32)


def _keyframes(spec: dict[str, Any], views: list[Any], dim: int, path: pathlib.Path) -> np.ndarray | None:
    """Keyframe codes ``[K, D]``: the top-level 'expressions', else the views' 'expression' values, else None."""
    if "expressions" in spec:
        codes, source = spec["expressions"], "'expressions'"
    else:
        codes = [view["expression"] for view in views if "expression" in view]
        source = "the views' 'expression' entries"
        if not codes:
            return None
    try:
        array = np.asarray(codes, np.float32)
    except (TypeError, ValueError) as error:
        raise InputError(f"{path}: {source} must be a list of [{dim}] codes ({error})") from error
    if array.ndim != 2 or array.shape[1] != dim or len(array) == 0:
        raise InputError(f"{path}: {source} must be a list of codes of size data.expression_dim={dim}, got shape {list(array.shape)}")
    if not np.isfinite(array).all():
        raise InputError(f"{path}: {source} contain non-finite values")
    return array


def write_inputs(
    directory: str | pathlib.Path,
    example: dict[str, np.ndarray],
    keyframes: np.ndarray | None = None,
) -> pathlib.Path:
    """Writes one example (batch keys without the batch axis: ``images [V, H, W, 3]``, ``K``, ...) as an input directory.

    ``posmaps``, ``posmap_valid``, ``features`` and ``masks`` are written when present; entries may be
    float values or in their batch dtypes (uint8 images, float16 maps).
    """
    example = {key: from_stored(key, value) for key, value in example.items()}
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    views = []
    for index in range(example["images"].shape[0]):
        image_file = f"view{index}.png"
        iio.imwrite(directory / image_file, np.clip(np.rint(example["images"][index] * 255), 0, 255).astype(np.uint8))
        view: dict[str, Any] = {
            "image": image_file,
            "K": np.asarray(example["K"][index], np.float64).tolist(),
            "world_to_cam": np.asarray(example["world_to_cam"][index], np.float64).tolist(),
        }
        if "masks" in example:
            view["mask"] = f"view{index}_mask.png"
            iio.imwrite(directory / view["mask"], np.clip(np.rint(example["masks"][index][..., 0] * 255), 0, 255).astype(np.uint8))
        for key, name in (("posmaps", "posmap"), ("posmap_valid", "posmap_valid"), ("features", "features")):
            if key in example:
                view[name] = f"view{index}_{name}.npy"
                np.save(directory / view[name], np.asarray(example[key][index], np.float32))
        views.append(view)
    spec: dict[str, Any] = {"views": views}
    if keyframes is not None:
        spec["expressions"] = np.asarray(keyframes, np.float64).tolist()
    (directory / INPUTS_FILE).write_text(json.dumps(spec, indent=1))
    return directory
