import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from avat3r_jax.train.state import create_train_state
from avat3r_jax.train.step import make_train_step, split_micro_batches
from launch.hlo_stats import fusion_fan_ins
from tests.train.trainer_fixtures import REPO


def linear_loss(params, batch, rng, extras):
    del rng, extras
    pred = batch["x"] @ params["w"] + params["b"]
    loss = jnp.mean((pred - batch["y"]) ** 2)
    return loss, {"mse": loss}


def make_batch(rng, n=8):
    return {"x": jnp.asarray(rng.normal(size=(n, 3)), jnp.float32), "y": jnp.asarray(rng.normal(size=(n, 2)), jnp.float32)}


def test_grad_accumulation_equals_full_batch(rng):
    params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.zeros(2)}
    tx = optax.sgd(0.1)
    batch = make_batch(rng)
    full, full_metrics = jax.jit(make_train_step(linear_loss, tx, 1))(create_train_state(params, tx, 0), batch)
    accum, accum_metrics = jax.jit(make_train_step(linear_loss, tx, 4))(create_train_state(params, tx, 0), batch)
    np.testing.assert_allclose(accum.params["w"], full.params["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(accum_metrics["loss"], full_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(accum_metrics["mse"], full_metrics["mse"], rtol=1e-5)
    assert int(full.step) == 1


def test_non_finite_batch_is_skipped_and_counted(rng):
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    tx = optax.adam(0.1)
    step = jax.jit(make_train_step(linear_loss, tx))
    state = create_train_state(params, tx, 0)
    bad = make_batch(rng)
    bad["x"] = bad["x"].at[0, 0].set(jnp.nan)
    state, metrics = step(state, bad)
    assert int(metrics["skipped"]) == 1 and int(state.nonfinite_in_a_row) == 1 and int(state.nonfinite_total) == 1
    np.testing.assert_array_equal(state.params["w"], params["w"])
    assert int(optax.tree_utils.tree_get(state.opt_state, "count")) == 0
    state, metrics = step(state, make_batch(rng))
    assert int(metrics["skipped"]) == 0 and int(state.nonfinite_in_a_row) == 0 and int(state.nonfinite_total) == 1
    assert not np.allclose(state.params["w"], params["w"])


def test_indivisible_micro_batches_are_rejected(rng):
    with pytest.raises(ValueError, match="grad_accum_steps=3"):
        split_micro_batches(make_batch(rng, 8), 3)


def test_nan_learning_rate_update_is_kept_out_of_the_state(rng):
    """Finite loss and gradients but a NaN step size: the update would poison the params."""
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    tx = optax.adam(jnp.nan)
    step = jax.jit(make_train_step(linear_loss, tx))
    state = create_train_state(params, tx, 0)
    state, metrics = step(state, make_batch(rng))
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert int(metrics["skipped"]) == 1 and int(state.nonfinite_in_a_row) == 1 and int(state.nonfinite_total) == 1
    np.testing.assert_array_equal(state.params["w"], params["w"])
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state.opt_state))
    assert int(optax.tree_utils.tree_get(state.opt_state, "count")) == 0


def test_overflowing_optimiser_state_is_kept_out(rng):
    """Gradients finite but so large that Adam's second moment overflows float32 to inf."""
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    tx = optax.adam(0.1)
    huge = lambda p, batch, r, e: (jnp.sum(p["w"]) * 1e30 + jnp.sum(p["b"]), {})
    step = jax.jit(make_train_step(huge, tx))
    state = create_train_state(params, tx, 0)
    new_state, metrics = step(state, make_batch(rng))
    assert np.isfinite(float(metrics["loss"])) and int(metrics["skipped"]) == 1
    for new, old in zip(jax.tree.leaves(new_state.opt_state), jax.tree.leaves(state.opt_state)):
        np.testing.assert_array_equal(new, old)


def test_the_finite_guard_is_computed_once_not_fused_into_every_update():
    """With many parameter leaves, XLA must not copy the all-leaves finiteness reduction into each
    leaf's keep-or-update select (that made the CPU compile of the real step take 11 minutes), and
    the guard must not read every leaf's new value (XLA then computed each update twice).

    A fusion that reads every leaf's flag or norm is fine once per tree (the guard, the global
    norm); without the barrier there were 126 here, about three per leaf.
    """
    num_leaves = 40
    params = {f"p{i}": jnp.ones((i + 1, 3)) for i in range(num_leaves)}  # distinct shapes: no merged fusions

    def loss_fn(params, batch, rng, extras):
        del rng, extras
        loss = sum(jnp.mean((batch["x"][: leaf.shape[0]] * leaf) ** 2) for leaf in params.values())
        return loss, {}

    tx = optax.adam(0.1)
    step = jax.jit(make_train_step(loss_fn, tx))
    state = create_train_state(params, tx, 0)
    batch = {"x": jnp.ones((num_leaves, 3))}
    fan_ins = fusion_fan_ins(step.lower(state, batch).compile().as_text())
    wide = [fan_in for fan_in in fan_ins if fan_in >= num_leaves]
    assert len(wide) <= 8, wide

    def unguarded(state, batch):
        grads = jax.grad(lambda p: loss_fn(p, batch, None, None)[0])(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), opt_state

    # Keep-or-update selects and the gradient norm add ~3 kernels per leaf; checking every new leaf
    # for finiteness added ~11 (570 fusions here against 123 unguarded).
    plain = fusion_fan_ins(jax.jit(unguarded).lower(state, batch).compile().as_text())
    assert len(fan_ins) <= len(plain) + 4 * num_leaves, (len(fan_ins), len(plain))


def test_tracing_the_rasterizer_leaves_the_trace_context_alone():
    """Tracing ``render.backend=auto`` (all kernel flavours) must not register JAX config options: a
    longer trace context made the trainer's second step miss the jit cache and compile again (41 s
    on the CPU at the synthetic size). Run in a fresh process, where nothing else imported them first."""
    script = """
import jax, jax.numpy as jnp
from jax._src import config
import avat3r_jax.train.objective
from avat3r_jax.gaussians import Gaussians
from avat3r_jax.geometry import Cameras
from avat3r_jax.render import rasterize
before = len(config.trace_context())
n = 8
gaussians = Gaussians.create(jnp.zeros((n, 3)).at[:, 2].set(2.0), jnp.full((n, 3), -3.0),
    jnp.tile(jnp.array([1.0, 0, 0, 0]), (n, 1)), jnp.zeros(n), jnp.ones((n, 3)))
cameras = Cameras(jnp.array([[[16.0, 0, 8], [0, 16, 8], [0, 0, 1]]]), jnp.eye(4)[None])
jax.jit(lambda g: rasterize(g, cameras, (16, 16), jnp.ones(3), backend="auto").images).lower(gaussians)
print("trace context", before, len(config.trace_context()))
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    _, before, after = result.stdout.split()[-3:]
    assert before == after, result.stdout
