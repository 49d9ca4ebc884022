"""Cropping and resizing of images and per-pixel maps, with the matching intrinsics (numpy, host side).

A crop is a box ``(left, top, width, height)`` in the pixels of the full image. Resizing maps the
box's continuous extent onto the output grid, so output pixel centre ``j + 0.5`` samples input
coordinate ``left + (j + 0.5) * width / out_width``; intrinsics follow the same map
(``u' = (u - left) * out_width / width``), which keeps pixel centres at ``+0.5`` consistent.
"""

from __future__ import annotations

import numpy as np

Box = tuple[float, float, float, float]  # left, top, width, height


def center_crop_box(height: int, width: int, out_height: int, out_width: int) -> Box:
    """The largest centred box of the output's aspect ratio, on whole pixels."""
    aspect = out_width / out_height
    if width / height > aspect:
        crop_w = round(height * aspect)
        return (float((width - crop_w) // 2), 0.0, float(crop_w), float(height))
    crop_h = round(width / aspect)
    return (0.0, float((height - crop_h) // 2), float(width), float(crop_h))


def scale_box(box: Box, scale_x: float, scale_y: float) -> Box:
    """The same region in the pixels of a map of another resolution over the same field of view."""
    left, top, width, height = box
    return (left * scale_x, top * scale_y, width * scale_x, height * scale_y)


def resize_weights(in_size: int, out_size: int, start: float, length: float) -> np.ndarray:
    """``[out_size, in_size]`` row-normalised triangle-filter weights (antialiased when shrinking)."""
    scale = out_size / length
    support = max(1.0, 1.0 / scale)  # filter half-width in input pixels
    centers = start + (np.arange(out_size) + 0.5) / scale  # input coordinate of each output centre
    distance = np.abs(np.arange(in_size)[None, :] + 0.5 - centers[:, None])
    weights = np.maximum(0.0, 1.0 - distance / support)
    total = weights.sum(1, keepdims=True)
    if np.any(total == 0):
        raise ValueError(f"resize box (start={start}, length={length}) lies outside the input of size {in_size}")
    return (weights / total).astype(np.float32)


def _is_whole(shape: tuple[int, ...], box: Box, out_height: int, out_width: int) -> bool:
    """Whether ``box`` is the whole input and the output has its size (resizing is then the identity)."""
    height, width = shape[:2]
    return tuple(box) == (0.0, 0.0, float(width), float(height)) and (height, width) == (out_height, out_width)


def resize(values: np.ndarray, box: Box, out_height: int, out_width: int) -> np.ndarray:
    """Crops ``values [H, W, C]`` to ``box`` and resizes to ``[out_height, out_width, C]`` (float32)."""
    if _is_whole(values.shape, box, out_height, out_width):
        return values.astype(np.float32, copy=False)
    height, width = values.shape[:2]
    left, top, box_w, box_h = box
    rows = resize_weights(height, out_height, top, box_h)
    cols = resize_weights(width, out_width, left, box_w)
    return np.einsum("oh,hwc,pw->opc", rows, values.astype(np.float32), cols, optimize=True)


def resize_into(values: np.ndarray, box: Box, out: np.ndarray) -> None:
    """``resize`` written into ``out [h, w, C]`` (any float dtype; uint8 ``out`` gets the result rounded
    and clipped to 0..255); when the box is the whole input at the output's size this is a single
    copy, without a temporary."""
    out_height, out_width = out.shape[:2]
    if _is_whole(values.shape, box, out_height, out_width):
        np.copyto(out, values)
        return
    resized = resize(values, box, out_height, out_width)
    if out.dtype == np.uint8:
        np.copyto(out, np.clip(np.rint(resized), 0, 255), casting="unsafe")
    else:
        np.copyto(out, resized)


def resample_nearest(values: np.ndarray, box: Box, out_height: int, out_width: int) -> np.ndarray:
    """Crops ``values [H, W, ...]`` to ``box`` and picks, per output pixel, the input pixel under its centre."""
    if _is_whole(values.shape, box, out_height, out_width):
        return values
    height, width = values.shape[:2]
    left, top, box_w, box_h = box
    rows = np.clip(np.floor(top + (np.arange(out_height) + 0.5) * box_h / out_height), 0, height - 1).astype(np.int64)
    cols = np.clip(np.floor(left + (np.arange(out_width) + 0.5) * box_w / out_width), 0, width - 1).astype(np.int64)
    return values[rows[:, None], cols[None, :]]


def crop_resize_intrinsics(K: np.ndarray, box: Box, out_height: int, out_width: int) -> np.ndarray:
    """Intrinsics ``[..., 3, 3]`` after cropping to ``box`` and resizing to ``out_height x out_width``."""
    left, top, box_w, box_h = box
    K = np.array(K, dtype=np.float32, copy=True)
    K[..., 0, 2] -= left
    K[..., 1, 2] -= top
    K[..., 0, :] *= out_width / box_w
    K[..., 1, :] *= out_height / box_h
    return K
