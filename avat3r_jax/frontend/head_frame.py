"""The head frame the model was trained in, and the one rule that brings any camera set into it.

The training data lives in a head frame: metres, y up, the face looking down +z, the cameras about
``TrainingRig.camera_distance`` from the head and looking at ``TrainingRig.look_at`` (the synthetic
rig of ``data_pipelines/synthetic/rig.py``; converted datasets with head poses use the same frame).
DUSt3R's global alignment gives cameras and points in a frame of its own (arbitrary origin,
rotation and scale). ``fit_head_frame`` finds the similarity ``x_head = scale * R (x - centre) +
look_at`` from the cameras alone, as training cameras would be read:

- centre: the least-squares point nearest all optical axes (the head is what the photos aim at);
  with one camera, axes too close to parallel to cross, or a crossing behind a camera, the robust
  centre of the confident points pushed back from the surface by the training rig's surface depth;
- scale: the mean camera distance to the centre becomes ``camera_distance`` (one camera: the median
  point depth becomes ``surface_depth``);
- up: photos are taken upright, so each camera's right axis is horizontal; up is the direction
  most orthogonal to all right axes, on the side of the cameras' mean up vector (with one camera,
  or all at one yaw, the cameras' mean up vector itself);
- forward: the mean direction from the centre to the cameras, made horizontal (faces are
  photographed from the front half).

``HeadFrame.transform`` applies it to cameras and points; ``HeadFrame.residual`` says how far the
cameras are from the training distribution.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Optical axes whose normal matrix has its smallest eigenvalue under this (about 8 degrees of spread
# between two axes) do not cross reliably; the centre then comes from the points.
_MIN_AXIS_SPREAD = np.sin(np.deg2rad(8.0)) ** 2 / 2
# Weight of the cameras' mean up vector when the right axes leave up undetermined.
_UP_PRIOR = 1e-6
# Degrees a camera may lie beyond the rig's yaw and elevation ranges (the rig jitters by 3) before it is named.
_ANGLE_SLACK = 5.0


@dataclasses.dataclass(frozen=True)
class TrainingRig:
    """The cameras of the training distribution, in the head frame (defaults: ``dome_cameras``)."""

    camera_distance: float = 1.0  # metres from ``look_at``
    look_at: tuple[float, float, float] = (0.0, -0.01, 0.0)  # the point the cameras aim at
    focal_ratio: float = 3.0  # focal length in image sizes (a view spans 1/3 m at 1 m)
    yaw_range_degrees: tuple[float, float] = (-80.0, 80.0)  # yaw 0: camera on +z, facing the face
    elevation_range_degrees: tuple[float, float] = (-15.0, 30.0)
    head_radius: float = 0.12  # metres around ``look_at`` a head-centred crop must hold (hair included)
    surface_depth: float = 0.94  # median depth of the visible head surface from a camera at camera_distance


TRAINING_RIG = TrainingRig()


@dataclasses.dataclass(frozen=True)
class FrameResidual:
    """How the cameras, brought into the head frame, differ from the training rig."""

    distance_m: np.ndarray  # [V] distance of each camera from the rig's look-at point (metres)
    axis_miss_m: np.ndarray  # [V] distance of each optical axis from the look-at point (metres)
    yaw_degrees: np.ndarray  # [V]
    elevation_degrees: np.ndarray  # [V]
    roll_degrees: np.ndarray  # [V] angle of each camera's right axis out of the horizontal plane
    outside_rig: tuple[str, ...]  # one phrase per way a camera lies outside the training ranges

    def summary(self) -> str:
        ranges = (
            f"distances {self.distance_m.min():.3f}-{self.distance_m.max():.3f} m, "
            f"axes miss the head centre by up to {1000 * self.axis_miss_m.max():.0f} mm, "
            f"yaw {self.yaw_degrees.min():+.0f}..{self.yaw_degrees.max():+.0f} deg, "
            f"elevation {self.elevation_degrees.min():+.0f}..{self.elevation_degrees.max():+.0f} deg, "
            f"roll up to {np.abs(self.roll_degrees).max():.1f} deg"
        )
        return ranges + ("; outside the training rig: " + "; ".join(self.outside_rig) if self.outside_rig else "; within the training rig")


@dataclasses.dataclass(frozen=True)
class Similarity:
    """``x_head = scale * rotation @ (x - centre) + look_at``: a source frame -> the head frame."""

    scale: float
    rotation: np.ndarray  # [3, 3] rows: the head frame's x, y (up), z (forward) axes in the source frame
    centre: np.ndarray  # [3] the head centre in the source frame
    look_at: np.ndarray  # [3] where the centre lands in the head frame

    def points(self, points: np.ndarray) -> np.ndarray:
        """Source-frame points ``[..., 3]`` -> head frame (float64)."""
        return self.scale * (np.asarray(points, np.float64) - self.centre) @ self.rotation.T + self.look_at

    def world_to_cam(self, world_to_cam: np.ndarray) -> np.ndarray:
        """Source-frame cameras ``[..., 4, 4]`` -> the same cameras in the head frame (rigid, metres)."""
        world_to_cam = np.asarray(world_to_cam, np.float64)
        rotation = world_to_cam[..., :3, :3] @ self.rotation.T
        centres = self.points(camera_centres(world_to_cam))
        out = np.zeros_like(world_to_cam)
        out[..., :3, :3] = rotation
        out[..., :3, 3] = -np.einsum("...ij,...j->...i", rotation, centres)
        out[..., 3, 3] = 1.0
        return out


@dataclasses.dataclass(frozen=True)
class HeadFrame:
    """The fitted similarity, what placed the centre, and how far the cameras are from the rig."""

    transform: Similarity
    centre_from: str  # "optical axes" or "points"
    residual: FrameResidual


def camera_centres(world_to_cam: np.ndarray) -> np.ndarray:
    """``[..., 4, 4]`` -> camera centres ``[..., 3]`` in the world (float64)."""
    world_to_cam = np.asarray(world_to_cam, np.float64)
    rotation, translation = world_to_cam[..., :3, :3], world_to_cam[..., :3, 3]
    return -np.einsum("...ji,...j->...i", rotation, translation)


def nearest_point_to_lines(origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares point nearest the lines ``origins [V, 3] + t * directions [V, 3]``.

    Returns the point and the smallest eigenvalue of the mean normal matrix ``mean(I - d d^T)``
    (0 when the lines are parallel: then the point is not determined along them).
    """
    d = directions / np.linalg.norm(directions, axis=-1, keepdims=True)
    normal = np.eye(3)[None] - d[:, :, None] * d[:, None, :]  # [V, 3, 3]
    matrix = normal.mean(0)
    spread = float(np.linalg.eigvalsh(matrix)[0])
    point = np.linalg.lstsq(matrix, np.einsum("vij,vj->i", normal, origins) / len(origins), rcond=None)[0]
    return point, spread


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _up_direction(rights: np.ndarray, ups: np.ndarray) -> np.ndarray:
    """The direction most orthogonal to all right axes ``[V, 3]``, on the side of the mean up ``[V, 3]``."""
    mean_up = _unit(ups.mean(0))
    matrix = np.einsum("vi,vj->ij", rights, rights) / len(rights) + _UP_PRIOR * (np.eye(3) - np.outer(mean_up, mean_up))
    up = np.linalg.eigh(matrix)[1][:, 0]
    return up if up @ mean_up >= 0 else -up


