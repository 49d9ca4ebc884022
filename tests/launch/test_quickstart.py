"""avat3r-quickstart's pieces: the CPU sizing, the bundle's render settings, the orbit videos (tests import no module with flags)."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
from PIL import Image

from avat3r_jax.export import video
from configs import synthetic
from launch import device_sizing


def test_cpu_sizing_halves_the_batch_and_says_why_while_a_gpu_keeps_the_config():
    config = synthetic.get_config()
    sized, reason = device_sizing.sized_for_device(config, "cpu")
    assert sized.data.batch_size == device_sizing.CPU_BATCH_SIZE < config.data.batch_size
    assert sized.render.tile_size == device_sizing.CPU_TILE_SIZE
    assert sized.render.max_intersections == device_sizing.CPU_INTERSECTIONS_PER_GAUSSIAN * 4 * 64 * 64
    assert f"batch {device_sizing.CPU_BATCH_SIZE}" in reason and "4-px tiles" in reason
    kept, reason = device_sizing.sized_for_device(config, "gpu")
    assert kept.to_dict() == config.to_dict() and "the config's rasterizer settings" in reason


def test_the_bundle_renders_with_the_never_overflowing_buffer():
    sized, _ = device_sizing.sized_for_device(synthetic.get_config(), "cpu")
    bundled = device_sizing.inference_config(sized)
    assert bundled.render.max_intersections == 0 and sized.render.max_intersections > 0


def test_orbit_frames_become_an_mp4_and_a_gif_with_their_content(tmp_path):
    rng = np.random.default_rng(0)
    frames = [np.full((32, 32, 3), value, np.uint8) for value in (40, 120, 200)]
    frames[1][8:24, 8:24] = rng.integers(0, 255, (16, 16, 3))
    for index, frame in enumerate(frames):
        iio.imwrite(tmp_path / f"orbit_{index:03d}.png", frame)
    count = video.write_orbit_videos(tmp_path, tmp_path / "orbit.mp4", tmp_path / "orbit.gif")
    assert count == 3
    mp4 = iio.imread(tmp_path / "orbit.mp4")
    assert mp4.shape[0] == 3
    np.testing.assert_allclose([v.mean() for v in mp4], [f.mean() for f in frames], atol=6.0)  # lossy codec
    gif = Image.open(tmp_path / "orbit.gif")
    assert gif.n_frames == 3 and gif.info.get("loop") == 0
    gif.seek(2)
    np.testing.assert_allclose(np.asarray(gif.convert("RGB")).mean(), 200, atol=2.0)
