"""avat3r-view in a real headless browser: the page shows the splats, and a slider move changes them.

Needs viser (``.[view]``), playwright's Python client and Chromium from the OS packages
(``apt-get install chromium``; ``.ci/run`` installs it). Playwright drives that binary: it never
downloads a browser.
"""

from __future__ import annotations

import pathlib
import shutil
import socket

import numpy as np
import pytest

from avat3r_jax.export.inputs import AvatarInputs
from avat3r_jax.export.runtime import InferenceModel
from avat3r_jax.export.viewer import AvatarViewer, slider_ranges, splat_arrays
from avat3r_jax.spec import ModelSpec
from configs.tiny import get_config
from tests.export.examples import random_batch, random_params

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT = {"width": 960, "height": 540}


def _viewer(port: int, scale: float = 0.05) -> AvatarViewer:
    config = get_config()
    rng = np.random.default_rng(0)
    model = InferenceModel(config, random_params(config, rng, scale)[1])
    batch = random_batch(rng, ModelSpec.from_config(config))
    keyframes = rng.normal(size=(3, model.settings.expression_dim)).astype(np.float32)
    inputs = AvatarInputs({k: v for k, v in batch.items() if k != "expression"}, keyframes, ["a.png", "b.png"])
    return AvatarViewer(model, inputs, keyframes, port=port, frames_per_keyframe=2)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_splat_arrays_and_slider_ranges():
    config = get_config()
    rng = np.random.default_rng(1)
    model = InferenceModel(config, random_params(config, rng)[1])
    batch = random_batch(rng, ModelSpec.from_config(config))
    gaussians = model.forward(batch)[0]
    splats = splat_arrays(gaussians)
    n = gaussians.count
    assert {k: v.shape for k, v in splats.items()} == {"centers": (n, 3), "covariances": (n, 3, 3), "rgbs": (n, 3), "opacities": (n, 1)}
    np.testing.assert_allclose(splats["covariances"], np.swapaxes(splats["covariances"], 1, 2), atol=1e-12)
    assert np.all(np.linalg.eigvalsh(splats["covariances"].astype(np.float64)) > 0)  # symmetric positive definite
    low, high = slider_ranges(np.array([[0.0, 1.0], [2.0, 1.0]]))
    np.testing.assert_allclose(low, [-1.0, 0.0])  # span 2 widened by half of it each side; a flat dimension gets +-1
    np.testing.assert_allclose(high, [3.0, 2.0])


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_browser_shows_the_splats_and_a_slider_move_changes_them(tmp_path: pathlib.Path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright's Python client is not installed (.[dev])")
    pytest.importorskip("viser", reason="viser is not installed (.[view])")
    viewer = _viewer(_free_port())
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=CHROMIUM, args=list(BROWSER_FLAGS), headless=True, viewport=VIEWPORT
            )  # a fresh profile directory
            page = browser.new_page()
            page.goto(viewer.url)
            page.get_by_text("Connected").wait_for(timeout=20_000)
            before = _settled_screenshot(page, tmp_path / "before.png")
            splat_pixels = np.any(np.abs(before.astype(int) - 255) > 30, -1)  # non-white: splats (and the GUI panel)
            assert _canvas_share(splat_pixels) > 0.002, "no splats on the canvas"

            thumb = page.get_by_role("slider").first  # the first expression slider's thumb
            thumb.focus()
            thumb.press("End")  # to its maximum, as a keyboard user moves it
            page.wait_for_timeout(300)
            viewer.wait_idle()
            assert viewer.sliders[0].value == pytest.approx(viewer.sliders[0].max, abs=0.01)
            after = _settled_screenshot(page, tmp_path / "after.png")
            changed = np.any(before != after, -1)
            assert _canvas_share(changed) > 0.0005, "the slider move did not change the splats"
            browser.close()
    finally:
        viewer.close()
    assert len(viewer.decode_seconds) >= 2  # the first view and the slider's


def _settled_screenshot(page, path: pathlib.Path) -> np.ndarray:
    """A screenshot once two in a row agree (software WebGL sorts and draws the splats in a few frames)."""
    import imageio.v3 as iio

    previous = None
    for _ in range(20):
        page.wait_for_timeout(400)
        page.screenshot(path=str(path))
        image = iio.imread(path)[..., :3]
        if previous is not None and np.array_equal(previous, image):
            return image
        previous = image
    return previous


def _canvas_share(mask: np.ndarray) -> float:
    """Share of the viewport's centre (where the camera looks; clear of the GUI panel, the notices and the axes) set in ``mask``."""
    height, width = mask.shape
    return float(mask[int(0.3 * height) : int(0.85 * height), int(0.25 * width) : int(0.65 * width)].mean())
