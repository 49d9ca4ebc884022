"""``model.expression_injection = "token"``: the expression as tokens in the self-attention sequence (the paper's ablation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avat3r_jax.config_validation import config_problems
from avat3r_jax.model.attention import prefix_lengths
from avat3r_jax.model.avat3r import with_expression_tokens
from avat3r_jax.spec import ModelSpec
from tests.model.scene import sphere_batch, tiny_config
from tests.model.test_view_mask import (
    FIELDS,
    assert_masked_equals_cut,
    forward,
    garbled_absent_slots,
    masked_batch,
    random_head_model,
    slot_config,
)


@pytest.fixture(scope="module")
def config():
    return slot_config(cross_attn_from_layer=1, expression_injection="token")


@pytest.fixture(scope="module")
def model(config):
    return random_head_model(config)


def test_token_mode_has_no_cross_attention_and_the_expression_still_matters(model, config):
    names = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert not any("cross" in name for name in names)
    assert any(name.startswith("expression_encoder/") for name in names)
    batch = sphere_batch(config, batch_size=2, seed=1)
    other = dict(batch, expression=batch["expression"] + 1.0)
    a, b = forward(model, batch), forward(model, other)
    assert np.abs(np.asarray(a.means) - np.asarray(b.means)).max() > 1e-6
    assert np.abs(np.asarray(a.colors) - np.asarray(b.colors)).max() > 1e-6


def test_token_mode_encode_decode_equals_the_forward_pass(model, config):
    batch = sphere_batch(config, batch_size=2, seed=2)
    whole = forward(model, batch)
    parts = nnx.jit(lambda m, b: m.decode(m.encode(b), b["expression"]))(model, batch)
    for field in FIELDS:
        np.testing.assert_allclose(getattr(whole, field), getattr(parts, field), atol=1e-6, err_msg=field)


@pytest.mark.parametrize("present", [1, 3])
def test_token_mode_masked_slots_equal_the_batch_cut_to_the_present_views(model, config, present):
    """The expression tokens must stay visible and absent views invisible once the sequence grows."""
    batch = masked_batch(config, present)
    masked, _ = assert_masked_equals_cut(model, config, batch, present)
    garbled = forward(model, garbled_absent_slots(batch, present, seed=present))
    np.testing.assert_array_equal(masked.means, garbled.means)


def test_expression_tokens_go_first_so_valid_keys_stay_a_prefix(rng):
    tokens = jnp.asarray(rng.normal(size=(2, 12, 8)), jnp.float32)
    expression_tokens = jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32)
    valid = np.zeros((2, 12), bool)
    valid[0, :8], valid[1, :4] = True, True
    sequence, key_mask = with_expression_tokens(tokens, expression_tokens, jnp.asarray(valid))
    np.testing.assert_array_equal(sequence[:, :3], expression_tokens)
    np.testing.assert_array_equal(sequence[:, 3:], tokens)
    np.testing.assert_array_equal(prefix_lengths(key_mask), [11, 7])
    expected = np.concatenate([np.ones((2, 3), bool), valid], axis=1)
    np.testing.assert_array_equal(key_mask, expected)
    assert with_expression_tokens(tokens, expression_tokens, None)[1] is None


def test_expression_gradients_reach_the_encoder(model, config):
    graphdef, params = nnx.split(model, nnx.Param)
    batch = sphere_batch(config, batch_size=2, seed=3)

    def loss(p, expression):
        return jnp.mean(nnx.merge(graphdef, p)(dict(batch, expression=expression)).colors ** 2)

    grads, expression_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, jnp.asarray(batch["expression"]))
    assert np.abs(np.asarray(expression_grad)).max() > 0
    encoder = grads["expression_encoder"]
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(encoder))
    assert max(float(np.abs(np.asarray(leaf)).max()) for leaf in jax.tree.leaves(encoder)) > 0


def test_an_unknown_injection_is_named():
    config = tiny_config(expression_injection="film")
    assert any("model.expression_injection" in problem for problem in config_problems(config))
    with pytest.raises(ValueError, match=r"model\.expression_injection must be one of"):
        ModelSpec.from_config(config)


def test_the_pytorch_mirror_refuses_token_mode(config):
    torch_model = pytest.importorskip("avat3r_jax.torch.model")
    with pytest.raises(ValueError, match=r"expression_injection='token'"):
        torch_model.Avat3rTorch(ModelSpec.from_config(config))
