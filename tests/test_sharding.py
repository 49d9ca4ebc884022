"""Logical-axis rules, meshes, parameter/state shardings and the sharded model forward (8 CPU devices)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from avat3r_jax import sharding
from avat3r_jax.model import Avat3r
from avat3r_jax.model.layers import Mlp
from tests.model.scene import rngs, sphere_batch, tiny_config


def mesh_of(data, fsdp, tensor):
    return sharding.make_mesh(ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor}))


def test_rules_map_activations_and_parameters_without_reusing_mesh_axes():
    spec = sharding.logical_to_spec
    assert spec(("batch", "tokens", "embed")) == P(("data", "fsdp"), None, None)  # fsdp already used by batch
    assert spec(("embed", "mlp")) == P("fsdp", "tensor")
    assert spec(("mlp", "embed")) == P("tensor", "fsdp")
    assert spec(("batch", "tokens", "heads", "kv")) == P(("data", "fsdp"), None, "tensor", None)
    assert spec(("layers", "embed", "qkv", "heads", "kv")) == P(None, "fsdp", None, "tensor", None)
    assert spec(("batch", "tokens", "mlp")) == P(("data", "fsdp"), None, "tensor")
    assert spec((None, None)) == P(None, None)


def test_axes_that_do_not_divide_fall_back_to_a_dividing_prefix_or_replication():
    mesh = mesh_of(2, 2, 2)
    assert sharding.logical_to_spec(("batch", None), (2, 5), mesh) == P("data", None)  # 2 % (2*2) != 0
    assert sharding.logical_to_spec(("batch", None), (8, 5), mesh) == P(("data", "fsdp"), None)
    assert sharding.logical_to_spec((None, "embed"), (6, 3), mesh) == P(None, None)
    assert sharding.logical_to_spec(("embed", "mlp"), (6, 3), mesh) == P("fsdp", None)


def test_bad_logical_names_are_named():
    with pytest.raises(ValueError, match="no sharding rule"):
        sharding.logical_to_spec(("batch", "pixels"))
    with pytest.raises(ValueError, match="repeat"):
        sharding.logical_to_spec(("embed", "embed"))
    with pytest.raises(ValueError, match="shape"):
        sharding.logical_to_spec(("embed",), (2, 3))


def test_make_mesh_absorbs_minus_one_and_rejects_wrong_products():
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 2, "tensor": 2}))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    with pytest.raises(ValueError, match="has 12 devices but 8 are available"):
        mesh_of(3, 2, 2)
    with pytest.raises(ValueError, match="cannot be split"):
        mesh_of(-1, 3, 1)
    with pytest.raises(ValueError, match="at most one"):
        mesh_of(-1, -1, 2)
    with pytest.raises(ValueError, match="positive or -1"):
        mesh_of(0, 8, 1)
    one = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
    assert dict(one.shape) == {"data": 1, "fsdp": 1, "tensor": 1}


def test_batch_sharding_splits_the_leading_axis():
    mesh = mesh_of(2, 2, 2)
    assert sharding.batch_sharding(mesh, 5) == NamedSharding(mesh, P(("data", "fsdp"), None, None, None, None))


def test_logical_constraint_is_a_no_op_without_a_mesh_and_shards_under_one():
    x = jnp.ones((8, 4, 16))
    assert sharding.with_logical_constraint(x, ("batch", "tokens", "embed")) is x
    mesh = mesh_of(2, 2, 2)
    with jax.set_mesh(mesh):
        y = jax.jit(lambda x: sharding.with_logical_constraint(x * 2, ("batch", "tokens", "mlp")))(x)
    assert y.sharding.spec == P(("data", "fsdp"), None, "tensor")
    np.testing.assert_array_equal(y, 2 * np.ones((8, 4, 16)))


def small_module() -> Mlp:
    return Mlp(8, 16, dtype=jnp.float32, rngs=rngs(0))


def test_create_sharded_places_each_parameter_by_its_logical_axes():
    mesh = mesh_of(2, 2, 2)
    module = sharding.create_sharded(small_module, mesh)
    assert module.up.kernel[...].sharding.spec == P("fsdp", "tensor")
    assert module.up.bias[...].sharding.spec == P("tensor")
    assert module.down.kernel[...].sharding.spec == P("tensor", "fsdp")
    assert module.down.bias[...].sharding.spec == P("fsdp")
    reference = small_module()  # same values as an unsharded build
    np.testing.assert_array_equal(module.up.kernel[...], reference.up.kernel[...])


def test_state_shardings_follow_parameters_into_optimizer_moments():
    mesh = mesh_of(2, 2, 2)
    _, params = nnx.split(nnx.eval_shape(small_module), nnx.Param)
    tx = optax.adam(1e-3)
    state = jax.eval_shape(lambda p: {"params": p, "opt_state": tx.init(p), "step": jnp.zeros((), jnp.int32)}, params)
    shardings = sharding.state_shardings(state, params, mesh)
    specs = {jax.tree_util.keystr(path, simple=True, separator="/"): s.spec for path, s in jax.tree_util.tree_leaves_with_path(shardings)}
    assert specs["opt_state/0/mu/up/kernel/value"] == P("fsdp", "tensor")
    assert specs["opt_state/0/nu/down/kernel/value"] == P("tensor", "fsdp")
    assert specs["params/down/bias/value"] == P("fsdp")
    assert specs["opt_state/0/count"] == P()
    assert specs["step"] == P()
    assert len(specs) == 3 * 4 + 2


@pytest.mark.slow
def test_sharded_forward_on_eight_devices_equals_single_device():
    config = tiny_config(cross_attn_from_layer=1, scan_layers=True)
    batch = sphere_batch(config, batch_size=4)
    model = Avat3r(config, rngs=rngs(0))
    model.head.out.kernel[...] = 0.5 * jax.random.normal(jax.random.key(1), model.head.out.kernel.shape)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, batch: nnx.merge(graphdef, state)(batch))
    expected = forward(state, batch)

    mesh = mesh_of(2, 2, 2)
    sharded_state = jax.device_put(state, sharding.parameter_shardings(state, mesh))
    assert sharded_state["blocks"]["blocks"]["mlp"]["up"]["kernel"][...].sharding.spec == P(None, "fsdp", "tensor")
    sharded_batch = {key: jax.device_put(value, sharding.batch_sharding(mesh, value.ndim)) for key, value in batch.items()}
    with jax.set_mesh(mesh):
        got = forward(sharded_state, sharded_batch)
    assert got.means.sharding.spec[0] == ("data", "fsdp")
    for name in ("means", "log_scales", "quaternions", "opacity_logits", "colors"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), atol=2e-5, err_msg=name)
