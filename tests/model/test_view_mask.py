"""Absent input views (``input_view_valid``): 1 and 3 present views of 4 slots through the model and the loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental.pallas import tpu as pltpu

from avat3r_jax.geometry import intrinsics_from_fov, orbit_cameras
from avat3r_jax.model import Avat3r
from avat3r_jax.model.attention import attention, prefix_lengths, tpu_flash_attention
from avat3r_jax.spec import MASKED_OPACITY_LOGIT
from avat3r_jax.train.objective import make_loss_fn
from tests.model.scene import rngs, sphere_batch, tiny_config

SLOTS = 4
FIELDS = ("means", "log_scales", "quaternions", "opacity_logits", "colors", "sh_rest")
forward = nnx.jit(lambda model, batch: model(batch))


def slot_config(**model_overrides):
    config = tiny_config(**model_overrides)
    config.data.num_input_views = SLOTS
    return config


def masked_batch(config, present: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``SLOTS`` view slots of which the first ``present`` hold views (validity 1)."""
    batch = sphere_batch(config, batch_size=2, seed=seed)
    batch["input_view_valid"] = np.zeros((2, SLOTS), np.float32)
    batch["input_view_valid"][:, :present] = 1.0
    return batch


def garbled_absent_slots(batch: dict[str, np.ndarray], present: int, seed: int) -> dict[str, np.ndarray]:
    """``batch`` with anything (random values, NaNs, a singular camera) in its absent slots."""
    rng = np.random.default_rng(seed)
    out = {key: value.copy() for key, value in batch.items()}
    for key in ("images", "posmaps", "posmap_valid", "features", "K", "world_to_cam"):
        out[key][:, present:] = rng.normal(size=out[key][:, present:].shape) * 5
    out["images"][:, present:, 0, 0] = np.nan
    out["K"][:, present:] = 0.0
    return out


@pytest.fixture(scope="module")
def config():
    return slot_config(cross_attn_from_layer=1)


@pytest.fixture(scope="module")
def model(config):
    return random_head_model(config)


def random_head_model(config) -> Avat3r:
    """The tiny model with a random last projection: every output depends on the tokens."""
    model = Avat3r(config, rngs=rngs(0))
    kernel = model.head.out.kernel
    kernel[...] = 0.5 * jax.random.normal(jax.random.key(1), kernel.shape)
    return model


def assert_masked_equals_cut(model, config, batch, present: int) -> tuple:
    """The present views' Gaussians of ``batch`` equal those of ``batch`` cut to its present views; returns
    (the masked output, the number of present Gaussians per example)."""
    cut = {key: value[:, :present] if value.ndim >= 2 and value.shape[1] == SLOTS else value for key, value in batch.items()}
    del cut["input_view_valid"]
    masked, expected = forward(model, batch), forward(model, cut)
    n = present * config.data.image_height * config.data.image_width
    for field in FIELDS:
        np.testing.assert_allclose(getattr(masked, field)[:, :n], getattr(expected, field), atol=2e-5, err_msg=field)
    return masked, n


@pytest.mark.parametrize("present", [1, 3])
def test_masked_slots_equal_the_batch_cut_to_the_present_views(model, config, present):
    masked, n = assert_masked_equals_cut(model, config, masked_batch(config, present), present)
    np.testing.assert_array_equal(masked.opacity_logits[:, n:], MASKED_OPACITY_LOGIT)
    for leaf in jax.tree.leaves(masked):
        assert np.isfinite(np.asarray(leaf)).all()


@pytest.mark.parametrize("present", [1, 3])
def test_absent_slots_change_nothing_exactly(model, config, present):
    batch = masked_batch(config, present)
    a, b = forward(model, batch), forward(model, garbled_absent_slots(batch, present, seed=present))
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_scanned_layers_honour_the_mask():
    config = slot_config(scan_layers=True)
    model = Avat3r(config, rngs=rngs(0))
    batch = masked_batch(config, 2)
    a, b = forward(model, batch), forward(model, garbled_absent_slots(batch, 2, seed=5))
    np.testing.assert_array_equal(a.means, b.means)


def test_without_position_maps_absent_views_get_zero_opacity():
    config = slot_config(use_posmap=False)
    model = Avat3r(config, rngs=rngs(0))
    gaussians = forward(model, masked_batch(config, 1))
    n = config.data.image_height * config.data.image_width
    assert (np.asarray(gaussians.opacity_logits[:, :n]) > MASKED_OPACITY_LOGIT).all()
    np.testing.assert_array_equal(gaussians.opacity_logits[:, n:], MASKED_OPACITY_LOGIT)


