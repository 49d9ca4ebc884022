"""DUSt3R (``AsymmetricCroCo3DStereo``) in Flax NNX: image pairs -> point maps and confidences.

One ViT encoder (CroCo, 2D RoPE) embeds every view once; for each ordered pair ``(i, j)`` two
decoders run side by side, view i's blocks cross-attending to view j's tokens of the previous layer
and vice versa; two DPT heads turn the encoder output and three decoder layers into view i's points
and view j's points, both in view i's camera frame, with confidences. This matches DUSt3R's
symmetrized inference (``load_model``'s ``PatchEmbedDust3R``, ``landscape_only=False``: portrait
images run as they are) while encoding each view once instead of once per pair.

Checkpoints: :mod:`avat3r_jax.frontend.dust3r_checkpoint`.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avat3r_jax.frontend.checkpoints import CheckpointError
from avat3r_jax.frontend.croco import DecoderBlock, EncoderBlock, rope_tables
from avat3r_jax.frontend.dpt import DPTHead, confidence_activation, depth_activation
from avat3r_jax.frontend.pairs import PairPredictions
from avat3r_jax.model.layers import dense, layer_norm
from avat3r_jax.sharding import with_logical_constraint

Mode = tuple[str, float, float]

# ``args.model`` of DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth (naver/dust3r README, "Our Hyperparameters").
RELEASED_512_DPT_ARGS = (
    "AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
    "head_type='dpt', output_mode='pts3d', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
    "enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, dec_num_heads=12)"
)


@dataclasses.dataclass(frozen=True)
class Dust3rSettings:
    """The network's sizes and how it runs; the defaults are the released 512-DPT model."""

    patch_size: int = 16
    enc_width: int = 1024
    enc_depth: int = 24
    enc_heads: int = 16
    dec_width: int = 768
    dec_depth: int = 12
    dec_heads: int = 12
    mlp_ratio: float = 4.0
    rope_base: float = 100.0  # pos_embed='RoPE100'
    head_layer_dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    head_feature_dim: int = 256
    head_last_dim: int = 128
    depth_mode: Mode = ("exp", -math.inf, math.inf)
    conf_mode: Mode = ("exp", 1.0, math.inf)
    dtype: Any = jnp.float32  # encoder and decoder compute (parameters are always float32)
    head_dtype: Any = jnp.float32  # DPT heads: DUSt3R runs them in float32 under autocast too
    attention_impl: str = "xla"  # avat3r_jax.model.attention: "xla" or "cudnn" (bfloat16 only)

    @classmethod
    def released_512_dpt(cls, **overrides) -> Dust3rSettings:
        """``DUSt3R_ViTLarge_BaseDecoder_512_dpt``: ViT-L/16 encoder (1024/24/16), ViT-B decoders (768/12/12)."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides) -> Dust3rSettings:
        """Tests' size (tests/frontend/fixtures/make_dust3r_fixtures.py builds the same in PyTorch)."""
        sizes = dict(enc_width=24, enc_depth=2, enc_heads=2, dec_width=16, dec_depth=4, dec_heads=2)
        head = dict(head_layer_dims=(4, 8, 12, 16), head_feature_dim=8, head_last_dim=8)
        return cls(**(sizes | head | overrides))

    @classmethod
    def from_model_args(cls, text: str, **overrides) -> Dust3rSettings:
        """Settings from a checkpoint's ``args.model`` constructor string, e.g. ``"AsymmetricCroCo3DStereo(...)"``."""
        kwargs = _constructor_kwargs(text, "AsymmetricCroCo3DStereo")
        ignored = {"img_size", "patch_embed_cls", "landscape_only", "freeze", "mask_ratio"}  # no effect on inference
        unknown = sorted(set(kwargs) - ignored - set(_ARG_FIELDS) - set(_DUST3R_DEFAULTS) - {"pos_embed"})
        if unknown:
            raise CheckpointError(f"args.model has arguments this port does not know: {', '.join(unknown)}")
        pos_embed = str(kwargs.get("pos_embed", "cosine"))
        try:
            rope_base = float(pos_embed.removeprefix("RoPE")) if pos_embed.startswith("RoPE") else None
        except ValueError:
            rope_base = None
        if rope_base is None:
            raise CheckpointError(f"args.model has pos_embed={pos_embed!r}; only RoPE models (the released 'RoPE100') are supported")
        for name, wanted in (("head_type", "dpt"), ("output_mode", "pts3d"), ("norm_im2_in_dec", True)):
            value = kwargs.get(name, _DUST3R_DEFAULTS[name])
            if value != wanted:
                raise CheckpointError(f"args.model has {name}={value!r}; only {name}={wanted!r} is supported")
        if not kwargs.get("conf_mode", True):
            raise CheckpointError("args.model has no conf_mode; only models with a confidence output are supported")
        fields = {field: kwargs[arg] for arg, field in _ARG_FIELDS.items() if arg in kwargs}
        for mode in ("depth_mode", "conf_mode"):
            if mode in fields:
                kind, low, high = fields[mode]
                fields[mode] = (str(kind), float(low), float(high))
        return cls(**(_CROCO_DEFAULTS | fields | {"rope_base": rope_base} | overrides))

    @property
    def hooks(self) -> tuple[int, int, int, int]:
        """The decoder outputs the DPT heads read (0 = the encoder's output), as in ``create_dpt_head``."""
        depth = self.dec_depth
        return (0, depth * 2 // 4, depth * 3 // 4, depth)

    def problems(self) -> list[str]:
        checks = [
            (self.patch_size == 16, f"patch_size must be 16 (the DPT head upsamples 16x), got {self.patch_size}"),
            (self.enc_width % self.enc_heads == 0, f"enc_width {self.enc_width} is not divisible by enc_heads {self.enc_heads}"),
            (self.dec_width % self.dec_heads == 0, f"dec_width {self.dec_width} is not divisible by dec_heads {self.dec_heads}"),
            (
                (self.enc_width // self.enc_heads) % 4 == 0 and (self.dec_width // self.dec_heads) % 4 == 0,
                "2D RoPE needs head dimensions (width / heads) divisible by 4",
            ),
            (self.attention_impl != "cudnn" or self.dtype == jnp.bfloat16, "attention_impl='cudnn' needs dtype bfloat16"),
            (len(set(self.hooks)) == 4, f"dec_depth must be at least 4 for 4 distinct DPT hooks, got {self.dec_depth}"),
            (self.attention_impl in ("xla", "cudnn"), f"attention_impl must be 'xla' or 'cudnn', got {self.attention_impl!r}"),
        ]
        return [message for ok, message in checks if not ok]


# args.model keyword -> Dust3rSettings field, and CroCoNet's defaults for those absent from the string.
_ARG_FIELDS = {
    "patch_size": "patch_size",
    "enc_embed_dim": "enc_width",
    "enc_depth": "enc_depth",
    "enc_num_heads": "enc_heads",
    "dec_embed_dim": "dec_width",
    "dec_depth": "dec_depth",
    "dec_num_heads": "dec_heads",
    "mlp_ratio": "mlp_ratio",
    "depth_mode": "depth_mode",
    "conf_mode": "conf_mode",
}
_DUST3R_DEFAULTS = {"head_type": "linear", "output_mode": "pts3d", "norm_im2_in_dec": True}
_CROCO_DEFAULTS = dict(patch_size=16, enc_width=768, enc_depth=12, enc_heads=12, dec_width=512, dec_depth=8, dec_heads=16, mlp_ratio=4.0)


def _constructor_kwargs(text: str, class_name: str) -> dict[str, Any]:
    """The keyword arguments of ``class_name(k=literal, ...)`` (``inf`` allowed), parsed without evaluating code."""
    try:
        call = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as error:
        raise CheckpointError(f"args.model is not a constructor call: {text[:80]!r}") from error
    name = getattr(getattr(call, "func", None), "id", None)
    if not isinstance(call, ast.Call) or name != class_name or call.args:
        raise CheckpointError(f"args.model builds {name or text[:40]!r}, not {class_name}: a checkpoint of another model?")

    class InfToConstant(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.AST:
            return ast.Constant(math.inf) if node.id == "inf" else node

    try:
        return {kw.arg: ast.literal_eval(InfToConstant().visit(kw.value)) for kw in call.keywords}
    except ValueError as error:
        raise CheckpointError(f"args.model has a non-literal argument: {text[:120]!r}") from error


class Dust3r(nnx.Module):
    """``AsymmetricCroCo3DStereo`` with DPT heads. Attribute names follow the PyTorch state dict."""

    def __init__(self, settings: Dust3rSettings, *, rngs: nnx.Rngs):
        problems = settings.problems()
        if problems:
            raise ValueError("bad Dust3rSettings: " + "; ".join(problems))
        s, dtype = settings, settings.dtype
        self.settings = s
        p = s.patch_size
        self.patch_embed = dense((p, p, 3), s.enc_width, ("height", "width", "channels", "embed"), dtype=dtype, rngs=rngs)
        block = dict(dtype=dtype, attention_impl=s.attention_impl, rngs=rngs)
        self.enc_blocks = nnx.List([EncoderBlock(s.enc_width, s.enc_heads, s.mlp_ratio, **block) for _ in range(s.enc_depth)])
        self.enc_norm = layer_norm(s.enc_width, "embed", dtype=dtype, rngs=rngs)
        self.decoder_embed = dense(s.enc_width, s.dec_width, ("embed", None), dtype=dtype, rngs=rngs)
        self.dec_blocks = nnx.List([DecoderBlock(s.dec_width, s.dec_heads, s.mlp_ratio, **block) for _ in range(s.dec_depth)])
        self.dec_blocks2 = nnx.List([DecoderBlock(s.dec_width, s.dec_heads, s.mlp_ratio, **block) for _ in range(s.dec_depth)])
        self.dec_norm = layer_norm(s.dec_width, "embed", dtype=dtype, rngs=rngs)
        head = dict(
            token_dims=(s.enc_width, s.dec_width, s.dec_width, s.dec_width),
            layer_dims=s.head_layer_dims,
            feature_dim=s.head_feature_dim,
            last_dim=s.head_last_dim,
            num_channels=4,  # xyz + confidence
            dtype=s.head_dtype,
            rngs=rngs,
        )
        self.head1 = DPTHead(**head)
        self.head2 = DPTHead(**head)

    def encode(self, images: jax.Array) -> jax.Array:
        """``images [V, H, W, 3]`` in [0, 1] -> encoder tokens ``[V, h * w, enc_width]`` (``h, w = H / 16, W / 16``)."""
        s, p = self.settings, self.settings.patch_size
        v, height, width, _ = images.shape
        grid = (height // p, width // p)
        x = (images - 0.5) / 0.5  # DUSt3R's ImgNorm
        patches = x.reshape(v, grid[0], p, grid[1], p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(v, -1, p, p, 3)
        tokens = with_logical_constraint(self.patch_embed(patches), ("batch", "tokens", "embed"))
        cos, sin = rope_tables(grid, s.enc_width // s.enc_heads, s.rope_base)
        for block in self.enc_blocks:
            tokens = block(tokens, cos, sin)
        return self.enc_norm(tokens)

    def __call__(self, images: jax.Array, pairs: tuple[tuple[int, int], ...]) -> PairPredictions:
        """``images [V, H, W, 3]`` in [0, 1], ``pairs`` (static ``(i, j)``s) -> predictions ``[P, H, W, ...]``."""
        s = self.settings
        grid = (images.shape[1] // s.patch_size, images.shape[2] // s.patch_size)
        encoded = self.encode(images)  # [V, L, enc_width]
        first = np.array([i for i, _ in pairs])
        second = np.array([j for _, j in pairs])
        embedded = self.decoder_embed(encoded)  # [V, L, dec_width]
        x1, x2 = embedded[first], embedded[second]  # [P, L, dec_width]
        cos, sin = rope_tables(grid, s.dec_width // s.dec_heads, s.rope_base)
        layers1, layers2 = [encoded[first]], [encoded[second]]  # index k: decoder output k (0: encoder)
        for block1, block2 in zip(self.dec_blocks, self.dec_blocks2):
            x1, x2 = block1(x1, x2, cos, sin), block2(x2, x1, cos, sin)
            layers1.append(x1)
            layers2.append(x2)
        layers1[-1], layers2[-1] = self.dec_norm(x1), self.dec_norm(x2)
        raw1 = self.head1([layers1[k] for k in s.hooks], grid).astype(jnp.float32)  # [P, H, W, 4]
        raw2 = self.head2([layers2[k] for k in s.hooks], grid).astype(jnp.float32)
        return PairPredictions(
            pts_i=depth_activation(raw1[..., :3], s.depth_mode),
            conf_i=confidence_activation(raw1[..., 3], s.conf_mode),
            pts_j=depth_activation(raw2[..., :3], s.depth_mode),
            conf_j=confidence_activation(raw2[..., 3], s.conf_mode),
            pairs=pairs,
        )


def predict_pairs(model: Dust3r, images: jax.Array, pairs: Sequence[tuple[int, int]]) -> PairPredictions:
    """DUSt3R on ``pairs`` of ``images [V, H, W, 3]`` (float32 in [0, 1], H and W multiples of 16); jitted.

    ``pairs``: ``(i, j)`` view indices, e.g. ``avat3r_jax.frontend.pairs.ordered_pairs(V)``. Each view
    is encoded once; the rows of the result follow ``pairs``.
    """
    pairs = tuple((int(i), int(j)) for i, j in pairs)
    check_inputs(tuple(images.shape), pairs, model.settings.patch_size)
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"DUSt3R needs float images in [0, 1], got dtype {images.dtype}")
    graphdef, state = nnx.split(model)
    return _predict(graphdef, state, jnp.asarray(images, jnp.float32), pairs)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _predict(graphdef, state, images: jax.Array, pairs: tuple[tuple[int, int], ...]) -> PairPredictions:
    return nnx.merge(graphdef, state)(images, pairs)


def check_inputs(shape: tuple[int, ...], pairs: tuple[tuple[int, int], ...], patch_size: int = 16) -> None:
    """One ``ValueError`` line unless ``shape`` is ``[V >= 2, H, W, 3]`` (H, W multiples of the patch) and ``pairs`` are valid."""
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"DUSt3R needs images [V, H, W, 3], got shape {shape}")
    views, height, width, _ = shape
    if views < 2:
        raise ValueError(f"DUSt3R needs at least 2 images, got {views}")
    if height % patch_size or width % patch_size or not height or not width:
        raise ValueError(f"DUSt3R needs image sides that are multiples of {patch_size}, got {height}x{width} (H x W)")
    if not pairs:
        raise ValueError("DUSt3R needs at least one pair of views")
    bad = [pair for pair in pairs if not (0 <= pair[0] < views and 0 <= pair[1] < views) or pair[0] == pair[1]]
    if bad:
        raise ValueError(f"pairs {bad[:4]} are not two different views among the {views} images (indices 0..{views - 1})")
