"""Writing rendered frames: PNG stills and H.264 mp4 (ffmpeg from imageio-ffmpeg)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterable

import imageio.v2 as iio2
import imageio.v3 as iio
import numpy as np
from PIL import Image


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image ``[..., H, W, 3]`` in [0, 1] -> uint8 (clipped, rounded)."""
    return np.clip(np.rint(np.asarray(image, np.float32) * 255.0), 0, 255).astype(np.uint8)


def write_png(path: str | pathlib.Path, image: np.ndarray) -> pathlib.Path:
    """Writes a float ``[H, W, 3]`` image in [0, 1] as an 8-bit PNG."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, to_uint8(image))
    return path


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    """H.264 with 4:2:0 chroma needs even sizes: repeats the last row/column where needed."""
    height, width = frame.shape[:2]
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


class Mp4Writer:
    """Streams float ``[H, W, 3]`` frames in [0, 1] into an mp4 (``with Mp4Writer(path, fps) as w: w.add(frame)``)."""

    def __init__(self, path: str | pathlib.Path, fps: float, quality: int = 8):
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.frames_written = 0
        self._fps, self._quality = fps, quality
        self._file = None
        self._shape: tuple[int, ...] | None = None

    def __enter__(self) -> Mp4Writer:
        self._file = iio2.get_writer(
            self.path, format="FFMPEG", mode="I", fps=self._fps, codec="libx264", quality=self._quality, macro_block_size=1
        )
        return self

    def add(self, frame: np.ndarray) -> None:
        frame = _pad_to_even(to_uint8(frame))
        if self._shape is None:
            self._shape = frame.shape
        elif frame.shape != self._shape:
            raise ValueError(f"all video frames must have one size: first {self._shape}, frame {self.frames_written} {frame.shape}")
        self._file.append_data(frame)
        self.frames_written += 1

    def __exit__(self, *exc) -> None:
        self._file.close()


def write_mp4(path: str | pathlib.Path, frames: Iterable[np.ndarray], fps: float) -> int:
    """Writes frames to an mp4; returns how many were written."""
    with Mp4Writer(path, fps) as writer:
        for frame in frames:
            writer.add(frame)
    return writer.frames_written


def write_orbit_videos(orbit_dir: pathlib.Path, mp4: pathlib.Path, gif: pathlib.Path, fps: float = 12.0) -> int:
    """``orbit_*.png`` as an mp4 and a looping GIF; returns the frame count."""
    frames = [iio.imread(path)[..., :3] for path in sorted(orbit_dir.glob("orbit_*.png"))]  # uint8 [H, W, 3]
    write_mp4(mp4, [frame / 255.0 for frame in frames], fps)  # it takes floats in [0, 1]
    pictures = [Image.fromarray(frame).convert("P", palette=Image.Palette.ADAPTIVE, colors=128) for frame in frames]
    pictures[0].save(gif, save_all=True, append_images=pictures[1:], duration=int(1000 / fps), loop=0, optimize=True)
    return len(frames)
