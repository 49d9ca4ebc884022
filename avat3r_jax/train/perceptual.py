"""VGG16 features, a perceptual loss and LPIPS in plain JAX, with weights from a local ``.npz``.

Weights are never downloaded: convert your own into this layout (``save_vgg_npz`` writes it).
Keys of the ``.npz`` (float32):

- ``conv{b}_{i}/w`` ``[3, 3, C_in, C_out]`` (HWIO) and ``conv{b}_{i}/b`` ``[C_out]`` for the 13
  convolutions ``conv1_1 [3->64], conv1_2 [64->64], conv2_1 [64->128], conv2_2, conv3_1 [128->256],
  conv3_2, conv3_3, conv4_1 [256->512], conv4_2, conv4_3, conv5_1 [512->512], conv5_2, conv5_3``.
  From torchvision's ``vgg16().features`` (OIHW): ``w = weight.numpy().transpose(2, 3, 1, 0)``.
- optional ``lin0 .. lin4`` ``[64], [128], [256], [512], [512]``: LPIPS' per-channel weights of the
  five ReLU outputs after ``conv1_2, conv2_2, conv3_3, conv4_3, conv5_3`` (from the LPIPS package's
  ``lin{k}.model.1.weight [1, C, 1, 1]``: ``reshape(-1)``). Needed only by ``lpips``.

Inputs are RGB in [0, 1], normalised with the ImageNet mean/std. That is exactly LPIPS' own
scaling layer applied to ``2 x - 1``, so LPIPS weights trained in [-1, 1] apply unchanged.
Feature vectors are unit-normalised per pixel as ``f / sqrt(|f|^2 + 1e-10)`` (LPIPS divides by
``|f| + 1e-10``; the two agree to ~1e-10 relative, and this form keeps gradients finite where a
pixel's features are all zero).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

VGGParams = dict[str, jax.Array]

# (name, in channels, out channels), in order; a 2x2 max-pool follows the last conv of blocks 1-4.
VGG16_CONVS: tuple[tuple[str, int, int], ...] = (
    ("conv1_1", 3, 64),
    ("conv1_2", 64, 64),
    ("conv2_1", 64, 128),
    ("conv2_2", 128, 128),
    ("conv3_1", 128, 256),
    ("conv3_2", 256, 256),
    ("conv3_3", 256, 256),
    ("conv4_1", 256, 512),
    ("conv4_2", 512, 512),
    ("conv4_3", 512, 512),
    ("conv5_1", 512, 512),
    ("conv5_2", 512, 512),
    ("conv5_3", 512, 512),
)
POOL_AFTER = frozenset({"conv1_2", "conv2_2", "conv3_3", "conv4_3"})
LPIPS_LAYERS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_NORM_EPS = 1e-10


def expected_shapes(*, with_lpips: bool = True) -> dict[str, tuple[int, ...]]:
    """Every ``.npz`` key and its shape; ``lin*`` only ``with_lpips``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, c_in, c_out in VGG16_CONVS:
        shapes[f"{name}/w"] = (3, 3, c_in, c_out)
        shapes[f"{name}/b"] = (c_out,)
    if with_lpips:
        out_channels = {name: c_out for name, _, c_out in VGG16_CONVS}
        for k, layer in enumerate(LPIPS_LAYERS):
            shapes[f"lin{k}"] = (out_channels[layer],)
    return shapes


def _layout() -> str:
    return ", ".join(f"{key} {list(shape)}" for key, shape in expected_shapes().items())


def _check_params(params: Mapping[str, np.ndarray | jax.Array], source: str, *, require_lpips: bool) -> None:
    """Raises ValueError naming missing, unexpected and wrongly shaped keys, with the expected layout."""
    has_lin = any(key.startswith("lin") for key in params)
    expected = expected_shapes(with_lpips=require_lpips or has_lin)
    problems = []
    missing = sorted(set(expected) - set(params))
    if missing:
        problems.append(f"missing keys {missing}")
    unexpected = sorted(set(params) - set(expected))
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    wrong = [
        f"{key} {list(np.shape(params[key]))} (expected {list(shape)})"
        for key, shape in expected.items()
        if key in params and tuple(np.shape(params[key])) != shape
    ]
    if wrong:
        problems.append(f"wrong shapes: {', '.join(wrong)}")
    if problems:
        lpips_note = " (lin0..lin4 are needed for LPIPS)" if require_lpips else ""
        raise ValueError(f"VGG16 weights in {source}: {'; '.join(problems)}{lpips_note}. Expected layout: {_layout()}")


