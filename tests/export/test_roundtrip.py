"""Checkpoint -> bundle -> reload: the same Gaussians as the training params; jax.export artifacts run."""

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from avat3r_jax.checkpoint import Checkpointer
from avat3r_jax.export.bundle import load_bundle, save_bundle
from avat3r_jax.export.exporting import export_model, gaussians_from_dict
from avat3r_jax.export.from_checkpoint import load_checkpoint_params
from avat3r_jax.export.params import ParamsMismatchError, cast_params
from avat3r_jax.export.runtime import InferenceModel
from avat3r_jax.spec import ModelSpec
from avat3r_jax.train import optimizer
from avat3r_jax.train.state import create_train_state
from configs.tiny import get_config
from tests.export.examples import random_batch, random_params

SPEC = ModelSpec.from_config(get_config())  # the tiny config: 2 views of 32x32, 8-d expression codes

FIELDS = ("means", "log_scales", "quaternions", "opacity_logits", "colors", "sh_rest")


def assert_same_gaussians(actual, expected, atol):
    for field in FIELDS:
        np.testing.assert_allclose(np.asarray(getattr(actual, field)), np.asarray(getattr(expected, field)), atol=atol, err_msg=field)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory with one checkpoint of a tiny model with random params (not those of an init with any seed)."""
    config = get_config()
    graphdef, params = random_params(config, np.random.default_rng(1))
    state = create_train_state(params, optimizer.make_optimizer(config.train, params), seed=0)
    workdir = tmp_path_factory.mktemp("run")
    checkpointer = Checkpointer(workdir / "checkpoints", async_save=False)
    checkpointer.save(3, state, config=config.to_dict())
    checkpointer.close()
    jitted = jax.jit(lambda params, batch: nnx.merge(graphdef, params)(batch))
    training_forward = lambda batch: jitted(params, batch)
    return workdir, config, training_forward


@pytest.fixture(scope="module")
def bundle_dir(run, tmp_path_factory):
    workdir, config, _ = run
    loaded_config, params, step = load_checkpoint_params(workdir)
    assert step == 3 and loaded_config == config
    directory = tmp_path_factory.mktemp("bundle")
    save_bundle(directory, loaded_config, params, export_model(loaded_config, params, ("cpu", "cuda")), source={"step": step})
    return directory


def test_reloaded_bundle_gives_the_training_models_gaussians(run, bundle_dir, rng):
    _, config, training_forward = run
    bundle = load_bundle(bundle_dir, expected_config=config)
    model = InferenceModel.from_bundle(bundle)
    batch = random_batch(rng, SPEC)
    context = model.encode(batch)
    assert_same_gaussians(model.decode(context, batch["expression"]), training_forward(batch), atol=1e-6)


def test_jax_export_artifacts_round_trip_and_run(run, bundle_dir, rng):
    _, _, training_forward = run
    bundle = load_bundle(bundle_dir)
    assert bundle.export_names == ["decode", "encode", "forward"]
    assert bundle.manifest["exports"]["forward"]["platforms"] == ["cpu", "cuda"]
    batch = random_batch(rng, SPEC)
    inputs = {key: batch[key] for key in SPEC.model_input_keys}
    expected = training_forward(batch)
    # Deserialized from the bundle's files: plain dicts in, plain dicts out.
    forward = bundle.exported("forward")
    assert_same_gaussians(gaussians_from_dict(forward.call(bundle.params, inputs, batch["expression"])), expected, atol=1e-5)
    context = bundle.exported("encode").call(bundle.params, inputs)
    for expression in (batch["expression"], rng.normal(size=(1, 8)).astype(np.float32)):
        decoded = gaussians_from_dict(bundle.exported("decode").call(bundle.params, context, expression))
        assert_same_gaussians(decoded, training_forward(batch | {"expression": expression}), atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        forward.call(bundle.params, inputs | {"images": batch["images"][:, :1]}, batch["expression"])


def test_bfloat16_bundle_is_close(run, tmp_path, rng):
    workdir, config, training_forward = run
    _, params, _ = load_checkpoint_params(workdir)
    save_bundle(tmp_path, config, cast_params(params, "bfloat16"), {}, source={})
    model = InferenceModel.from_bundle(load_bundle(tmp_path))
    batch = random_batch(rng, SPEC)
    expected, actual = training_forward(batch), model.decode(model.encode(batch), batch["expression"])
    # Means are the position map plus a bounded offset: bf16 weights move them by a fraction of max_offset (2 cm).
    np.testing.assert_allclose(actual.means, expected.means, atol=2e-3)
    np.testing.assert_allclose(actual.colors, expected.colors, atol=5e-2)
    assert not np.allclose(actual.colors, expected.colors, atol=1e-7)  # the weights really were rounded


def test_single_view_runs_through_the_same_model(bundle_dir, rng):
    bundle = load_bundle(bundle_dir)
    model = InferenceModel.from_bundle(bundle)
    batch = random_batch(rng, SPEC, views=1)
    gaussians = model.forward(batch)
    assert gaussians.means.shape == (1, 32 * 32, 3) and np.isfinite(np.asarray(gaussians.means)).all()
    # Each Gaussian starts at its pixel's position-map point and moves at most model.max_offset per axis.
    offsets = np.abs(np.asarray(gaussians.means) - batch["posmaps"].reshape(1, -1, 3))
    assert 1e-5 < offsets.max() <= bundle.config.model.max_offset * (1 + 1e-5)


def test_params_of_another_config_are_refused(bundle_dir):
    bundle = load_bundle(bundle_dir)
    other = ml_collections.ConfigDict(bundle.config.to_dict())
    other.model.width = 32
    with pytest.raises(
        ParamsMismatchError,
        match=r"(?s)do not fit the model.*wrong shape \(62\): blocks/blocks/0/cross_attention/k_norm/scale: stored \(16,\), model \(8,\)",
    ):
        InferenceModel.from_flat(other, bundle.params, "the bundle")
