"""Model building blocks against independent references: attention, (un)patchify, head activations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.test_util import check_grads

from avat3r_jax import sharding
from avat3r_jax.model.anchors import PixelAnchors
from avat3r_jax.model.attention import attention, tpu_flash_attention
from avat3r_jax.model.gaussian_head import gaussians_from_raw
from avat3r_jax.model.settings import ModelSettings
from avat3r_jax.model.tokenizer import patchify, unpatchify
from avat3r_jax.spec import num_outputs
from tests.model.scene import tiny_config


def numpy_attention(q, k, v):
    """float64 softmax(q k^T / sqrt(d)) v per batch and head, ``[B, L, N, D]`` layout."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    logits = np.einsum("blnd,bmnd->bnlm", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bnlm,bmnd->blnd", weights, v)


def random_qkv(rng, batch, q_len, kv_len, heads=2, dim=8):
    return tuple(jnp.asarray(rng.normal(size=(batch, length, heads, dim)), jnp.float32) for length in (q_len, kv_len, kv_len))


def test_xla_attention_matches_float64_reference(rng):
    q, k, v = random_qkv(rng, 2, 24, 5)  # cross-attention shapes: many queries, few keys
    np.testing.assert_allclose(attention(q, k, v, "xla"), numpy_attention(q, k, v), atol=2e-6)


def test_pallas_tpu_attention_matches_xla_with_gradients_and_under_a_mesh(rng):
    """The TPU flash kernel in TPU interpret mode: values and q/k/v gradients, alone and per shard."""
    q, k, v = random_qkv(rng, 2, 128, 128)
    loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))
    with pltpu.force_tpu_interpret_mode():
        np.testing.assert_allclose(tpu_flash_attention(q, k, v), numpy_attention(q, k, v), atol=2e-6)
        grads = jax.grad(loss(tpu_flash_attention), argnums=(0, 1, 2))(q, k, v)
        expected = jax.grad(loss(lambda q, k, v: attention(q, k, v, "xla")), argnums=(0, 1, 2))(q, k, v)
        for got, want in zip(grads, expected):
            np.testing.assert_allclose(got, want, atol=1e-5)
        mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 1, "tensor": 2}), jax.devices()[:4])
        with jax.set_mesh(mesh):
            sharded = jax.jit(tpu_flash_attention)(q, k, v)
    np.testing.assert_allclose(sharded, numpy_attention(q, k, v), atol=2e-6)
    with pytest.raises(ValueError, match="multiples of 128"):
        attention(q[:, :100], k, v, "pallas_tpu")


def test_patchify_matches_explicit_loops_and_unpatchify_inverts_it(rng):
    b, v, h, w, c, p = 2, 3, 8, 12, 5, 4
    x = rng.normal(size=(b, v, h, w, c)).astype(np.float32)
    tokens = np.asarray(patchify(jnp.asarray(x), p))
    assert tokens.shape == (b, v * (h // p) * (w // p), p * p * c)
    for view in range(v):
        for row in range(h // p):
            for col in range(w // p):
                index = (view * (h // p) + row) * (w // p) + col
                patch = x[:, view, row * p : (row + 1) * p, col * p : (col + 1) * p, :]  # [B, p, p, C]
                np.testing.assert_array_equal(tokens[:, index], patch.reshape(b, -1))
    np.testing.assert_array_equal(unpatchify(jnp.asarray(tokens), v, (h // p, w // p), p), x)


def random_raw_and_anchors(rng, settings: ModelSettings, scale: float, dtype=jnp.float32, masked_fraction: float = 0.0):
    size = num_outputs(settings)
    shape = (2, 2, 3, 4)
    raw = jnp.asarray(scale * rng.normal(size=shape + (size,)), dtype)
    dirs = rng.normal(size=shape + (3,))
    anchors = PixelAnchors(
        means=jnp.asarray(rng.normal(size=shape + (3,)), dtype),
        log_scales=jnp.asarray(rng.uniform(-8.0, -4.0, size=shape + (1,)), dtype),
        colors=jnp.asarray(rng.uniform(size=shape + (3,)), dtype),
        ray_dirs=None if settings.use_posmap else jnp.asarray(dirs / np.linalg.norm(dirs, axis=-1, keepdims=True), dtype),
        valid=jnp.asarray(rng.uniform(size=shape + (1,)) >= masked_fraction, dtype),
    )
    return raw, anchors


@pytest.mark.parametrize("use_posmap", [True, False])
def test_head_activations_are_bounded(rng, use_posmap):
    settings = ModelSettings.from_config(tiny_config(use_posmap=use_posmap, sh_degree=2))
    raw, anchors = random_raw_and_anchors(rng, settings, scale=30.0)  # far into saturation
    g = gaussians_from_raw(raw, anchors, settings)
    shift = np.asarray(g.means) - np.asarray(anchors.means).reshape(2, -1, 3)
    limit = settings.max_offset * np.sqrt(3) + (0.0 if use_posmap else settings.max_ray_offset)
    assert np.linalg.norm(shift, axis=-1).max() <= limit + 1e-6
    assert settings.log_scale_min <= float(g.log_scales.min()) and float(g.log_scales.max()) <= settings.log_scale_max
    np.testing.assert_allclose(np.linalg.norm(g.quaternions, axis=-1), 1.0, rtol=1e-6)
    assert g.sh_rest.shape == (2, 24, 8, 3)
    zero = gaussians_from_raw(jnp.zeros_like(raw), anchors, settings)  # raw 0 -> the anchors
    np.testing.assert_allclose(zero.means, np.asarray(anchors.means).reshape(2, -1, 3), atol=1e-7)
    np.testing.assert_allclose(zero.log_scales, np.broadcast_to(np.asarray(anchors.log_scales).reshape(2, -1, 1), (2, 24, 3)), atol=1e-5)
    np.testing.assert_allclose(zero.opacities, settings.init_opacity, rtol=1e-5)


def test_masked_pixels_get_zero_opacity_and_no_gradient(rng):
    settings = ModelSettings.from_config(tiny_config(use_posmap=True))
    raw, anchors = random_raw_and_anchors(rng, settings, scale=1.0, masked_fraction=0.4)
    valid = np.asarray(anchors.valid).reshape(2, -1) > 0.5
    assert 0 < valid.sum() < valid.size
    g = gaussians_from_raw(raw, anchors, settings)
    assert float(jnp.max(jnp.where(valid, 0.0, g.opacities))) < 1e-12  # far below the 1/255 render cut
    assert float(jnp.min(jnp.where(valid, g.opacities, 1.0))) > 1e-3
    grad = jax.grad(lambda r: jnp.sum(gaussians_from_raw(r, anchors, settings).opacities))(raw)
    per_pixel = np.abs(np.asarray(grad)).sum(-1).reshape(2, -1)
    assert np.all(per_pixel[~valid] == 0) and np.all(per_pixel[valid] > 0)


def test_head_activation_gradients_match_finite_differences(rng, x64):
    settings = ModelSettings.from_config(tiny_config(use_posmap=False, sh_degree=1))
    raw, anchors = random_raw_and_anchors(rng, settings, scale=1.0, dtype=jnp.float64)

    def summary(raw):
        g = gaussians_from_raw(raw, anchors, settings)
        terms = (jnp.sin(g.means), g.log_scales, g.quaternions**3, g.opacity_logits, g.colors**2, g.sh_rest)
        return sum(jnp.sum(term) for term in terms)

    check_grads(jax.jit(summary), (raw,), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)
