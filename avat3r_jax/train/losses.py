"""Image reconstruction losses on channels-last images ``[..., H, W, C]`` in [0, 1].

SSIM is dm-pix's (``dm_pix.ssim``), Wang et al. (2004): an 11-tap Gaussian window (sigma 1.5),
constants ``C1 = (0.01 L)^2`` and ``C2 = (0.03 L)^2``, statistics per channel, averaged over channels.
Filtering uses **valid** padding (as the reference implementation and ``tf.image.ssim`` do): the
SSIM map covers the ``(H - window + 1) x (W - window + 1)`` window centres, so no zero padding
biases the borders. Per-pixel weights given to the SSIM loss are cropped to those centres.

Every loss takes optional per-pixel ``weights`` broadcastable to ``[..., H, W, 1]`` or
``[..., H, W, C]`` and returns the weighted mean over all elements (a scalar).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dm_pix as pix
import jax
import jax.numpy as jnp

_MIN_WEIGHT_SUM = 1e-8


def _check_images(a: jax.Array, b: jax.Array, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim < 3:
        raise ValueError(f"{name_a} must be channels-last images [..., H, W, C], got shape {a.shape}")


def ssim_map(a: jax.Array, b: jax.Array, *, max_val: float = 1.0, window: int = 11, sigma: float = 1.5) -> jax.Array:
    """Per-pixel, per-channel SSIM ``[..., H-window+1, W-window+1, C]`` of two images ``[..., H, W, C]`` (dm-pix)."""
    _check_images(a, b, "a", "b")
    *batch, height, width, channels = a.shape
    if window < 1 or window % 2 == 0:
        raise ValueError(f"SSIM window must be a positive odd number of pixels, got {window}")
    if sigma <= 0:
        raise ValueError(f"SSIM sigma must be positive, got {sigma}")
    if height < window or width < window:
        raise ValueError(f"SSIM with an {window}-pixel window needs images at least {window}x{window}, got {height}x{width}")
    flat = lambda x: x.reshape(-1, height, width, channels)
    values = pix.ssim(flat(a), flat(b), max_val=max_val, filter_size=window, filter_sigma=sigma, return_map=True)
    return values.reshape(*batch, *values.shape[1:])


def ssim(a: jax.Array, b: jax.Array, *, max_val: float = 1.0, window: int = 11, sigma: float = 1.5) -> jax.Array:
    """Mean SSIM per image ``[...]`` of two images ``[..., H, W, C]`` (1 for identical images)."""
    return jnp.mean(ssim_map(a, b, max_val=max_val, window=window, sigma=sigma), axis=(-3, -2, -1))


def _weighted_mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
    """Scalar ``sum(w * v) / sum(w)`` with ``weights`` broadcast to ``values``; plain mean when None."""
    if weights is None:
        return jnp.mean(values)
    try:
        weights = jnp.broadcast_to(weights, values.shape).astype(values.dtype)
    except ValueError as e:
        raise ValueError(f"per-pixel weights of shape {weights.shape} do not broadcast to the loss values {values.shape}") from e
    return jnp.sum(weights * values) / jnp.maximum(jnp.sum(weights), _MIN_WEIGHT_SUM)


def l1_loss(pred: jax.Array, target: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Weighted mean absolute error (scalar) of images ``[..., H, W, C]``."""
    _check_images(pred, target, "pred", "target")
    return _weighted_mean(jnp.abs(pred - target), weights)


def ssim_loss(pred: jax.Array, target: jax.Array, weights: jax.Array | None = None, *, window: int = 11, sigma: float = 1.5) -> jax.Array:
    """Weighted mean of ``1 - SSIM`` (scalar); ``weights [..., H, W, 1|C]`` are cropped to the window centres."""
    values = 1.0 - ssim_map(pred, target, window=window, sigma=sigma)  # [..., H', W', C]
    if weights is not None:
        if weights.ndim < 3:
            raise ValueError(f"SSIM loss weights must be per-pixel [..., H, W, 1|C], got shape {weights.shape}")
        r = window // 2
        weights = weights[..., r : weights.shape[-3] - r, r : weights.shape[-2] - r, :]
    return _weighted_mean(values, weights)


def alpha_loss(pred_alpha: jax.Array, mask: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Weighted L1 (scalar) between rendered alpha and the foreground mask, both ``[..., H, W, 1]``."""
    _check_images(pred_alpha, mask, "pred_alpha", "mask")
    return _weighted_mean(jnp.abs(pred_alpha - mask), weights)


LOSS_WEIGHT_FIELDS = {"l1": "l1_weight", "ssim": "ssim_weight", "alpha": "alpha_weight", "perceptual": "perceptual_weight"}


def loss_weights(train_config: Any) -> dict[str, float]:
    """The term weights ``{l1, ssim, alpha, perceptual}`` from ``config.train``'s ``*_weight`` fields."""
    weights = {term: float(getattr(train_config, field)) for term, field in LOSS_WEIGHT_FIELDS.items()}
    negative = {LOSS_WEIGHT_FIELDS[term]: w for term, w in weights.items() if w < 0}
    if negative:
        raise ValueError(f"loss weights must be >= 0, got {negative}")
    if not any(weights.values()):
        raise ValueError(f"all photometric loss weights are zero: {weights}")
    return weights


def photometric_loss(
    pred: jax.Array,
    target: jax.Array,
    pred_alpha: jax.Array | None,
    target_mask: jax.Array | None,
    train_config: Any,
    *,
    pixel_weights: jax.Array | None = None,
    perceptual_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sum of L1, SSIM, alpha and perceptual terms of images ``pred, target [..., H, W, 3]``.

    Weights come from ``train_config`` (``config.train``: ``l1_weight``, ``ssim_weight``,
    ``alpha_weight``, ``perceptual_weight``); a zero weight skips its term. ``pixel_weights
    [..., H, W, 1]`` weight L1, SSIM and alpha (not the perceptual term). ``pred_alpha`` and
    ``target_mask [..., H, W, 1]`` are needed when the alpha weight is > 0; ``perceptual_fn(pred,
    target)`` (per-image or scalar values, their mean is used) when the perceptual weight is > 0.
    Returns ``(total, terms)``: ``terms`` holds each computed term's unweighted scalar under
    ``l1``, ``ssim`` (the ``1 - SSIM`` loss), ``alpha``, ``perceptual``.
    """
    weights = loss_weights(train_config)
    if weights["alpha"] > 0 and (pred_alpha is None or target_mask is None):
        raise ValueError("alpha_weight > 0 needs both pred_alpha and target_mask")
    if weights["perceptual"] > 0 and perceptual_fn is None:
        raise ValueError("perceptual_weight > 0 needs a perceptual_fn (VGG16 weights from train.perceptual_weights_path)")
    terms: dict[str, jax.Array] = {}
    if weights["l1"] > 0:
        terms["l1"] = l1_loss(pred, target, pixel_weights)
    if weights["ssim"] > 0:
        terms["ssim"] = ssim_loss(pred, target, pixel_weights)
    if weights["alpha"] > 0:
        terms["alpha"] = alpha_loss(pred_alpha, target_mask, pixel_weights)
    if weights["perceptual"] > 0:
        terms["perceptual"] = jnp.mean(perceptual_fn(pred, target))
    total = sum(weights[name] * value for name, value in terms.items())
    return total, terms
