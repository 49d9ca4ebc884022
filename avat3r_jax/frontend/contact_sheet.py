"""A contact sheet of prepared views: one row per view, columns crop | confidence | depth | feature PCA.

For a person to check at a glance that the crops hold the head, the point maps are confident on it,
the depth is a smooth head shape and the features separate face parts. Pure numpy; the caller
encodes the returned pixels.
"""

from __future__ import annotations

import numpy as np

# A perceptual colour ramp (dark blue -> teal -> yellow), sampled at 5 stops and interpolated.
_RAMP = np.array([[0.27, 0.00, 0.33], [0.23, 0.32, 0.55], [0.13, 0.57, 0.55], [0.37, 0.79, 0.38], [0.99, 0.91, 0.14]], np.float32)
_INVALID = np.array([0.0, 0.0, 0.0], np.float32)
_GAP = 2  # pixels between tiles


def colourize(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``values [..., H, W]`` -> RGB ``[..., H, W, 3]``: the valid range stretched over the ramp, invalid pixels black."""
    values = np.asarray(values, np.float32)
    valid = np.asarray(valid, bool) & np.isfinite(values)
    if valid.any():
        lo, hi = np.percentile(values[valid], [1, 99])
        unit = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1)
    else:
        unit = np.zeros_like(values)
    position = unit * (len(_RAMP) - 1)
    index = np.minimum(position.astype(np.int64), len(_RAMP) - 2)
    fraction = (position - index)[..., None]
    rgb = _RAMP[index] * (1 - fraction) + _RAMP[index + 1] * fraction
    return np.where(valid[..., None], rgb, _INVALID)


def feature_pca_rgb(features: np.ndarray) -> np.ndarray:
    """``features [V, h, w, C]`` -> ``[V, h, w, 3]`` in [0, 1]: the top 3 principal components over all views."""
    flat = np.asarray(features, np.float64).reshape(-1, features.shape[-1])
    centred = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = centred @ vt[:3].T  # [N, <=3]
    if components.shape[1] < 3:
        components = np.pad(components, ((0, 0), (0, 3 - components.shape[1])))
    lo, hi = np.percentile(components, [1, 99], axis=0)
    rgb = np.clip((components - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    return rgb.reshape(*features.shape[:-1], 3).astype(np.float32)


def camera_depth(posmaps: np.ndarray, world_to_cam: np.ndarray) -> np.ndarray:
    """World points ``[V, H, W, 3]`` -> their depth ``[V, H, W]`` in each view's camera ``[V, 4, 4]``."""
    return np.einsum("vj,vhwj->vhw", world_to_cam[:, 2, :3], posmaps) + world_to_cam[:, None, None, 2, 3]


def _nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = (np.arange(height) * image.shape[0]) // height
    cols = (np.arange(width) * image.shape[1]) // width
    return image[rows[:, None], cols[None, :]]


def contact_sheet(
    images: np.ndarray,  # [V, H, W, 3] in [0, 1]
    confidence: np.ndarray,  # [V, H, W] DUSt3R confidence (>= 1)
    valid: np.ndarray,  # [V, H, W] trusted points
    posmaps: np.ndarray,  # [V, H, W, 3] world points
    world_to_cam: np.ndarray,  # [V, 4, 4]
    features: np.ndarray,  # [V, h, w, C]
) -> np.ndarray:
    """The sheet as uint8 ``[V * (H + gap), 4 * (W + gap), 3]`` (white gaps)."""
    num_views, height, width = images.shape[:3]
    columns = [
        np.clip(images, 0, 1),
        colourize(np.log(np.maximum(confidence, 1e-6)), np.ones_like(valid, bool)),
        colourize(camera_depth(posmaps, world_to_cam), valid),
        np.stack([_nearest(view, height, width) for view in feature_pca_rgb(features)]),
    ]
    sheet = np.ones((num_views * (height + _GAP), len(columns) * (width + _GAP), 3), np.float32)
    for row in range(num_views):
        for col, tiles in enumerate(columns):
            top, left = row * (height + _GAP), col * (width + _GAP)
            sheet[top : top + height, left : left + width] = tiles[row]
    return np.round(sheet * 255).astype(np.uint8)