def load_vgg_npz(path: str | os.PathLike, *, require_lpips: bool = False) -> VGGParams:
    """Reads and validates VGG16 (and optionally LPIPS) weights from a local ``.npz`` (no pickles)."""
    path = os.fspath(path)
    if not path:
        raise ValueError("no VGG16 weights path given (set train.perceptual_weights_path to a local .npz)")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"VGG16 weights file {path!r} does not exist (weights are never downloaded; avat3r_jax/train/perceptual.py gives the layout)"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"VGG16 weights file {path!r} is not a readable .npz: {e}") from e
    _check_params(arrays, repr(path), require_lpips=require_lpips)
    return {key: jnp.asarray(value, jnp.float32) for key, value in arrays.items()}


def save_vgg_npz(params: Mapping[str, np.ndarray | jax.Array], path: str | os.PathLike) -> None:
    """Writes weights in the layout above (validated first) as float32, readable by ``load_vgg_npz``."""
    _check_params(params, "the given params", require_lpips=False)
    np.savez(path, **{key: np.asarray(value, np.float32) for key, value in params.items()})


def _conv_relu(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    y = lax.conv_general_dilated(x, w.astype(x.dtype), (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(y + b.astype(x.dtype))


def _max_pool(x: jax.Array) -> jax.Array:
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def vgg16_features(params: VGGParams, images: jax.Array, layers: Sequence[str] = LPIPS_LAYERS) -> dict[str, jax.Array]:
    """ReLU outputs ``{layer: [..., h, w, c]}`` of the named conv layers for RGB ``images [..., H, W, 3]`` in [0, 1].

    Computes in the images' dtype (weights are cast to it).
    """
    known = [name for name, _, _ in VGG16_CONVS]
    unknown = [layer for layer in layers if layer not in known]
    if unknown or not layers:
        raise ValueError(f"unknown VGG16 layers {unknown or list(layers)}; choose from {known}")
    if images.ndim < 3 or images.shape[-1] != 3:
        raise ValueError(f"VGG16 features need RGB images [..., H, W, 3], got shape {images.shape}")
    *batch, height, width, _ = images.shape
    last = max(known.index(layer) for layer in layers)
    pools = sum(name in POOL_AFTER for name in known[:last])
    if min(height, width) < 2**pools:
        raise ValueError(
            f"layer {known[last]} comes after {pools} 2x2 max-pools: images need at least {2**pools}x{2**pools} pixels, "
            f"got {height}x{width}"
        )
    x = images.reshape(-1, height, width, 3)
    x = (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)
    features = {}
    for name in known[: last + 1]:
        x = _conv_relu(x, params[f"{name}/w"], params[f"{name}/b"])
        if name in layers:
            features[name] = x.reshape(*batch, *x.shape[1:])
        if name in POOL_AFTER:
            x = _max_pool(x)
    return features


def _unit_normalize(f: jax.Array) -> jax.Array:
    """Per-pixel unit feature vectors ``[..., h, w, c]``."""
    return f * lax.rsqrt(jnp.sum(f * f, axis=-1, keepdims=True) + _NORM_EPS)


def perceptual_loss(
    params: VGGParams, pred: jax.Array, target: jax.Array, *, layers: Sequence[str] = LPIPS_LAYERS, distance: str = "l1"
) -> jax.Array:
    """Per image ``[...]``: sum over ``layers`` of the mean L1 (or squared L2) distance of unit-normalised features."""
    if distance not in ("l1", "l2"):
        raise ValueError(f"perceptual distance must be 'l1' or 'l2', got {distance!r}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred.shape} and {target.shape}")
    feats = vgg16_features(params, jnp.stack([pred, target]), layers)
    total = jnp.zeros(pred.shape[:-3], pred.dtype)
    for f in feats.values():
        diff = _unit_normalize(f[0]) - _unit_normalize(f[1])
        per_element = jnp.abs(diff) if distance == "l1" else jnp.square(diff)
        total = total + jnp.mean(per_element, axis=(-3, -2, -1))
    return total


def lpips(params: VGGParams, a: jax.Array, b: jax.Array) -> jax.Array:
    """LPIPS (VGG variant) per image ``[...]`` of RGB images ``[..., H, W, 3]`` in [0, 1]; needs ``lin0..lin4``."""
    missing = [f"lin{k}" for k in range(len(LPIPS_LAYERS)) if f"lin{k}" not in params]
    if missing:
        raise ValueError(f"LPIPS needs the linear weights {missing} in the VGG16 .npz (see avat3r_jax/train/perceptual.py)")
    if a.shape != b.shape:
        raise ValueError(f"LPIPS inputs must have the same shape, got {a.shape} and {b.shape}")
    feats = vgg16_features(params, jnp.stack([a, b]), LPIPS_LAYERS)
    total = jnp.zeros(a.shape[:-3], a.dtype)
    for k, layer in enumerate(LPIPS_LAYERS):
        diff = _unit_normalize(feats[layer][0]) - _unit_normalize(feats[layer][1])
        weighted = jnp.sum(jnp.square(diff) * params[f"lin{k}"].astype(a.dtype), axis=-1)  # [..., h, w]
        total = total + jnp.mean(weighted, axis=(-2, -1))
    return total
