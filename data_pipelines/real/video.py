"""Frames of per-camera videos (mp4) by index, through imageio's ffmpeg reader.

``VideoFile`` keeps one ffmpeg reader open per video: reading frames in increasing order decodes
forward without restarting, and a jump backwards or far ahead makes imageio seek, so no frame is
decoded more than once when frames are read in order (with any stride).
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib

import imageio.v2 as imageio
import numpy as np

from data_pipelines.real.common import ConversionError, one_line


class VideoFile:
    def __init__(self, path: pathlib.Path):
        self.path = path
        try:
            self._reader = imageio.get_reader(str(path), "ffmpeg")
        except Exception as e:  # imageio reports unreadable files as OSError with ffmpeg's whole log.
            raise ConversionError(f"video {path} cannot be opened ({one_line(e)})") from e

    def frame(self, index: int) -> np.ndarray:
        """uint8 ``[H, W, 3]`` of frame ``index`` (0-based)."""
        try:
            return np.asarray(self._reader.get_data(index))[..., :3]
        except IndexError as e:
            raise ConversionError(f"video {self.path} has no frame {index}: it ends earlier (truncated?)") from e
        except Exception as e:
            raise ConversionError(f"video {self.path}: frame {index} cannot be decoded ({one_line(e)})") from e

    def close(self) -> None:
        self._reader.close()


_OPEN: collections.OrderedDict[pathlib.Path, VideoFile] = collections.OrderedDict()
MAX_OPEN = 64  # ffmpeg processes kept running: a sequence's cameras (and alpha maps) at once


def open_video(path: pathlib.Path) -> VideoFile:
    """The open reader of ``path``; the least recently used one is closed beyond ``MAX_OPEN``."""
    if path in _OPEN:
        _OPEN.move_to_end(path)
        return _OPEN[path]
    _OPEN[path] = VideoFile(path)
    if len(_OPEN) > MAX_OPEN:
        _OPEN.popitem(last=False)[1].close()
    return _OPEN[path]


def close_all() -> None:
    """Closes every open reader (ends their ffmpeg processes)."""
    while _OPEN:
        _OPEN.popitem()[1].close()


@dataclasses.dataclass(frozen=True)
class VideoFrameRef:
    """Frame ``index`` of the video at ``path``; ``read()`` decodes it to uint8 ``[H, W, 3]``."""

    path: pathlib.Path
    index: int

    def read(self) -> np.ndarray:
        return open_video(self.path).frame(self.index)

    def __str__(self) -> str:
        return f"{self.path} (frame {self.index})"
