"""Encoding and decoding of images and masks (Pillow)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 ``[H, W, 3]`` (RGB) or ``[H, W]`` (grey) -> PNG bytes."""
    return _encode(pixels, "PNG")


def encode_jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    """uint8 ``[H, W, 3]`` -> JPEG bytes."""
    return _encode(pixels, "JPEG", quality=quality)


def _encode(pixels: np.ndarray, image_format: str, **options) -> bytes:
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] != 3):
        raise ValueError(f"expected uint8 [H, W, 3] or [H, W] pixels, got {pixels.dtype} {pixels.shape}")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] -> uint8 with rounding."""
    return np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def _open(data: bytes, what: str, load: bool = True) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        if load:
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot decode {what} ({len(data)} bytes): {e}") from e
    return image


def image_size(data: bytes, what: str = "image") -> tuple[int, int]:
    """``(height, width)`` of an encoded image, read from its header only."""
    width, height = _open(data, what, load=False).size
    return height, width


def decode_rgb(data: bytes, what: str = "image") -> np.ndarray:
    """Encoded image (any format Pillow reads) -> uint8 ``[H, W, 3]``."""
    return np.asarray(_open(data, what).convert("RGB"))


def decode_grey(data: bytes, what: str = "mask") -> np.ndarray:
    """Encoded image -> uint8 ``[H, W]``: the alpha channel of images with one, else the grey value."""
    image = _open(data, what)
    if image.mode in ("RGBA", "LA"):
        return np.asarray(image.getchannel("A"))
    return np.asarray(image.convert("L"))


def read_rgb(path) -> np.ndarray:
    """Image file -> uint8 ``[H, W, 3]``."""
    with open(path, "rb") as f:
        return decode_rgb(f.read(), what=str(path))