def fit_head_frame(
    world_to_cam: np.ndarray,
    points: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    rig: TrainingRig = TRAINING_RIG,
) -> HeadFrame:
    """The head frame of cameras ``world_to_cam [V, 4, 4]`` in any frame (rotation, translation, scale).

    ``points [N, 3]`` (with optional ``weights [N]``, e.g. confidences) are the head's points in the
    same frame; they are needed only when the optical axes do not cross (one camera).
    """
    world_to_cam = np.asarray(world_to_cam, np.float64)
    if world_to_cam.ndim != 3 or world_to_cam.shape[1:] != (4, 4) or len(world_to_cam) == 0:
        raise ValueError(f"world_to_cam must be [V, 4, 4] with V >= 1, got shape {world_to_cam.shape}")
    rotations = world_to_cam[:, :3, :3]
    rights, ups, axes = rotations[:, 0], -rotations[:, 1], rotations[:, 2]  # camera x, -y, z in the world
    origins = camera_centres(world_to_cam)
    centre, spread = nearest_point_to_lines(origins, axes) if len(origins) > 1 else (None, 0.0)
    if spread >= _MIN_AXIS_SPREAD and np.all(np.einsum("vi,vi->v", centre - origins, axes) > 0):
        scale = rig.camera_distance / float(np.linalg.norm(origins - centre, axis=-1).mean())
        centre_from = "optical axes"
    else:
        centre, scale = _centre_from_points(origins, axes, points, weights, rig)
        centre_from = "points"
    up = _up_direction(rights, ups)
    forward = _unit(origins - centre).mean(0)
    forward = forward - (forward @ up) * up
    if np.linalg.norm(forward) < 1e-6:
        raise ValueError("the cameras look straight down or up at the head: its forward direction is undetermined")
    forward = _unit(forward)
    rotation = np.stack([np.cross(up, forward), up, forward])
    transform = Similarity(scale, rotation, centre, np.asarray(rig.look_at, np.float64))
    return HeadFrame(transform, centre_from, rig_residual(transform.world_to_cam(world_to_cam), rig))


