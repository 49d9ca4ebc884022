"""A live browser viewer of an avatar (viser): Gaussian splats, one slider per expression dimension,
keyframe playback.

The photos are encoded once; every slider change decodes only the expression-dependent part
(``InferenceModel.decode`` on the cached context) and replaces the splats. Changes arriving while a
decode runs are coalesced: a worker thread always decodes the newest code. viser is an optional
dependency (``pip install -e .[view]``), imported when a viewer is made.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from avat3r_jax.export import animate

if TYPE_CHECKING:
    from avat3r_jax.export.inputs import AvatarInputs
    from avat3r_jax.export.runtime import InferenceModel
    from avat3r_jax.gaussians import Gaussians

SPLATS = "/avatar"
PLAYBACK_FPS = 12.0


def splat_arrays(gaussians: Gaussians) -> dict[str, np.ndarray]:
    """viser's splat arrays for one avatar (batch shape ``[]``): ``centers [N, 3]``, ``covariances
    [N, 3, 3]``, ``rgbs [N, 3]`` in [0, 1], ``opacities [N, 1]``. Colours are the SH DC term."""
    return {
        "centers": np.asarray(gaussians.means, np.float32),
        "covariances": np.asarray(gaussians.covariances, np.float32),
        "rgbs": np.clip(np.asarray(gaussians.colors, np.float32), 0.0, 1.0),
        "opacities": np.asarray(gaussians.opacities, np.float32)[:, None],
    }


def slider_ranges(keyframes: np.ndarray, margin: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension slider bounds ``[D]``: the keyframes' range widened by ``margin`` of its span
    on each side (at least +-1 around the keyframes' mean where they do not vary), rounded outwards
    to the sliders' 0.01 steps."""
    low, high = keyframes.min(0), keyframes.max(0)
    span = np.maximum(high - low, 2.0 / (1.0 + 2.0 * margin))
    centre = (low + high) / 2.0
    return np.floor((centre - span * (0.5 + margin)) * 100) / 100, np.ceil((centre + span * (0.5 + margin)) * 100) / 100


class AvatarViewer:
    """Serves ``model``'s avatar of ``inputs`` at ``http://host:port``; ``keyframes [K, D]`` seed the
    sliders and the playback loop (``frames_per_keyframe`` frames between neighbours)."""

    def __init__(
        self,
        model: InferenceModel,
        inputs: AvatarInputs,
        keyframes: np.ndarray,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        frames_per_keyframe: int = 12,
    ):
        import viser

        self.model = model
        self.context = model.encode(inputs.batch)
        self.keyframes = np.asarray(keyframes, np.float32).reshape(-1, model.settings.expression_dim)
        self.sequence = animate.interpolate_keyframes(self.keyframes, frames_per_keyframe)  # [T, D]
        self.decode_seconds: list[float] = []  # Wall time of each decode + splat upload.
        self._wanted: np.ndarray | None = None
        self._changed = threading.Condition()
        self._closed = False
        self._quiet = False  # Set while show_frame moves the sliders: one request for the whole code.

        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.server.scene.set_up_direction("-y")  # OpenCV world: y points down.
        self._aim_initial_camera(inputs)
        low, high = slider_ranges(self.keyframes)
        with self.server.gui.add_folder("Expression"):
            self.sliders = [
                self.server.gui.add_slider(
                    f"e{index}", min=float(low[index]), max=float(high[index]), step=0.01, initial_value=float(self.keyframes[0, index])
                )
                for index in range(self.keyframes.shape[1])
            ]
        with self.server.gui.add_folder("Keyframes"):
            self.play = self.server.gui.add_checkbox("play", initial_value=False)
            self.frame = self.server.gui.add_slider("frame", min=0, max=len(self.sequence) - 1, step=1, initial_value=0)
        for slider in self.sliders:
            slider.on_update(lambda _: None if self._quiet else self.request(self.slider_code()))
        self.frame.on_update(lambda _: self.show_frame(int(self.frame.value)))

        self._show(self.keyframes[0])
        self._worker = threading.Thread(target=self._decode_loop, name="avatar-decode", daemon=True)
        self._worker.start()
        self._player = threading.Thread(target=self._play_loop, name="avatar-playback", daemon=True)
        self._player.start()

    @property
    def url(self) -> str:
        return f"http://{self.server.get_host()}:{self.server.get_port()}"

    def slider_code(self) -> np.ndarray:
        return np.array([slider.value for slider in self.sliders], np.float32)

    def show_frame(self, index: int) -> None:
        """Moves the sliders to playback frame ``index`` and shows it."""
        code = self.sequence[index % len(self.sequence)]
        self._quiet = True
        try:
            with self.server.atomic():
                for slider, value in zip(self.sliders, code, strict=True):
                    slider.value = float(value)
        finally:
            self._quiet = False
        self.request(code)

    def request(self, code: np.ndarray) -> None:
        """Asks for ``code [D]`` to be shown; a newer request replaces one not yet started."""
        with self._changed:
            self._wanted = np.asarray(code, np.float32)
            self._changed.notify()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Blocks until every requested code has been shown."""
        end = time.monotonic() + timeout
        with self._changed:
            while self._wanted is not None or self._busy:
                if not self._changed.wait(max(end - time.monotonic(), 0.0)) and time.monotonic() >= end:
                    raise TimeoutError("the viewer did not finish decoding in time")

    _busy = False

    def _decode_loop(self) -> None:
        while True:
            with self._changed:
                while self._wanted is None and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                code, self._wanted, self._busy = self._wanted, None, True
            try:
                self._show(code)
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()

    def _show(self, code: np.ndarray) -> None:
        start = time.perf_counter()
        gaussians = self.model.decode(self.context, code[None])
        splats = splat_arrays(gaussians[0])
        self.server.scene.add_gaussian_splats(SPLATS, **splats)
        self.decode_seconds.append(time.perf_counter() - start)

    def _play_loop(self) -> None:
        while not self._closed:
            time.sleep(1.0 / PLAYBACK_FPS)
            if self.play.value and not self._busy:
                self.frame.value = (int(self.frame.value) + 1) % len(self.sequence)  # on_update shows it

    def _aim_initial_camera(self, inputs: AvatarInputs) -> None:
        """Starts the browser's camera at input view 0 with its field of view, looking at the centre of its position map."""
        world_to_cam = np.asarray(inputs.batch["world_to_cam"][0, 0], np.float64)
        height, focal_y = inputs.batch["images"].shape[2], float(inputs.batch["K"][0, 0, 1, 1])
        self.server.initial_camera.fov = 2.0 * np.arctan(height / (2.0 * focal_y))  # vertical, radians
        centre = -world_to_cam[:3, :3].T @ world_to_cam[:3, 3]
        target = centre + world_to_cam[2, :3]  # 1 m ahead, without a position map
        if "posmaps" in inputs.batch:
            points = np.asarray(inputs.batch["posmaps"][0], np.float64).reshape(-1, 3)
            valid = np.asarray(inputs.batch.get("posmap_valid", np.ones(points.shape[:1]))).reshape(-1) > 0.5
            valid &= np.isfinite(points).all(-1)
            if valid.any():
                target = np.median(points[valid], 0)
        self.server.initial_camera.position = tuple(centre)
        self.server.initial_camera.look_at = tuple(target)
        self.server.initial_camera.up = (0.0, -1.0, 0.0)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._worker.join(timeout=10)
        self._player.join(timeout=10)
        self.server.stop()
