"""Camera, ray and rotation geometry (OpenCV convention: x right, y down, z forward)."""

from avat3r_jax.geometry.cameras import (
    Cameras,
    cam_to_world,
    camera_centers,
    crop_intrinsics,
    intrinsics_from_fov,
    invert_rigid,
    look_at,
    make_intrinsics,
    orbit_cameras,
    pixel_grid,
    project_points,
    resize_intrinsics,
    transform_points,
    unproject_points,
)
from avat3r_jax.geometry.quaternions import (
    covariance_from_scale_rotation,
    normalize_quaternion,
    quaternion_multiply,
    quaternion_to_rotation,
    rotation_to_quaternion,
)
from avat3r_jax.geometry.rays import camera_rays, plucker_rays

__all__ = [
    "Cameras",
    "cam_to_world",
    "camera_centers",
    "camera_rays",
    "covariance_from_scale_rotation",
    "crop_intrinsics",
    "intrinsics_from_fov",
    "invert_rigid",
    "look_at",
    "make_intrinsics",
    "normalize_quaternion",
    "orbit_cameras",
    "pixel_grid",
    "plucker_rays",
    "project_points",
    "quaternion_multiply",
    "quaternion_to_rotation",
    "resize_intrinsics",
    "rotation_to_quaternion",
    "transform_points",
    "unproject_points",
]
