"""mp4 and PNG writers: frame count, size and content survive a decode by ffmpeg."""

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest

from avat3r_jax.export.video import Mp4Writer, to_uint8, write_mp4, write_png


def test_mp4_has_every_frame_with_its_content(tmp_path):
    # Odd sizes exercise the even padding H.264 needs; flat grey levels survive lossy coding.
    levels = np.linspace(0.1, 0.9, 7)
    frames = [np.full((21, 19, 3), level, np.float32) for level in levels]
    assert write_mp4(tmp_path / "a.mp4", frames, fps=12) == 7
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "a.mp4"))[0] == 7
    decoded = iio.imread(tmp_path / "a.mp4", index=None)
    assert decoded.shape == (7, 22, 20, 3)
    np.testing.assert_allclose(decoded[:, :21, :19].mean(axis=(1, 2, 3)), levels * 255, atol=3)


def test_mp4_refuses_frames_of_different_sizes(tmp_path):
    with Mp4Writer(tmp_path / "b.mp4", fps=5) as writer:
        writer.add(np.zeros((8, 8, 3)))
        with pytest.raises(ValueError, match="one size"):
            writer.add(np.zeros((10, 8, 3)))
    with pytest.raises(ValueError, match="fps"):
        Mp4Writer(tmp_path / "c.mp4", fps=0)


def test_png_round_trip(tmp_path, rng):
    image = rng.uniform(-0.2, 1.2, (5, 6, 3))
    read = iio.imread(write_png(tmp_path / "x.png", image))
    np.testing.assert_array_equal(read, to_uint8(image))
    np.testing.assert_allclose(read / 255.0, np.clip(image, 0, 1), atol=0.5 / 255 + 1e-9)
