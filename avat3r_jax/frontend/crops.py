"""Image crop/resize geometry: the one place that maps pixels, intrinsics, images and per-pixel maps into a crop.

A :class:`CropBox` is a rectangle in source pixels (edges; pixel centres at ``+0.5``) resampled to an
output size: source ``u`` maps to ``(u - left) * out_width / width``. The box may extend past the image
(those output pixels get the fill value or are invalid) and need not keep the aspect ratio.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from avat3r_jax.geometry import crop_intrinsics, resize_intrinsics

DUST3R_LONG_SIDE = 512
DUST3R_PATCH_SIZE = 16


@dataclasses.dataclass(frozen=True)
class CropBox:
    """Source rectangle ``left, top, width, height`` (pixels) resampled to ``out_height x out_width``."""

    left: float
    top: float
    width: float
    height: float
    out_height: int
    out_width: int

    def __post_init__(self):
        if not (self.width > 0 and self.height > 0 and self.out_width > 0 and self.out_height > 0):
            raise ValueError(f"CropBox needs positive sizes, got {self}")

    @property
    def scale(self) -> tuple[float, float]:
        """Output pixels per source pixel, ``(x, y)``."""
        return self.out_width / self.width, self.out_height / self.height

    def map_pixels(self, uv: jax.Array) -> jax.Array:
        """Source pixel coordinates ``[..., 2]`` (u, v) -> output pixel coordinates."""
        sx, sy = self.scale
        return (uv - jnp.array([self.left, self.top])) * jnp.array([sx, sy])


def dust3r_network_box(height: int, width: int, long_side: int = DUST3R_LONG_SIDE, patch_size: int = DUST3R_PATCH_SIZE) -> CropBox:
    """DUSt3R's ``load_images(size=512)`` geometry for an image of ``height x width``, as one box.

    dust3r resizes so the long side is ``long_side`` (each side rounded), then centre-crops each side to
    a multiple of ``patch_size`` (a square image to 4:3 landscape, ``square_ok=False``); the box expresses
    that crop in source pixels.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    longest = max(height, width)
    resized_w, resized_h = round(width * long_side / longest), round(height * long_side / longest)
    cx, cy = resized_w // 2, resized_h // 2
    half_w = ((2 * cx) // patch_size) * patch_size / 2
    half_h = ((2 * cy) // patch_size) * patch_size / 2
    if resized_w == resized_h:
        half_h = 3 * half_w / 4
    if half_w < 1 or half_h < 1:
        raise ValueError(f"image of {height}x{width} is too small for DUSt3R's {patch_size}-pixel patches")
    to_src_x, to_src_y = width / resized_w, height / resized_h
    return CropBox(
        left=(cx - half_w) * to_src_x,
        top=(cy - half_h) * to_src_y,
        width=2 * half_w * to_src_x,
        height=2 * half_h * to_src_y,
        out_height=int(2 * half_h),
        out_width=int(2 * half_w),
    )


def reframe_box(box: CropBox, within: CropBox) -> CropBox:
    """``box`` (in source pixels) expressed in the output pixels of ``within`` (same output size as ``box``).

    E.g. a head crop placed on the photo, re-expressed on the DUSt3R network image made from that photo.
    """
    sx, sy = within.scale
    return CropBox(
        left=(box.left - within.left) * sx,
        top=(box.top - within.top) * sy,
        width=box.width * sx,
        height=box.height * sy,
        out_height=box.out_height,
        out_width=box.out_width,
    )


def crop_box_intrinsics(K: jax.Array, box: CropBox) -> jax.Array:
    """Intrinsics ``[..., 3, 3]`` of the box's output image from the source image's ``K``."""
    return resize_intrinsics(crop_intrinsics(K, box.left, box.top), *box.scale)


def _source_coordinates(box: CropBox) -> tuple[jax.Array, jax.Array]:
    """Continuous source coordinates (pixel centres at +0.5) of the output pixel centres: ``x [w]``, ``y [h]``."""
    sx, sy = box.scale
    x = (jnp.arange(box.out_width) + 0.5) / sx + box.left
    y = (jnp.arange(box.out_height) + 0.5) / sy + box.top
    return x, y


@functools.partial(jax.jit, static_argnames=("box", "method", "fill"))
def resample_image(image: jax.Array, box: CropBox, method: str = "lanczos3", fill: float = 0.0) -> jax.Array:
    """Image ``[H, W, C]`` (float, [0, 1]) resampled into the box: ``[out_height, out_width, C]``.

    Antialiased when shrinking (``jax.image.scale_and_translate``); output pixels whose centre falls
    outside the source get ``fill``; values are clipped to [0, 1].
    """
    sx, sy = box.scale
    out = jax.image.scale_and_translate(
        image,
        (box.out_height, box.out_width, image.shape[-1]),
        spatial_dims=(0, 1),
        scale=jnp.array([sy, sx]),
        translation=jnp.array([-box.top * sy, -box.left * sx]),
        method=method,
        antialias=True,
    )
    x, y = _source_coordinates(box)
    inside = ((y >= 0) & (y <= image.shape[0]))[:, None] & ((x >= 0) & (x <= image.shape[1]))[None, :]
    return jnp.clip(jnp.where(inside[..., None], out, fill), 0.0, 1.0)


@functools.partial(jax.jit, static_argnames=("box",))
def resample_map(values: jax.Array, valid: jax.Array, box: CropBox) -> tuple[jax.Array, jax.Array]:
    """Per-pixel map ``[H, W, C]`` with validity ``[H, W]`` resampled into the box, never mixing in invalid pixels.

    Each output pixel is bilinear in the (up to four) source pixels around its centre, with weights
    renormalised over the valid ones; it is valid when its nearest source pixel is valid (so masks
    resample like nearest-neighbour). Outside the source it is invalid (values 0).
    """
    height, width = valid.shape
    x, y = _source_coordinates(box)
    fx, fy = x - 0.5, y - 0.5  # index coordinates (pixel centres at integers)
    x0, y0 = jnp.floor(fx).astype(jnp.int32), jnp.floor(fy).astype(jnp.int32)
    wx, wy = fx - x0, fy - y0
    acc = jnp.zeros((box.out_height, box.out_width, values.shape[-1]), values.dtype)
    total = jnp.zeros((box.out_height, box.out_width), values.dtype)
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            inside = ((yi >= 0) & (yi < height))[:, None] & ((xi >= 0) & (xi < width))[None, :]
            xc, yc = jnp.clip(xi, 0, width - 1), jnp.clip(yi, 0, height - 1)
            weight = (wy if dy else 1 - wy)[:, None] * (wx if dx else 1 - wx)[None, :]
            weight = weight * (inside & valid[yc[:, None], xc[None, :]])
            acc = acc + weight[..., None] * values[yc[:, None], xc[None, :]]
            total = total + weight
    xn, yn = jnp.floor(x).astype(jnp.int32), jnp.floor(y).astype(jnp.int32)
    nearest_inside = ((yn >= 0) & (yn < height))[:, None] & ((xn >= 0) & (xn < width))[None, :]
    nearest_valid = nearest_inside & valid[jnp.clip(yn, 0, height - 1)[:, None], jnp.clip(xn, 0, width - 1)[None, :]]
    out_valid = nearest_valid & (total > 0)
    out = jnp.where(out_valid[..., None], acc / jnp.where(total > 0, total, 1.0)[..., None], 0.0)
    return out, out_valid
