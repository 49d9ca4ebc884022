"""Input corruption that looks like the real front end (DUSt3R point maps), numpy only, per view.

Applied to an input view's position map ``xyz [H, W, 3]`` (world, metres; zero where untrusted) and
validity ``valid [H, W, 1]`` in place, in this order:

- depth noise: each trusted point moves along its camera ray by ``N(0, (c z^2)^2)`` at camera depth
  ``z`` (``c = data.corruption.depth_noise``, the std in metres at 1 m): a stereo/triangulation
  depth error grows with the square of depth (``sigma_z = z^2 sigma_disparity / (f b)``);
- misalignment: the view's points move by one random similarity about the world origin (the head
  centre), ``x -> s R x + t``: rotation by ``N(0, misalign_degrees)`` degrees about a uniform axis,
  ``t ~ N(0, misalign_translation^2 I)`` metres, ``log s ~ N(0, misalign_log_scale^2)``, as when
  global alignment leaves one view off;
- holes: random discs of ``hole_radius`` pixels become untrusted (low confidence) until at least
  ``hole_fraction`` of the image is covered.

Everything draws from the generator it is given (the pipeline's per-example generator).
"""

from __future__ import annotations

import dataclasses

import numpy as np

_MAX_HOLES = 100_000  # Discs drawn at most per view (hole_fraction < 1 ends far sooner).


@dataclasses.dataclass(frozen=True)
class Corruption:
    """``data.corruption``: all zero is off."""

    depth_noise: float = 0.0
    misalign_degrees: float = 0.0
    misalign_translation: float = 0.0
    misalign_log_scale: float = 0.0
    hole_fraction: float = 0.0
    hole_radius: float = 4.0

    @classmethod
    def from_config(cls, data) -> Corruption:
        return cls(**{f.name: float(data.corruption[f.name]) for f in dataclasses.fields(cls)})

    @property
    def active(self) -> bool:
        return any((self.depth_noise, self.misalign_degrees, self.misalign_translation, self.misalign_log_scale, self.hole_fraction))

    def apply(self, xyz: np.ndarray, valid: np.ndarray, world_to_cam: np.ndarray, rng: np.random.Generator) -> None:
        """Corrupts one view's ``xyz [H, W, 3]`` and ``valid [H, W, 1]`` in place."""
        trusted = valid[..., 0] > 0.5  # [H, W]
        if self.depth_noise > 0:
            xyz[trusted] = depth_noise(xyz[trusted], world_to_cam, self.depth_noise, rng)
        if self.misalign_degrees > 0 or self.misalign_translation > 0 or self.misalign_log_scale > 0:
            scale, rotation, translation = random_similarity(rng, self.misalign_degrees, self.misalign_translation, self.misalign_log_scale)
            xyz[trusted] = scale * xyz[trusted] @ rotation.T + translation
        if self.hole_fraction > 0:
            holes = disc_holes(trusted.shape, self.hole_fraction, self.hole_radius, rng)
            xyz[holes] = 0.0
            valid[holes] = 0.0


def depth_noise(points: np.ndarray, world_to_cam: np.ndarray, coefficient: float, rng: np.random.Generator) -> np.ndarray:
    """``points [N, 3]`` moved along their rays of camera ``world_to_cam [4, 4]`` by ``N(0, (coefficient z^2)^2)``."""
    rotation, translation = world_to_cam[:3, :3], world_to_cam[:3, 3]
    centre = -rotation.T @ translation  # camera centre in world coordinates
    depth = points @ rotation[2] + translation[2]  # [N] camera z
    step = rng.normal(size=depth.shape) * coefficient * depth**2
    factor = (1.0 + step / np.maximum(depth, 1e-6))[:, None]
    return (centre + (points - centre) * factor).astype(points.dtype)


def rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues: the ``[3, 3]`` rotation by ``angle`` radians about unit ``axis [3]``."""
    x, y, z = axis
    cross = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * cross @ cross


def random_similarity(
    rng: np.random.Generator, degrees: float, translation: float, log_scale: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """``(s, R [3, 3], t [3])`` drawn as described in the module docstring."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    rotation = rotation_about(axis, np.deg2rad(degrees) * rng.normal())
    shift = translation * rng.normal(size=3)
    scale = float(np.exp(log_scale * rng.normal()))
    return scale, rotation.astype(np.float32), shift.astype(np.float32)


def disc_holes(shape: tuple[int, int], fraction: float, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Bool ``[H, W]``: discs of ``radius`` pixels at uniform centres until ``>= fraction`` is covered."""
    height, width = shape
    holes = np.zeros(shape, bool)
    need = fraction * height * width
    reach = int(np.ceil(radius))
    offsets = np.arange(-reach, reach + 1)
    for _ in range(_MAX_HOLES):
        if holes.sum() >= need:
            break
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        rows = np.clip(int(cy) + offsets, 0, height - 1)
        cols = np.clip(int(cx) + offsets, 0, width - 1)
        inside = (rows[:, None] + 0.5 - cy) ** 2 + (cols[None, :] + 0.5 - cx) ** 2 <= radius**2
        holes[np.ix_(rows, cols)] |= inside
    return holes