def with_targets(batch: dict[str, np.ndarray], config, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    b, h, w, t = 2, config.data.image_height, config.data.image_width, 2
    K = np.asarray(intrinsics_from_fov(20.0, h, w))
    return batch | {
        "target_images": rng.uniform(size=(b, t, h, w, 3)).astype(np.float32),
        "target_masks": np.ones((b, t, h, w, 1), np.float32),
        "target_K": np.broadcast_to(K, (b, t, 3, 3)).astype(np.float32),
        "target_world_to_cam": np.broadcast_to(np.asarray(orbit_cameras(t, 0.5, 5.0)), (b, t, 4, 4)).astype(np.float32),
    }


@pytest.fixture(scope="module")
def loss_and_grads(model, config):
    """``(params, batch) -> (loss, (param grads, grads of the input images))``, compiled once for both view counts."""
    graphdef, params = nnx.split(model, nnx.Param)
    loss_fn = make_loss_fn(graphdef, config)
    key = jax.random.key(0)

    @jax.jit
    def run(params, batch):
        return jax.value_and_grad(lambda p, images: loss_fn(p, dict(batch, images=images), key, {})[0], argnums=(0, 1))(
            params, batch["images"]
        )

    return params, run


@pytest.mark.parametrize("present", [1, 3])
def test_loss_and_gradients_are_finite_and_ignore_absent_views(loss_and_grads, config, present):
    params, loss_and_grads = loss_and_grads
    batch = with_targets(masked_batch(config, present), config, seed=3)
    loss, (param_grads, image_grads) = loss_and_grads(params, batch)
    assert np.isfinite(float(loss))
    for leaf in jax.tree.leaves(param_grads):
        assert np.isfinite(np.asarray(leaf)).all()
    image_grads = np.asarray(image_grads)
    assert np.abs(image_grads[:, :present]).max() > 0
    np.testing.assert_array_equal(image_grads[:, present:], 0.0)
    garbled = garbled_absent_slots(batch, present, seed=9)
    garbled["images"][:, present:] = np.nan_to_num(garbled["images"][:, present:])
    loss_garbled, (grads_garbled, _) = loss_and_grads(params, garbled)
    assert float(loss_garbled) == float(loss)
    for a, b in zip(jax.tree.leaves(param_grads), jax.tree.leaves(grads_garbled)):
        np.testing.assert_array_equal(a, b)


def masked_reference(q, k, v, key_mask):
    """float64 softmax attention over the unmasked keys."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    logits = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(key_mask[:, None, None, :], logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bnqk,bknd->bqnd", weights, v)


def test_every_attention_implementation_honours_the_key_mask(rng):
    q, k, v = (jnp.asarray(rng.normal(size=(2, 256, 2, 8)), jnp.float32) for _ in range(3))
    key_mask = np.zeros((2, 256), bool)
    key_mask[0, :128], key_mask[1, :64] = True, True
    key_mask[1, 192:] = True
    expected = masked_reference(q, k, v, key_mask)
    np.testing.assert_allclose(attention(q, k, v, "xla", jnp.asarray(key_mask)), expected, atol=2e-6)
    np.testing.assert_allclose(attention(q, k, v, "pallas_tpu", jnp.asarray(key_mask)), expected, atol=2e-6)  # CPU: XLA path
    with pltpu.force_tpu_interpret_mode():
        kernel = np.asarray(tpu_flash_attention(q, k, v, jnp.asarray(key_mask)))
    rows = key_mask  # the kernel's segment ids mask masked queries' rows differently: compare unmasked queries
    np.testing.assert_allclose(kernel[rows], expected[rows], atol=2e-6)
    with pytest.raises(ValueError, match="self-attention only"):
        attention(q[:, :128], k, v, "pallas_tpu", jnp.asarray(key_mask))


def test_validity_of_the_wrong_shape_is_named(model, config):
    batch = masked_batch(config, 2)
    batch["input_view_valid"] = batch["input_view_valid"][:, :3]
    with pytest.raises(ValueError, match="input_view_valid must have shape"):
        model(batch)


def test_prefix_lengths_mask_the_same_keys_as_a_prefix_mask(rng):
    """cuDNN gets the key mask as lengths (valid keys are a prefix: absent views fill the last slots)."""
    q, k, v = (jnp.asarray(rng.normal(size=(2, 64, 2, 8)), jnp.float32) for _ in range(3))
    key_mask = np.zeros((2, 64), bool)
    key_mask[0, :48], key_mask[1, :16] = True, True
    by_lengths = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=prefix_lengths(jnp.asarray(key_mask)), implementation="xla")
    np.testing.assert_allclose(by_lengths, masked_reference(q, k, v, key_mask), atol=2e-6)
