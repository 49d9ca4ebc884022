"""AVAT3R: input views + expression code -> one 3D Gaussian per input pixel."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from avat3r_jax.batch_dtypes import to_float32
from avat3r_jax.gaussians import Gaussians
from avat3r_jax.model.anchors import PixelAnchors, pixel_anchors
from avat3r_jax.model.blocks import BlockStack
from avat3r_jax.model.expression import ExpressionEncoder
from avat3r_jax.model.gaussian_head import GaussianHead, gaussians_from_raw
from avat3r_jax.model.settings import ModelSettings
from avat3r_jax.model.tokenizer import Tokenizer, pixel_inputs
from avat3r_jax.model.view_mask import VALIDITY_KEY, token_mask, view_validity, without_absent_views
from avat3r_jax.spec import Batch, batch_shapes


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Context:
    """Everything expression-independent, reusable across expression codes.

    ``tokens [B, V*h*w, width]`` after the tokenizer and the blocks before
    ``model.cross_attn_from_layer``; ``pixels [B, V, H, W, C]`` the per-pixel inputs (the head's skip
    connection); ``anchors`` the per-pixel starting Gaussians; ``token_valid [B, V*h*w]`` (bool)
    the tokens of present views, None when the batch has no ``input_view_valid`` (all present).
    """

    tokens: jax.Array
    pixels: jax.Array
    anchors: PixelAnchors
    token_valid: jax.Array | None = None


class Avat3r(nnx.Module):
    """``model(batch) -> Gaussians [B]`` with ``N = V*H*W``, per-view blocks of ``H*W`` in view order.

    ``model(batch) == model.decode(model.encode(batch), batch["expression"])``; animation calls
    ``encode`` once and ``decode`` per expression code.
    """

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        s = ModelSettings.from_config(config)
        self.settings = s
        self.tokenizer = Tokenizer(s, rngs=rngs)
        self.expression_encoder = ExpressionEncoder(s, rngs=rngs)
        self.prefix_blocks = BlockStack(s, s.cross_attn_from_layer, cross=False, rngs=rngs)
        self.blocks = BlockStack(s, s.depth - s.cross_attn_from_layer, cross=s.expression_injection == "cross_attention", rngs=rngs)
        self.head = GaussianHead(s, rngs=rngs)

    def __call__(self, batch: Batch) -> Gaussians:
        return self.decode(self.encode(batch), batch["expression"])

    def encode(self, batch: Batch) -> Context:
        """The expression-independent part: tokenizer and the blocks without cross-attention."""
        s = self.settings
        validate_batch(batch, s)
        batch = to_float32(batch)  # stored dtypes (uint8 images, float16 maps) -> float32 values
        valid = view_validity(batch)  # [B, V] or None
        token_valid = None
        if valid is not None:
            batch = without_absent_views(batch, valid)
            token_valid = token_mask(valid, s.grid[0] * s.grid[1])
        pixels = pixel_inputs(batch, s)
        tokens = self.tokenizer(pixels, batch["features"] if s.use_features else None)
        tokens = self.prefix_blocks(tokens, None, token_valid)
        return Context(tokens, pixels, pixel_anchors(batch, s), token_valid)

    def decode(self, context: Context, expression: jax.Array) -> Gaussians:
        """The blocks with cross-attention to ``expression [B, D]`` and the Gaussian head."""
        s = self.settings
        expected = (context.tokens.shape[0], s.expression_dim)
        if tuple(expression.shape) != expected:
            raise ValueError(f"expression must have shape {expected} ([B, data.expression_dim]), got {tuple(expression.shape)}")
        expression_tokens = self.expression_encoder(expression)  # [B, T, width]
        if s.expression_injection == "cross_attention":
            tokens = self.blocks(context.tokens, expression_tokens, context.token_valid)
        else:
            sequence, key_mask = with_expression_tokens(context.tokens, expression_tokens, context.token_valid)
            tokens = self.blocks(sequence, None, key_mask)[:, expression_tokens.shape[1] :]
        return gaussians_from_raw(self.head(tokens, context.pixels), context.anchors, s)


def with_expression_tokens(
    tokens: jax.Array, expression_tokens: jax.Array, token_valid: jax.Array | None
) -> tuple[jax.Array, jax.Array | None]:
    """``model.expression_injection = "token"``: ``[B, T, width]`` expression tokens put before the view
    tokens ``[B, L, width]`` -> ``[B, T + L, width]`` and its key mask ``[B, T + L]`` (None if all valid).

    In front, so the valid keys stay a prefix (absent views fill the last slots) as the cuDNN path needs.
    """
    sequence = jnp.concatenate([expression_tokens.astype(tokens.dtype), tokens], axis=1)
    if token_valid is None:
        return sequence, None
    present = jnp.ones(expression_tokens.shape[:2], bool)
    return sequence, jnp.concatenate([present, token_valid], axis=1)


def abstract_model(config: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, nnx.State]:
    """The model's graph definition and abstract ``nnx.Param`` state (shapes only: nothing allocated)."""
    return nnx.split(nnx.eval_shape(lambda: Avat3r(config, rngs=nnx.Rngs(0))), nnx.Param)


def validate_batch(batch: Batch, settings: ModelSettings) -> None:
    """Raises ``ValueError`` naming the first missing or mis-shaped batch entry the model reads.

    Any batch size and up to ``data.num_input_views`` views (``images`` fixes both); feature maps of
    any size (the tokenizer resizes them to the patch grid); ``posmap_valid`` and ``input_view_valid``
    are optional.
    """
    s = settings
    if "images" not in batch:
        raise ValueError("the batch has no 'images'")
    shape = tuple(batch["images"].shape)
    if len(shape) != 5 or shape[2:] != (s.image_height, s.image_width, 3):
        raise ValueError(f"images must be [B, V, {s.image_height}, {s.image_width}, 3] (data.image_height/width), got {shape}")
    b, v = shape[:2]
    expected = batch_shapes(s, b, num_views=v)
    for key in s.model_input_keys:
        want = expected[key].shape
        if key == "posmap_valid" and key not in batch:
            continue
        if key not in batch:
            if key == "features":
                raise ValueError("model.use_features is on but the batch has no 'features'")
            raise ValueError(f"the batch has no {key!r} (expected shape {want})")
        got = tuple(batch[key].shape)
        if key == "features":
            if len(got) != 5 or got[:2] != want[:2] or got[-1] != want[-1]:
                raise ValueError(f"features must be [{b}, {v}, h, w, {s.feature_channels}] (data.feature_channels), got {got}")
        elif got != want:
            raise ValueError(f"{key} must have shape {want}, got {got}")
    if VALIDITY_KEY in batch and tuple(batch[VALIDITY_KEY].shape) != (b, v):
        raise ValueError(f"{VALIDITY_KEY} must have shape {(b, v)} ([B, V] of images), got {tuple(batch[VALIDITY_KEY].shape)}")
