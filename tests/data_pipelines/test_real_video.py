"""Frames of an mp4 by index, in any order, through one reader per video."""

import numpy as np
import pytest

from data_pipelines.real import video
from data_pipelines.real.common import ConversionError
from tests.data_pipelines import layout_fixtures


def test_frames_by_index_forward_backward_and_past_the_end(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (24, 16, 3), dtype=np.uint8) for _ in range(6)]
    path = tmp_path / "cam_0.mp4"
    layout_fixtures.write_video(path, frames)
    for index in (0, 2, 3, 5, 1, 4):  # forward with strides, then backwards (a seek), then forward again
        decoded = video.VideoFrameRef(path, index).read()
        assert decoded.shape == (24, 16, 3)
        assert np.abs(decoded.astype(int) - frames[index]).max() <= 2, index  # lossless quantiser, colour conversion rounding
    with pytest.raises(ConversionError, match="has no frame 6"):
        video.VideoFrameRef(path, 6).read()
    assert len({id(video.open_video(path)) for _ in range(3)}) == 1  # one open reader per video
    video.close_all()
