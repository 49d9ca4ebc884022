"""Camera geometry in PyTorch (OpenCV convention, pixel centres at +0.5), as in ``avat3r_jax.geometry``."""

from __future__ import annotations

import torch


def invert_rigid(transform: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms ``[..., 4, 4]``."""
    rotation_t = transform[..., :3, :3].transpose(-1, -2)
    translation = -(rotation_t @ transform[..., :3, 3:])
    top = torch.cat([rotation_t, translation], -1)
    bottom = torch.zeros_like(transform[..., 3:, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], -2)


def transform_points(transform: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``transform [..., 4, 4]`` applied to ``points [..., N, 3]``."""
    return points @ transform[..., :3, :3].transpose(-1, -2) + transform[..., None, :3, 3]


def pixel_grid(height: int, width: int, device=None) -> torch.Tensor:
    """Pixel centres ``[H, W, 2]`` as ``(x + 0.5, y + 0.5)``."""
    v, u = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack([u, v], -1).float() + 0.5


def camera_rays(K: torch.Tensor, world_to_cam: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space ray origins and unit directions ``[..., H, W, 3]`` through the pixel centres."""
    uv = pixel_grid(height, width, K.device)  # [H, W, 2]
    k_inv = torch.linalg.inv(K[..., :2, :2])  # [..., 2, 2]
    xy = torch.einsum("...ij,...hwj->...hwi", k_inv, uv - K[..., None, None, :2, 2])
    cam_dirs = torch.cat([xy, torch.ones_like(xy[..., :1])], -1)
    cam_to_world = invert_rigid(world_to_cam)
    dirs = torch.einsum("...ij,...hwj->...hwi", cam_to_world[..., :3, :3], cam_dirs)
    dirs = dirs / torch.linalg.norm(dirs, dim=-1, keepdim=True)
    return cam_to_world[..., None, None, :3, 3].expand_as(dirs), dirs


def plucker_rays(K: torch.Tensor, world_to_cam: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Plücker ray map ``[..., H, W, 6]``: unit direction, then moment ``origin x direction``."""
    origins, dirs = camera_rays(K, world_to_cam, height, width)
    return torch.cat([dirs, torch.linalg.cross(origins, dirs, dim=-1)], -1)


def unproject_points(K: torch.Tensor, world_to_cam: torch.Tensor, uv: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Pixels ``[..., N, 2]`` at camera depth ``[..., N]`` -> world points ``[..., N, 3]``."""
    k_inv = torch.linalg.inv(K[..., :2, :2])
    xy = torch.einsum("...ij,...nj->...ni", k_inv, uv - K[..., None, :2, 2])
    cam = torch.cat([xy, torch.ones_like(xy[..., :1])], -1) * depth[..., None]
    return transform_points(invert_rigid(world_to_cam), cam)


def normalize_quaternion(q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Unit quaternions ``[..., 4]``; the zero quaternion maps to identity."""
    norm_sq = (q * q).sum(-1, keepdim=True)
    identity = torch.zeros_like(q)
    identity[..., 0] = 1.0
    safe = torch.where(norm_sq > eps, q, identity)
    return safe * torch.rsqrt((safe * safe).sum(-1, keepdim=True))
