"""Drawing cameras' view of tracked geometry over images: head-pose axes, tiled into a sheet (numpy only)."""

from __future__ import annotations

import numpy as np

AXIS_COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)  # x, y, z


def axis_points(head_to_world: np.ndarray, length: float) -> np.ndarray:
    """``[4, 3]``: the head frame's origin and the tips of its x, y, z axes (``length`` long) in the world."""
    local = np.concatenate([np.zeros((1, 3)), length * np.eye(3)])
    return local @ head_to_world[:3, :3].T + head_to_world[:3, 3]


def project(K: np.ndarray, world_to_cam: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points ``[N, 3]`` -> pixels ``[N, 2]`` (centres at +0.5) and depths ``[N]`` (float64)."""
    cam = points.astype(np.float64) @ world_to_cam[:3, :3].T.astype(np.float64) + world_to_cam[:3, 3]
    depth = cam[:, 2]
    xy = cam[:, :2] / np.where(np.abs(depth) < 1e-12, 1e-12, depth)[:, None]
    return xy @ K[:2, :2].T.astype(np.float64) + K[:2, 2], depth


def draw_segment(image: np.ndarray, start: np.ndarray, end: np.ndarray, colour: np.ndarray) -> None:
    """Paints the pixels whose centres the segment ``start -> end`` (pixel coordinates) passes, in place."""
    steps = int(np.ceil(np.abs(end - start).max() * 2)) + 1
    points = start + np.linspace(0.0, 1.0, steps)[:, None] * (end - start)
    cols, rows = np.floor(points).astype(int).T
    inside = (rows >= 0) & (rows < image.shape[0]) & (cols >= 0) & (cols < image.shape[1])
    image[rows[inside], cols[inside]] = colour


def draw_axes(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """A copy of ``image [H, W, 3]`` with the projected axes ``uv [4, 2]`` (origin, x, y, z tips) drawn."""
    image = image.copy()
    for tip, colour in zip(uv[1:], AXIS_COLOURS, strict=True):
        draw_segment(image, uv[0], tip, colour)
    return image


def tile(images: list[np.ndarray], columns: int = 8) -> np.ndarray:
    """uint8 ``[rows * H, columns' * W, 3]``: images in rows of ``columns``, padded white to the largest size."""
    height = max(i.shape[0] for i in images)
    width = max(i.shape[1] for i in images)
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    sheet = np.full((rows * height, columns * width, 3), 255, np.uint8)
    for n, image in enumerate(images):
        r, c = divmod(n, columns)
        sheet[r * height : r * height + image.shape[0], c * width : c * width + image.shape[1]] = image
    return sheet
