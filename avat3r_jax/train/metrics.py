"""Image quality metrics per image, on channels-last images ``[..., H, W, C]`` in [0, 1]."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from avat3r_jax.train.losses import ssim
from avat3r_jax.train.perceptual import VGGParams, lpips

__all__ = ["image_metrics", "lpips", "mean_color_psnr", "psnr", "ssim"]


def psnr(a: jax.Array, b: jax.Array, *, max_val: float = 1.0) -> jax.Array:
    """Peak signal-to-noise ratio in dB per image ``[...]`` (``inf`` for identical images)."""
    if a.shape != b.shape or a.ndim < 3:
        raise ValueError(f"psnr needs two images [..., H, W, C] of one shape, got {a.shape} and {b.shape}")
    mse = jnp.mean(jnp.square(a - b), axis=(-3, -2, -1))
    return 10.0 * jnp.log10(max_val**2 / mse)


def mean_color_psnr(target: jax.Array, *, max_val: float = 1.0) -> jax.Array:
    """PSNR per image ``[...]`` of the baseline that predicts each target's mean colour everywhere.

    A model that has learnt nothing beyond the average colour of a view scores this; the trainer
    reports it next to the model's PSNR.
    """
    mean_color = jnp.mean(target, axis=(-3, -2), keepdims=True)  # [..., 1, 1, C]
    return psnr(jnp.broadcast_to(mean_color, target.shape), target, max_val=max_val)


def image_metrics(pred: jax.Array, target: jax.Array, lpips_params: VGGParams | None = None) -> dict[str, jax.Array]:
    """``psnr``, ``ssim``, ``mean_color_psnr`` and, with LPIPS weights (``perceptual.load_vgg_npz(path,
    require_lpips=True)``), ``lpips``: each per image ``[...]``."""
    scores = {"psnr": psnr(pred, target), "ssim": ssim(pred, target), "mean_color_psnr": mean_color_psnr(target)}
    if lpips_params is not None:
        scores["lpips"] = lpips(lpips_params, pred, target)
    return scores
