"""The batch contract's stored dtypes (``spec.BATCH_STORAGE``): uint8 images and masks, float16 maps,
turned into float32 values on the device; a batch of them trains exactly like its float32 twin."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avat3r_jax.batch_dtypes import to_float32
from avat3r_jax.model import abstract_model
from avat3r_jax.spec import BATCH_STORAGE, ModelSpec, batch_shapes, float32_divisor, from_stored, to_stored
from avat3r_jax.train.objective import make_loss_fn
from configs import tiny
from tests.export.examples import random_example, random_params


def stored_batch(rng: np.random.Generator, config) -> dict[str, np.ndarray]:
    """A batch of 1 in the dtypes of ``batch_shapes``, with targets seen by the input cameras."""
    example = random_example(rng, ModelSpec.from_config(config))
    views = example["images"].shape[0]
    example |= {
        "target_images": rng.uniform(size=example["images"].shape),
        "target_masks": rng.uniform(size=example["masks"].shape),
        "target_K": example["K"],
        "target_world_to_cam": example["world_to_cam"],
        "input_view_valid": np.ones(views),
        "expression": rng.normal(size=config.data.expression_dim),
    }
    return {key: to_stored(key, value[None]) for key, value in example.items()}


def test_batch_shapes_list_the_stored_dtypes():
    shapes = batch_shapes(ModelSpec.from_config(tiny.get_config()), 2, num_target_views=3)
    assert {key: spec.dtype for key, spec in shapes.items() if spec.dtype != "float32"} == {
        **{key: stored.dtype for key, stored in BATCH_STORAGE.items()},
        "subject": "int32",
        "frame": "int32",
    }


def test_stored_values_round_trip(rng):
    pixels = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(to_stored("images", from_stored("images", pixels)), pixels)
    values = rng.uniform(-0.2, 1.2, size=1000).astype(np.float32)
    error = np.abs(from_stored("images", to_stored("images", values)) - np.clip(values, 0, 1))
    assert error.max() <= 0.5 / 255 + 1e-7
    valid = np.array([0.0, 1.0], np.float32)
    np.testing.assert_array_equal(from_stored("posmap_valid", to_stored("posmap_valid", valid)), valid)
    maps = rng.normal(size=100).astype(np.float16).astype(np.float32)  # float16-representable: exact
    np.testing.assert_array_equal(from_stored("posmaps", to_stored("posmaps", maps)), maps)
    on_device = np.asarray(to_float32({"masks": pixels})["masks"])  # XLA may multiply by 1/255: one ulp
    np.testing.assert_allclose(on_device, from_stored("masks", pixels), rtol=1.2e-7, atol=0)


def test_float_entries_pass_and_other_dtypes_are_named_in_one_line():
    assert float32_divisor("images", "float32") is None and float32_divisor("K", "float64") is None
    assert float32_divisor("images", "uint8") == 255.0 and float32_divisor("posmap_valid", "uint8") == 1.0
    assert float32_divisor("features", "float16") == 1.0 and float32_divisor("masks", "float64") == 1.0
    for key, dtype in (("images", np.int32), ("masks", np.uint16), ("posmaps", np.uint8), ("posmap_valid", bool)):
        with pytest.raises(ValueError) as error:
            to_float32({key: np.zeros(3, dtype)})
        message = str(error.value)
        assert "\n" not in message and repr(key) in message and np.dtype(dtype).name in message, message


def test_the_model_refuses_a_wrongly_typed_entry(rng):
    config = tiny.get_config()
    graphdef, abstract_params = abstract_model(config)  # shapes only: no weights initialised
    batch = stored_batch(rng, config)
    batch["images"] = batch["images"].astype(np.int32)
    with pytest.raises(ValueError, match="batch entry 'images' is int32; expected uint8"):
        jax.eval_shape(lambda params, batch: nnx.merge(graphdef, params).encode(batch), abstract_params, batch)


@pytest.mark.slow
def test_the_stored_batch_gives_the_float_batch_loss(rng):
    config = tiny.get_config()
    config.render.backend = "reference"  # the dtypes are the point, not the rasterizer: its cheapest compile
    config.train.random_background = False
    graphdef, params = random_params(config, rng)
    loss_fn = jax.jit(make_loss_fn(graphdef, config))
    stored = stored_batch(rng, config)
    floats = {key: from_stored(key, value) for key, value in stored.items()}
    assert stored["images"].dtype == np.uint8 and stored["features"].dtype == np.float16
    assert all(value.dtype != np.uint8 and value.dtype != np.float16 for value in floats.values())
    key = jax.random.key(0)
    loss_stored, metrics_stored = loss_fn(params, stored, key, {})
    loss_float, metrics_float = loss_fn(params, floats, key, {})
    assert float(loss_float) > 0.01  # the renders differ from the random targets
    np.testing.assert_allclose(float(loss_stored), float(loss_float), rtol=1e-5)
    for name in metrics_float:
        np.testing.assert_allclose(float(metrics_stored[name]), float(metrics_float[name]), rtol=1e-5, atol=1e-6, err_msg=name)
    assert jnp.asarray(stored["images"]).dtype == jnp.uint8  # inputs were not converted on the host
