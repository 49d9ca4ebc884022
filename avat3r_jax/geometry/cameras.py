"""Pinhole cameras in the OpenCV convention.

Intrinsics ``K [..., 3, 3]`` are in pixels with pixel centres at ``+0.5`` (the top-left pixel
spans ``[0, 1] x [0, 1]`` and its centre is ``(0.5, 0.5)``). Extrinsics are ``world_to_cam
[..., 4, 4]`` rigid transforms; the camera looks down its ``+z`` axis, ``x`` right, ``y`` down.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Cameras:
    """A batch of pinhole cameras: ``K [..., 3, 3]`` and ``world_to_cam [..., 4, 4]``."""

    K: jax.Array
    world_to_cam: jax.Array

    def __post_init__(self):
        k_shape, w_shape = getattr(self.K, "shape", None), getattr(self.world_to_cam, "shape", None)
        if k_shape is None or w_shape is None:  # tracer-free pytree reconstruction (e.g. None leaves)
            return
        if k_shape[-2:] != (3, 3):
            raise ValueError(f"Cameras.K must end in (3, 3), got shape {k_shape}")
        if w_shape[-2:] != (4, 4):
            raise ValueError(f"Cameras.world_to_cam must end in (4, 4), got shape {w_shape}")
        if k_shape[:-2] != w_shape[:-2]:
            raise ValueError(f"Cameras.K batch shape {k_shape[:-2]} != world_to_cam batch shape {w_shape[:-2]}")

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.K.shape[:-2])

    @property
    def cam_to_world(self) -> jax.Array:
        return invert_rigid(self.world_to_cam)

    @property
    def centers(self) -> jax.Array:
        return camera_centers(self.world_to_cam)

    def __getitem__(self, index) -> Cameras:
        return Cameras(self.K[index], self.world_to_cam[index])


def make_intrinsics(fx, fy, cx, cy) -> jax.Array:
    """Builds ``K [..., 3, 3]`` from broadcastable focal lengths and principal point (pixels)."""
    fx, fy, cx, cy = jnp.broadcast_arrays(*(jnp.asarray(v, jnp.float32) for v in (fx, fy, cx, cy)))
    zero, one = jnp.zeros_like(fx), jnp.ones_like(fx)
    rows = [
        jnp.stack([fx, zero, cx], -1),
        jnp.stack([zero, fy, cy], -1),
        jnp.stack([zero, zero, one], -1),
    ]
    return jnp.stack(rows, -2)


def intrinsics_from_fov(fov_y_degrees: float, height: int, width: int) -> jax.Array:
    """Square-pixel intrinsics ``[3, 3]`` with vertical field of view and a centred principal point."""
    fy = 0.5 * height / jnp.tan(0.5 * jnp.deg2rad(fov_y_degrees))
    return make_intrinsics(fy, fy, width / 2.0, height / 2.0)


def resize_intrinsics(K: jax.Array, scale_x, scale_y) -> jax.Array:
    """Intrinsics after resizing the image by ``(scale_x, scale_y)`` (pixel-centre consistent)."""
    scale = jnp.stack(
        jnp.broadcast_arrays(jnp.asarray(scale_x, K.dtype), jnp.asarray(scale_y, K.dtype), jnp.ones((), K.dtype)),
        -1,
    )
    return K * scale[..., :, None]


def crop_intrinsics(K: jax.Array, left, top) -> jax.Array:
    """Intrinsics after cropping ``left``/``top`` pixels off the image."""
    offset = jnp.stack(jnp.broadcast_arrays(jnp.asarray(left, K.dtype), jnp.asarray(top, K.dtype)), -1)
    return K.at[..., :2, 2].add(-offset)


def invert_rigid(transform: jax.Array) -> jax.Array:
    """Inverse of rigid transforms ``[..., 4, 4]`` (rotation transposed, translation rotated back)."""
    rotation = transform[..., :3, :3]
    translation = transform[..., :3, 3]
    rotation_t = jnp.swapaxes(rotation, -1, -2)
    new_translation = -jnp.einsum("...ij,...j->...i", rotation_t, translation)
    top = jnp.concatenate([rotation_t, new_translation[..., None]], -1)
    bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0], transform.dtype), top.shape[:-2] + (1, 4))
    return jnp.concatenate([top, bottom], -2)


def cam_to_world(world_to_cam: jax.Array) -> jax.Array:
    return invert_rigid(world_to_cam)


def camera_centers(world_to_cam: jax.Array) -> jax.Array:
    """Camera centres in world coordinates ``[..., 3]``."""
    return invert_rigid(world_to_cam)[..., :3, 3]


def transform_points(transform: jax.Array, points: jax.Array) -> jax.Array:
    """Applies ``transform [..., 4, 4]`` to ``points [..., N, 3]``."""
    rotation = transform[..., None, :3, :3]
    return jnp.einsum("...ij,...j->...i", rotation, points) + transform[..., None, :3, 3]


def project_points(K: jax.Array, world_to_cam: jax.Array, points: jax.Array) -> tuple[jax.Array, jax.Array]:
    """World points ``[..., N, 3]`` -> pixel coordinates ``[..., N, 2]`` and camera depth ``[..., N]``.

    Points at or behind the camera get non-finite-free but meaningless pixels; callers mask by depth.
    """
    cam = transform_points(world_to_cam, points)
    depth = cam[..., 2]
    safe = jnp.where(jnp.abs(depth) < 1e-12, 1e-12, depth)
    xy = cam[..., :2] / safe[..., None]
    uv = jnp.einsum("...ij,...nj->...ni", K[..., :2, :2], xy) + K[..., None, :2, 2]
    return uv, depth


def unproject_points(K: jax.Array, world_to_cam: jax.Array, uv: jax.Array, depth: jax.Array) -> jax.Array:
    """Pixels ``[..., N, 2]`` at camera depth ``[..., N]`` -> world points ``[..., N, 3]``."""
    k_inv = jnp.linalg.inv(K[..., :2, :2])
    xy = jnp.einsum("...ij,...nj->...ni", k_inv, uv - K[..., None, :2, 2])
    cam = jnp.concatenate([xy, jnp.ones_like(xy[..., :1])], -1) * depth[..., None]
    return transform_points(invert_rigid(world_to_cam), cam)


def pixel_grid(height: int, width: int, dtype=jnp.float32) -> jax.Array:
    """Pixel-centre coordinates ``[H, W, 2]`` as ``(u, v) = (x + 0.5, y + 0.5)``."""
    v, u = jnp.meshgrid(jnp.arange(height, dtype=dtype), jnp.arange(width, dtype=dtype), indexing="ij")
    return jnp.stack([u, v], -1) + 0.5


def look_at(eye: jax.Array, target: jax.Array, up: jax.Array = (0.0, 1.0, 0.0)) -> jax.Array:
    """OpenCV ``world_to_cam [..., 4, 4]`` for cameras at ``eye`` looking at ``target``.

    ``up`` is the world direction that should appear up in the image (the camera's ``-y``);
    the default suits y-up worlds such as our head datasets.
    """
    eye, target = jnp.asarray(eye, jnp.float32), jnp.asarray(target, jnp.float32)
    up = jnp.broadcast_to(jnp.asarray(up, jnp.float32), eye.shape)
    forward = target - eye
    forward = forward / jnp.linalg.norm(forward, axis=-1, keepdims=True)
    right = jnp.cross(forward, up)  # z x (-y) = x for the camera's own axes.
    right = right / jnp.linalg.norm(right, axis=-1, keepdims=True)
    down = jnp.cross(forward, right)
    rotation = jnp.stack([right, down, forward], -2)  # rows: camera axes in world coords
    translation = -jnp.einsum("...ij,...j->...i", rotation, eye)
    top = jnp.concatenate([rotation, translation[..., None]], -1)
    bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0]), top.shape[:-2] + (1, 4))
    return jnp.concatenate([top, bottom], -2)


def orbit_cameras(
    num_cameras: int,
    radius: float,
    elevation_degrees: float = 0.0,
    target=(0.0, 0.0, 0.0),
    azimuth_range_degrees: tuple[float, float] = (0.0, 360.0),
    up=(0.0, 1.0, 0.0),
) -> jax.Array:
    """``world_to_cam [num_cameras, 4, 4]`` on a circle around ``target``, all looking at it.

    ``up`` is the world up axis (y up by default, the head-dataset convention); azimuth 0 puts the
    camera on ``+z`` of the target, elevation raises it towards ``up``. The last azimuth is
    excluded when the range is a full circle so no two cameras coincide.
    """
    start, stop = azimuth_range_degrees
    full_circle = abs((stop - start) % 360.0) < 1e-6
    azimuth = jnp.deg2rad(jnp.linspace(start, stop, num_cameras, endpoint=not full_circle))
    elevation = jnp.deg2rad(elevation_degrees)
    up = jnp.asarray(up, jnp.float32)
    up = up / jnp.linalg.norm(up)
    # An orthonormal frame (a, b, up) with a = the azimuth-zero direction (+z when up = +y).
    helper = jnp.where(jnp.abs(up[2]) < 0.9, jnp.array([0.0, 0.0, 1.0]), jnp.array([1.0, 0.0, 0.0]))
    a = helper - jnp.dot(helper, up) * up
    a = a / jnp.linalg.norm(a)
    b = jnp.cross(up, a)
    direction = jnp.cos(elevation) * (jnp.cos(azimuth)[:, None] * a + jnp.sin(azimuth)[:, None] * b) + jnp.sin(elevation) * up
    target = jnp.asarray(target, jnp.float32)
    eye = target + radius * direction
    return look_at(eye, jnp.broadcast_to(target, eye.shape), jnp.broadcast_to(up, eye.shape))
