"""AVAT3R's forward pass in PyTorch: the same function as ``avat3r_jax.model.Avat3r`` on converted weights.

``Avat3rTorch(spec)`` (an ``avat3r_jax.spec.ModelSpec``) has the parameter names written by ``avat3r_jax.export.to_pytorch``;
``model(batch)`` takes the same batch dict (``images [B, V, H, W, 3]``, ``K``, ``world_to_cam``,
``posmaps``, ``posmap_valid``, ``features``, ``expression``; float32 tensors, or images and
masks as uint8 and maps as float16 as ``avat3r_jax.spec.batch_shapes`` lists them) and returns the
Gaussians as a dict of the ``avat3r_jax.gaussians.Gaussians`` fields (``means [B, N, 3]``, ...).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from avat3r_jax.spec import MASKED_OPACITY_LOGIT, MIN_DEPTH, ModelSpec, float32_divisor, num_outputs, output_layout
from avat3r_jax.torch import geometry
from avat3r_jax.torch.blocks import ExpressionEncoder, TransformerBlock, gelu, layer_norm


@dataclasses.dataclass
class Anchors:
    """Per-pixel starting Gaussians: ``means [B, V, H, W, 3]``, ``log_scales [..., 1]``, ``colors [..., 3]``, ``ray_dirs`` or None."""

    means: torch.Tensor
    log_scales: torch.Tensor
    colors: torch.Tensor
    ray_dirs: torch.Tensor | None
    valid: torch.Tensor


@dataclasses.dataclass
class Context:
    """The expression-independent part: tokens ``[B, V*h*w, width]``, per-pixel inputs, anchors."""

    tokens: torch.Tensor
    pixels: torch.Tensor
    anchors: Anchors


def to_float32(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``avat3r_jax.batch_dtypes.to_float32`` for tensors: stored entries (uint8 images, float16 maps) as float32 values."""
    out = dict(batch)
    for key, value in batch.items():
        divisor = float32_divisor(key, str(value.dtype).removeprefix("torch."))
        if divisor is not None:
            out[key] = value.to(torch.float32) if divisor == 1.0 else value.to(torch.float32) / divisor
    return out


def pixel_inputs(batch: dict[str, torch.Tensor], s: ModelSpec) -> torch.Tensor:
    """``[B, V, H, W, C]``: RGB in [-1, 1], scaled valid position map and validity, Plücker rays."""
    images = batch["images"]
    height, width = images.shape[2:4]
    parts = [images * 2.0 - 1.0]
    if s.use_posmap:
        valid = batch["posmap_valid"] if "posmap_valid" in batch else torch.ones_like(batch["posmaps"][..., :1])
        parts += [batch["posmaps"] / s.posmap_scale * valid, valid]
    if s.use_plucker:
        parts.append(geometry.plucker_rays(batch["K"], batch["world_to_cam"], height, width))
    return torch.cat(parts, -1)


def pixel_anchors(batch: dict[str, torch.Tensor], s: ModelSpec) -> Anchors:
    images, K, world_to_cam = batch["images"], batch["K"], batch["world_to_cam"]
    b, v, height, width = images.shape[:4]
    valid = torch.ones_like(images[..., :1])
    if s.use_posmap:
        valid = batch.get("posmap_valid", valid)
        means = batch["posmaps"]
        depth = geometry.transform_points(world_to_cam, means.reshape(b, v, height * width, 3))[..., 2]
        ray_dirs = None
    else:
        depth = world_to_cam[..., 2, 3, None].expand(b, v, height * width)
        uv = geometry.pixel_grid(height, width, images.device).reshape(-1, 2).expand(b, v, -1, -1)
        means = geometry.unproject_points(K, world_to_cam, uv, depth).reshape(b, v, height, width, 3)
        ray_dirs = geometry.camera_rays(K, world_to_cam, height, width)[1]
    focal = 0.5 * (K[..., 0, 0] + K[..., 1, 1])
    log_scales = torch.log(s.init_scale_pixels * depth.clamp_min(MIN_DEPTH) / focal[..., None])
    return Anchors(means, log_scales.reshape(b, v, height, width, 1), images, ray_dirs, valid)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, V, H, W, C] -> [B, V * (H/p) * (W/p), p * p * C]``."""
    b, v, height, width, c = x.shape
    x = x.reshape(b, v, height // patch, patch, width // patch, patch, c).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, v * (height // patch) * (width // patch), patch * patch * c)


def unpatchify(tokens: torch.Tensor, views: int, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """``[B, V * h * w, p * p * C] -> [B, V, h p, w p, C]``."""
    b = tokens.shape[0]
    x = tokens.reshape(b, views, grid[0], grid[1], patch, patch, -1).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, views, grid[0] * patch, grid[1] * patch, -1)


class Tokenizer(nn.Module):
    def __init__(self, s: ModelSpec):
        super().__init__()
        self.settings = s
        self.patch_embed = nn.Linear(s.patch_size**2 * s.pixel_channels, s.width)
        self.feature_norm = layer_norm(s.feature_channels, s.layer_norm_affine) if s.use_features else None
        self.feature_proj = nn.Linear(s.feature_channels, s.width) if s.use_features else None
        self.view_embedding = nn.Parameter(torch.zeros(s.num_views, s.width)) if s.use_view_embedding else None

    def forward(self, pixels: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        s = self.settings
        views = pixels.shape[1]
        tokens = self.patch_embed(patchify(pixels, s.patch_size))
        if self.feature_proj is not None:
            tokens = tokens + self.feature_proj(self.feature_norm(self._features_on_grid(features)))
        if self.view_embedding is not None:
            if views > s.num_views:
                raise ValueError(f"{views} input views but the view embedding has data.num_input_views={s.num_views}")
            tokens = tokens + self.view_embedding[:views].repeat_interleave(s.grid[0] * s.grid[1], dim=0)[None]
        return tokens

    def _features_on_grid(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, V, h', w', F]`` resized to the patch grid like ``jax.image.resize(method="linear")`` -> ``[B, V*h*w, F]``."""
        b, v, h, w, f = features.shape
        channels_first = features.reshape(b * v, h, w, f).permute(0, 3, 1, 2)
        antialias = self.settings.grid[0] < h or self.settings.grid[1] < w  # jax antialiases when downsampling
        resized = F.interpolate(channels_first, size=self.settings.grid, mode="bilinear", align_corners=False, antialias=antialias)
        return resized.permute(0, 2, 3, 1).reshape(b, -1, f)


