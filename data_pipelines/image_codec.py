"""Encoding and decoding of images and masks: PNG and JPEG (Pillow), and raw uint8.

Raw uint8 is ``RAW_MAGIC | uint32 height, width, channels (little endian) | pixels`` (row-major
``[H, W, C]``, C = 3 for RGB, 1 for grey): decoding it is a view of the bytes, no decompression. It
is the cheap format for what the training pipeline decodes most (12 views per example at 512x512);
PNG and JPEG stay readable.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, UnidentifiedImageError

RAW_MAGIC = b"AV3RU8\r\n"
_RAW_SHAPE = struct.Struct("<III")


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 ``[H, W, 3]`` (RGB) or ``[H, W]`` (grey) -> PNG bytes."""
    return _encode(pixels, "PNG")


def encode_jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    """uint8 ``[H, W, 3]`` -> JPEG bytes."""
    return _encode(pixels, "JPEG", quality=quality)


def encode_raw(pixels: np.ndarray) -> bytes:
    """uint8 ``[H, W, 3]`` (RGB) or ``[H, W]`` (grey) -> raw uint8 bytes (see the module docstring)."""
    _check_pixels(pixels)
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else 3
    return RAW_MAGIC + _RAW_SHAPE.pack(height, width, channels) + np.ascontiguousarray(pixels).tobytes()


def _check_pixels(pixels: np.ndarray) -> None:
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] != 3):
        raise ValueError(f"expected uint8 [H, W, 3] or [H, W] pixels, got {pixels.dtype} {pixels.shape}")


def _encode(pixels: np.ndarray, image_format: str, **options) -> bytes:
    _check_pixels(pixels)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] -> uint8 with rounding."""
    return np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def is_raw(data: bytes) -> bool:
    return data[: len(RAW_MAGIC)] == RAW_MAGIC


def _decode_raw(data: bytes, what: str) -> np.ndarray:
    """Raw bytes -> read-only uint8 ``[H, W, C]`` view of ``data``."""
    start = len(RAW_MAGIC) + _RAW_SHAPE.size
    if len(data) < start:
        raise ValueError(f"cannot decode {what} ({len(data)} bytes): raw image header is truncated")
    height, width, channels = _RAW_SHAPE.unpack_from(data, len(RAW_MAGIC))
    if channels not in (1, 3) or len(data) - start != height * width * channels:
        raise ValueError(
            f"cannot decode {what} ({len(data)} bytes): raw image header says {height}x{width}x{channels}, "
            f"which needs {start + height * width * channels} bytes"
        )
    return np.frombuffer(data, np.uint8, offset=start).reshape(height, width, channels)


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
    if is_raw(data):
        return _decode_raw(data, what).shape[:2]
    width, height = _open(data, what, load=False).size
    return height, width


def decode_rgb(data: bytes, what: str = "image") -> np.ndarray:
    """Encoded image (raw uint8 or any format Pillow reads) -> uint8 ``[H, W, 3]`` (read-only for raw)."""
    if is_raw(data):
        pixels = _decode_raw(data, what)
        return pixels if pixels.shape[-1] == 3 else np.repeat(pixels, 3, axis=-1)
    image = _open(data, what)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def decode_grey(data: bytes, what: str = "mask") -> np.ndarray:
    """Encoded image -> uint8 ``[H, W]``: the alpha channel of images with one, else the grey value
    (raw: the single channel of a grey image, the Pillow luma of an RGB one)."""
    if is_raw(data):
        pixels = _decode_raw(data, what)
        if pixels.shape[-1] == 1:
            return pixels[..., 0]
        return np.asarray(Image.fromarray(pixels).convert("L"))
    image = _open(data, what)
    if image.mode in ("RGBA", "LA"):
        return np.asarray(image.getchannel("A"))
    return np.asarray(image if image.mode == "L" else image.convert("L"))


def read_rgb(path) -> np.ndarray:
    """Image file -> uint8 ``[H, W, 3]``."""
    with open(path, "rb") as f:
        return decode_rgb(f.read(), what=str(path))
