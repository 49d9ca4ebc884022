"""Schedule, weight-decay mask and clipping of the optimiser."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from avat3r_jax.pytrees import path_names
from avat3r_jax.train import optimizer


def train_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(
        {
            "num_steps": 100,
            "learning_rate": 1e-3,
            "warmup_steps": 10,
            "end_learning_rate_factor": 0.1,
            "weight_decay": 0.05,
            "adam_b1": 0.9,
            "adam_b2": 0.99,
            "grad_clip_norm": 1.0,
        }
    )
    c.update(overrides)
    return c


def expected_lr(step: int, lr=1e-3, warmup=10, total=100, end_factor=0.1) -> float:
    if step < warmup:
        return lr * step / warmup
    progress = min(step - warmup, total - warmup) / (total - warmup)
    end = end_factor * lr
    return end + (lr - end) * 0.5 * (1 + math.cos(math.pi * progress))


def test_schedule_matches_formula():
    schedule = jax.jit(optimizer.make_schedule(train_config()))
    for step in (0, 1, 5, 9, 10, 11, 40, 55, 99, 100, 150):
        np.testing.assert_allclose(float(schedule(step)), expected_lr(step), rtol=1e-5, atol=1e-12, err_msg=f"step {step}")
    np.testing.assert_allclose(float(schedule(55)), 0.55e-3, rtol=1e-5)  # cosine midpoint: (peak + end) / 2.
    no_warmup = jax.jit(optimizer.make_schedule(train_config(warmup_steps=0)))
    np.testing.assert_allclose(float(no_warmup(0)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(no_warmup(50)), expected_lr(50, warmup=0), rtol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"warmup_steps": 100}, "warmup_steps"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"end_learning_rate_factor": 1.5}, "end_learning_rate_factor"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_bad_config_is_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        optimizer.make_optimizer(train_config(**overrides), {"w": jnp.zeros((2, 2))})


def test_decay_that_reaches_no_parameter_is_rejected():
    params = {"bias": jnp.zeros(3), "token_embedding": jnp.zeros((4, 3))}
    with pytest.raises(ValueError, match="no parameter qualifies for decay"):
        optimizer.make_optimizer(train_config(), params)
    optimizer.make_optimizer(train_config(weight_decay=0.0), params)


class Stacked(nnx.Module):
    """Like scanned layers: a bias and a norm scale with a leading layer axis (rank 2)."""

    def __init__(self):
        self.bias = nnx.Param(jnp.ones((3, 4)))
        self.scale = nnx.Param(jnp.ones((3, 4)))


class Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(10, 4, rngs=rngs)
        self.patch_embed = nnx.Linear(4, 4, rngs=rngs)  # a projection: decays although its module is "*embed".
        self.norm = nnx.LayerNorm(4, rngs=rngs)
        self.conv = nnx.Conv(4, 4, (3, 3), rngs=rngs)
        self.view_embedding = nnx.Param(jnp.ones((2, 4)))
        self.stacked = Stacked()


def abstract_tiny_params() -> nnx.State:
    """The Param state of ``Tiny`` as shapes only, as the trainer passes it to ``make_optimizer``."""
    return nnx.split(nnx.eval_shape(lambda: Tiny(nnx.Rngs(0))), nnx.Param)[1]


def test_weight_decay_mask_on_nnx_state():
    params = abstract_tiny_params()
    mask = optimizer.weight_decay_mask(params)
    flat = {"/".join(path_names(path)): value for path, value in jax.tree_util.tree_leaves_with_path(mask)}
    assert flat == {
        "embed/embedding": False,
        "patch_embed/kernel": True,
        "patch_embed/bias": False,
        "norm/scale": False,
        "norm/bias": False,
        "conv/kernel": True,
        "conv/bias": False,
        "view_embedding": False,
        "stacked/bias": False,
        "stacked/scale": False,
    }


def test_decay_applies_only_to_masked_params_with_nnx_state(rng):
    # With zero gradients, AdamW's update is exactly -lr * weight_decay * param where decayed, 0 elsewhere.
    abstract_params = abstract_tiny_params()
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32), abstract_params)
    tx = optimizer.make_optimizer(train_config(warmup_steps=0), abstract_params)
    state = tx.init(params)
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), state, params)
    mask = optimizer.weight_decay_mask(params)
    for update, param, decayed in zip(jax.tree.leaves(updates), jax.tree.leaves(params), jax.tree.leaves(mask), strict=True):
        want = -1e-3 * 0.05 * np.asarray(param) if decayed else np.zeros(param.shape)
        np.testing.assert_allclose(np.asarray(update), want, rtol=1e-5, atol=1e-12)


def test_weight_decay_mask_on_plain_dict():
    params = {
        "dense": {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)},
        "layers": [{"scale": jnp.zeros((4, 2))}],
        "pos_embed": jnp.zeros((5, 2)),
    }
    mask = optimizer.weight_decay_mask(params)
    assert mask == {"dense": {"kernel": True, "bias": False}, "layers": [{"scale": False}], "pos_embed": False}


def adamw_reference(params, grads_per_step, clip, lr=1e-3, warmup=2, total=100, b1=0.9, b2=0.99, wd=0.05, eps=1e-8):
    """float64 AdamW with global-norm clipping and decay on ``w`` only; returns params after each step."""
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    history = []
    for t, grads in enumerate(grads_per_step, start=1):
        norm = np.sqrt(sum(np.sum(np.square(g)) for g in grads.values()))
        scale = min(1.0, clip / norm) if clip > 0 else 1.0
        rate = expected_lr(t - 1, lr, warmup, total)  # the t-th update uses the schedule at count t - 1.
        for k, g in grads.items():
            g = g * scale
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            step = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            if k == "w":
                step = step + wd * params[k]
            params[k] = params[k] - rate * step
        history.append({k: x.copy() for k, x in params.items()})
    return history


@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_updates_match_clipped_adamw_reference(rng, clip):
    # Gradients of very different norms: clipping changes Adam's moment ratios from step 2 on.
    params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "bias": jnp.asarray(rng.normal(size=2), jnp.float32)}
    grads_per_step = [{k: rng.normal(size=p.shape) * scale for k, p in params.items()} for scale in (30.0, 0.1, 5.0)]
    tx = optimizer.make_optimizer(train_config(warmup_steps=2, grad_clip_norm=clip), params)
    state = tx.init(params)
    current = params
    want = adamw_reference(params, grads_per_step, clip)
    update = jax.jit(tx.update)
    for step, grads in enumerate(grads_per_step):
        updates, state = update({k: jnp.asarray(g, jnp.float32) for k, g in grads.items()}, state, current)
        current = optax.apply_updates(current, updates)
        for k in params:
            np.testing.assert_allclose(np.asarray(current[k]), want[step][k], rtol=1e-5, atol=1e-7, err_msg=f"{k} step {step}")
    unclipped = adamw_reference(params, grads_per_step, 0.0)[-1]["w"]
    assert (np.abs(unclipped - want[-1]["w"]).max() > 1e-5) == (clip > 0)