class GaussianHead(nn.Module):
    """Tokens back to pixels (pixel shuffle), skip connection, 3x3 conv, GELU, per-pixel outputs."""

    def __init__(self, s: ModelSpec):
        super().__init__()
        self.settings = s
        self.norm = layer_norm(s.width, s.layer_norm_affine)
        self.to_pixels = nn.Linear(s.width, s.patch_size**2 * s.head_channels)
        self.mix = nn.Conv2d(s.head_channels + s.pixel_channels, s.head_channels, 3, padding=1)
        self.out = nn.Linear(s.head_channels, num_outputs(s))

    def forward(self, tokens: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        s = self.settings
        b, v, height, width = skip.shape[:4]
        pixels = unpatchify(self.to_pixels(self.norm(tokens)), v, s.grid, s.patch_size)
        pixels = torch.cat([pixels, skip], -1).reshape(b * v, height, width, -1).permute(0, 3, 1, 2)
        hidden = gelu(self.mix(pixels)).permute(0, 2, 3, 1)
        return self.out(hidden).reshape(b, v, height, width, -1)


def gaussians_from_raw(raw: torch.Tensor, anchors: Anchors, s: ModelSpec) -> dict[str, torch.Tensor]:
    """Bounded activations of the head's ``raw [B, V, H, W, n]`` -> Gaussian fields with ``N = V*H*W``."""
    part = {name: raw[..., piece] for name, piece in output_layout(s).items()}
    means = anchors.means + s.max_offset * torch.tanh(part["offset"])
    if anchors.ray_dirs is not None:
        means = means + anchors.ray_dirs * (s.max_ray_offset * torch.tanh(part["ray_offset"]))
    lo, hi = s.log_scale_min, s.log_scale_max
    margin = 1e-3 * (hi - lo)
    base = (anchors.log_scales.clamp(lo + margin, hi - margin) - lo) / (hi - lo)
    log_scales = lo + (hi - lo) * torch.sigmoid(part["log_scale"] + torch.log(base) - torch.log1p(-base))
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0], device=raw.device)
    quaternions = geometry.normalize_quaternion(part["quaternion"] + identity)
    opacity_logits = part["opacity"][..., 0] + math.log(s.init_opacity / (1.0 - s.init_opacity))
    opacity_logits = torch.where(anchors.valid[..., 0] > 0.5, opacity_logits, torch.full_like(opacity_logits, MASKED_OPACITY_LOGIT))
    colors = anchors.colors + part["color"]
    b, n = raw.shape[0], math.prod(raw.shape[1:4])
    flat = lambda x: x.reshape(b, n, *x.shape[4:])
    return {
        "means": flat(means),
        "log_scales": flat(log_scales),
        "quaternions": flat(quaternions),
        "opacity_logits": flat(opacity_logits),
        "colors": flat(colors),
        "sh_rest": part["sh_rest"].reshape(b, n, s.num_sh_rest, 3),
    }


class Avat3rTorch(nn.Module):
    """``model(batch) -> Gaussians`` (dict); ``encode`` once per avatar, ``decode`` per expression code."""

    def __init__(self, settings: ModelSpec):
        super().__init__()
        s = self.settings = settings
        if s.expression_injection != "cross_attention":
            raise ValueError(f"the PyTorch model has no model.expression_injection={s.expression_injection!r} (cross_attention only)")
        self.tokenizer = Tokenizer(s)
        self.expression_encoder = ExpressionEncoder(s)
        self.prefix_blocks = nn.ModuleList([TransformerBlock(s, cross=False) for _ in range(s.cross_attn_from_layer)])
        self.blocks = nn.ModuleList([TransformerBlock(s, cross=True) for _ in range(s.depth - s.cross_attn_from_layer)])
        self.head = GaussianHead(s)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.decode(self.encode(batch), batch["expression"])

    def encode(self, batch: dict[str, torch.Tensor]) -> Context:
        s = self.settings
        expected = (s.image_height, s.image_width, 3)
        if batch["images"].ndim != 5 or tuple(batch["images"].shape[2:]) != expected:
            raise ValueError(f"images must be [B, V, {s.image_height}, {s.image_width}, 3], got {tuple(batch['images'].shape)}")
        if "input_view_valid" in batch and not bool((batch["input_view_valid"] > 0.5).all()):
            raise ValueError("the PyTorch model takes present views only: cut absent views (input_view_valid == 0) out of the batch")
        batch = to_float32(batch)
        pixels = pixel_inputs(batch, s)
        tokens = self.tokenizer(pixels, batch["features"] if s.use_features else None)
        for block in self.prefix_blocks:
            tokens = block(tokens, None)
        return Context(tokens, pixels, pixel_anchors(batch, s))

    def decode(self, context: Context, expression: torch.Tensor) -> dict[str, torch.Tensor]:
        expression_tokens = self.expression_encoder(expression)
        tokens = context.tokens
        for block in self.blocks:
            tokens = block(tokens, expression_tokens)
        return gaussians_from_raw(self.head(tokens, context.pixels), context.anchors, self.settings)
