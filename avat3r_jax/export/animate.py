"""Animation inputs: expression sequences, viewing cameras around an avatar, frame timing."""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from avat3r_jax.geometry import Cameras, camera_centers, crop_intrinsics, look_at, resize_intrinsics


def interpolate_keyframes(keyframes: np.ndarray, frames_per_keyframe: int) -> np.ndarray:
    """A closed loop through ``keyframes [K, D]``: ``frames_per_keyframe`` linear steps from each to the next -> ``[K * n, D]``.

    Frame ``k * n`` is keyframe ``k`` exactly; after the last keyframe the loop returns to the first.
    """
    keyframes = np.asarray(keyframes, np.float32)
    if keyframes.ndim != 2 or len(keyframes) == 0:
        raise ValueError(f"keyframes must be [K, D] with K >= 1, got shape {keyframes.shape}")
    if frames_per_keyframe < 1:
        raise ValueError(f"frames_per_keyframe must be >= 1, got {frames_per_keyframe}")
    weights = np.arange(frames_per_keyframe, dtype=np.float32)[:, None] / frames_per_keyframe  # [n, 1]
    following = np.roll(keyframes, -1, axis=0)
    frames = keyframes[:, None] * (1.0 - weights) + following[:, None] * weights  # [K, n, D]
    return frames.reshape(-1, keyframes.shape[1])


def expression_sequence(path: str | None, keyframes: np.ndarray | None, frames_per_keyframe: int, dim: int) -> np.ndarray:
    """The animation's codes ``[T, D]`` from ``--expressions`` or the input keyframes."""
    if path is None:
        if keyframes is None:
            raise ValueError("no expression codes: pass --expressions=seq.npy ([T, D]) or list keyframe 'expressions' in inputs.json")
        return interpolate_keyframes(keyframes, frames_per_keyframe)
    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"--expressions: cannot read {path} as a .npy array ({error})") from error
    if codes.ndim != 2 or codes.shape[1] != dim or len(codes) == 0:
        raise ValueError(
            f"--expressions: {path} must hold codes [T, {dim}] (T >= 1, data.expression_dim={dim}), got shape {list(codes.shape)}"
        )
    if not np.isfinite(codes).all():
        raise ValueError(f"--expressions: {path} contains non-finite values")
    return codes.astype(np.float32)


def render_intrinsics(K: jax.Array, input_size: tuple[int, int], render_size: tuple[int, int]) -> jax.Array:
    """Intrinsics of an input camera ``K [..., 3, 3]`` for rendering at ``render_size`` with square pixels kept square.

    The input view is scaled uniformly to fit ``render_size`` and centred (letterboxed when the aspect
    ratios differ), so the whole input field of view stays visible.
    """
    (height, width), (render_height, render_width) = input_size, render_size
    scale = min(render_height / height, render_width / width)
    K = resize_intrinsics(K, scale, scale)
    return crop_intrinsics(K, -(render_width - width * scale) / 2, -(render_height - height * scale) / 2)


def avatar_center(means: jax.Array) -> jax.Array:
    """A robust centre of one avatar's Gaussians ``[N, 3]``: the per-axis median."""
    return jnp.median(means, axis=0)


@functools.partial(jax.jit, static_argnums=(3, 5, 6))
def orbit_around(
    input_K: jax.Array,
    input_world_to_cam: jax.Array,
    center: jax.Array,
    count: int,
    elevation_degrees: float,
    input_size: tuple[int, int],
    render_size: tuple[int, int],
) -> Cameras:
    """``count`` cameras ``[count]`` circling ``center`` at the input cameras' mean distance, with the first input's lens.

    ``input_K [V, 3, 3]``, ``input_world_to_cam [V, 4, 4]``. The orbit's up axis is the input
    cameras' mean image-up direction; azimuth 0 is the first input camera's side, so the orbit starts
    near the first photo's viewpoint, and the cameras are raised by ``elevation_degrees``.
    """
    centers = camera_centers(input_world_to_cam)  # [V, 3]
    radius = jnp.mean(jnp.linalg.norm(centers - center, axis=-1))
    up = -jnp.mean(input_world_to_cam[:, 1, :3], axis=0)  # a camera's y axis points down its image
    up = up / jnp.linalg.norm(up)
    front = centers[0] - center
    front = front - jnp.dot(front, up) * up
    front = front / jnp.linalg.norm(front)
    side = jnp.cross(up, front)
    azimuth = jnp.linspace(0.0, 2.0 * jnp.pi, count, endpoint=False)[:, None]
    elevation = jnp.deg2rad(elevation_degrees)
    direction = jnp.cos(elevation) * (jnp.cos(azimuth) * front + jnp.sin(azimuth) * side) + jnp.sin(elevation) * up
    eye = center + radius * direction  # [count, 3]
    world_to_cam = look_at(eye, jnp.broadcast_to(center, eye.shape), jnp.broadcast_to(up, eye.shape))
    K = jnp.broadcast_to(render_intrinsics(input_K[0], input_size, render_size), (count, 3, 3))
    return Cameras(K, world_to_cam)


@dataclasses.dataclass
class FrameTimer:
    """Wall times of repeated blocking calls; the first ``warmup`` are compile/warm-up and not counted."""

    warmup: int = 1
    seconds: list[float] = dataclasses.field(default_factory=list)
    _calls: int = 0

    def time(self, fn, *args):
        """Calls ``fn(*args)``, blocks on its result, records the time; returns the result."""
        start = time.perf_counter()
        result = jax.block_until_ready(fn(*args))
        elapsed = time.perf_counter() - start
        self._calls += 1
        if self._calls > self.warmup:
            self.seconds.append(elapsed)
        return result

    @property
    def median(self) -> float:
        if not self.seconds:
            raise ValueError("no timed calls after the warm-up")
        return statistics.median(self.seconds)
