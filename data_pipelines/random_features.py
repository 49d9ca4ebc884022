"""Feature maps from a frozen random-init encoder: the "no pretrained features" option, numpy only.

``data.feature_source = "random_encoder"`` replaces the records' feature maps (part labels on the
synthetic heads, Sapiens features on real data) by a fixed random function of the input image: a
3x3 convolution of the image in [-1, 1] to ``HIDDEN`` channels, ReLU, a 1x1 projection to
``data.feature_channels`` channels, averaged over blocks of pixels to the feature grid. Its weights
come from ``data.feature_encoder_seed`` alone, so every worker and every run computes the same
encoder: features that carry image information but no learnt semantics.
"""

from __future__ import annotations

import numpy as np

HIDDEN = 16


class RandomFeatureEncoder:
    """``encoder(image [H, W, 3], out [h, w, C])``; ``H, W`` multiples of ``h, w``."""

    def __init__(self, seed: int, channels: int):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0xFEA7]))
        self.conv = (rng.normal(size=(27, HIDDEN)) / np.sqrt(27.0)).astype(np.float32)  # [3*3*3, HIDDEN]
        self.bias = (0.1 * rng.normal(size=HIDDEN)).astype(np.float32)
        self.project = (rng.normal(size=(HIDDEN, channels)) * np.sqrt(2.0 / HIDDEN)).astype(np.float32)

    def __call__(self, image: np.ndarray, out: np.ndarray) -> None:
        height, width = image.shape[:2]
        h, w, channels = out.shape
        if height % h or width % w or channels != self.project.shape[1]:
            raise ValueError(f"random features of {out.shape} need an image whose size is a multiple of {(h, w)}, got {image.shape}")
        padded = np.pad(image * 2.0 - 1.0, ((1, 1), (1, 1), (0, 0)), mode="edge")
        taps = [padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)]
        patches = np.concatenate(taps, axis=-1)  # [H, W, 27]: tap-major, then RGB
        hidden = np.maximum(patches @ self.conv + self.bias, 0.0)  # [H, W, HIDDEN]
        features = hidden @ self.project  # [H, W, C]
        out[...] = features.reshape(h, height // h, w, width // w, channels).mean(axis=(1, 3))