def _centre_from_points(
    origins: np.ndarray, axes: np.ndarray, points: np.ndarray | None, weights: np.ndarray | None, rig: TrainingRig
) -> tuple[np.ndarray, float]:
    """Centre and scale from the confident points when the optical axes do not cross."""
    if points is None or len(points) == 0:
        raise ValueError("the cameras' optical axes do not cross (one view, or all views from one direction): points are needed")
    points = np.asarray(points, np.float64)
    weights = np.ones(len(points)) if weights is None else np.asarray(weights, np.float64)
    keep = np.isfinite(points).all(-1) & (weights > 0)
    if not keep.any():
        raise ValueError("no confident points to place the head from")
    points, weights = points[keep], weights[keep]
    origin, axis = origins.mean(0), _unit(axes.mean(0))
    surface = np.array([_weighted_median(points[:, k], weights) for k in range(3)])
    depth = _weighted_median((points - origin) @ axis, weights)
    scale = rig.surface_depth / depth
    centre = origin + _unit(surface - origin) * (rig.camera_distance / scale)
    return centre, float(scale)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def rig_residual(world_to_cam: np.ndarray, rig: TrainingRig = TRAINING_RIG) -> FrameResidual:
    """How head-frame cameras ``[V, 4, 4]`` compare with the training rig."""
    world_to_cam = np.asarray(world_to_cam, np.float64)
    look_at = np.asarray(rig.look_at, np.float64)
    offset = camera_centres(world_to_cam) - look_at  # [V, 3]
    distance = np.linalg.norm(offset, axis=-1)
    axes, rights = world_to_cam[:, 2, :3], world_to_cam[:, 0, :3]
    along = np.einsum("vi,vi->v", -offset, axes)
    axis_miss = np.linalg.norm(-offset - along[:, None] * axes, axis=-1)
    yaw = np.rad2deg(np.arctan2(offset[:, 0], offset[:, 2]))
    elevation = np.rad2deg(np.arcsin(np.clip(offset[:, 1] / distance, -1, 1)))
    roll = np.rad2deg(np.arcsin(np.clip(rights[:, 1], -1, 1)))
    outside = []
    lo, hi = rig.yaw_range_degrees[0] - _ANGLE_SLACK, rig.yaw_range_degrees[1] + _ANGLE_SLACK
    if yaw.min() < lo or yaw.max() > hi:
        outside.append(f"yaw {yaw.min():+.0f}..{yaw.max():+.0f} deg beyond {lo:+.0f}..{hi:+.0f}")
    lo, hi = rig.elevation_range_degrees[0] - _ANGLE_SLACK, rig.elevation_range_degrees[1] + _ANGLE_SLACK
    if elevation.min() < lo or elevation.max() > hi:
        outside.append(f"elevation {elevation.min():+.0f}..{elevation.max():+.0f} deg beyond {lo:+.0f}..{hi:+.0f}")
    relative = np.abs(distance / rig.camera_distance - 1)
    if relative.max() > 0.15:
        outside.append(f"camera distances differ from each other by up to {100 * relative.max():.0f}% of {rig.camera_distance} m")
    if np.abs(roll).max() > 10:
        outside.append(f"a camera is rolled by {np.abs(roll).max():.0f} deg (photos should be upright)")
    if (axis_miss / distance).max() > np.tan(np.deg2rad(10)):
        outside.append("a photo is aimed more than 10 deg away from the head")
    return FrameResidual(distance, axis_miss, yaw, elevation, roll, tuple(outside))
