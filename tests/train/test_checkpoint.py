import logging
import pathlib

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from avat3r_jax.checkpoint import Checkpointer, CheckpointError


def make_iterator():
    return iter(grain.MapDataset.range(100).shuffle(seed=3).map(lambda i: i * 2).batch(4).to_iter_dataset())


def abstract_like(tree, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def test_save_restore_state_iterator_and_config(tmp_path):
    state = {"w": jnp.arange(12.0).reshape(3, 4), "step": jnp.array(7, jnp.int32)}
    iterator = make_iterator()
    for _ in range(3):
        next(iterator)
    ckpt = Checkpointer(tmp_path, keep=2)
    ckpt.save(7, state, iterator, config={"lr": 0.1})
    ckpt.wait()
    expected_next = [next(iterator) for _ in range(2)]

    fresh = make_iterator()
    one_device = NamedSharding(Mesh(jax.devices()[:1], ("x",)), PartitionSpec())
    step, restored = Checkpointer(tmp_path).restore(abstract_like(state, one_device), fresh)
    assert step == 7
    np.testing.assert_array_equal(restored["w"], state["w"])
    for expected in expected_next:
        np.testing.assert_array_equal(next(fresh), expected)
    assert ckpt.restore_config() == {"lr": 0.1}


def test_keeps_only_the_last_n(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2, async_save=False)
    for step in (1, 2, 3):
        ckpt.save(step, {"x": jnp.full((2,), step)})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]


def test_eight_devices_to_one_and_back(tmp_path):
    mesh8 = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "tensor"))
    sharded = NamedSharding(mesh8, PartitionSpec("data", "tensor"))
    state = {"w": jax.device_put(jnp.arange(64.0).reshape(8, 8), sharded)}
    writer = Checkpointer(tmp_path / "a")
    writer.save(1, state)
    writer.wait()
    one = NamedSharding(Mesh(jax.devices()[:1], ("data",)), PartitionSpec())
    _, restored = Checkpointer(tmp_path / "a").restore(abstract_like(state, one))
    assert restored["w"].sharding.num_devices == 1
    np.testing.assert_array_equal(restored["w"], jnp.arange(64.0).reshape(8, 8))
    writer = Checkpointer(tmp_path / "b")
    writer.save(1, restored)
    writer.wait()
    _, back = Checkpointer(tmp_path / "b").restore(abstract_like(state, sharded))
    assert back["w"].sharding == sharded
    np.testing.assert_array_equal(back["w"], state["w"])


def test_corrupt_latest_falls_back_with_warning(tmp_path, caplog):
    ckpt = Checkpointer(tmp_path, keep=3, async_save=False)
    ckpt.save(1, {"x": jnp.ones(4)})
    ckpt.save(2, {"x": 2 * jnp.ones(4)})
    ckpt.wait()
    for path in (pathlib.Path(tmp_path) / "2" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    abstract = {"x": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=NamedSharding(Mesh(jax.devices()[:1], ("d",)), PartitionSpec()))}
    with caplog.at_level(logging.WARNING):
        step, restored = Checkpointer(tmp_path).restore(abstract)
    assert step == 1
    np.testing.assert_array_equal(restored["x"], jnp.ones(4))
    assert any("unreadable" in r.message for r in caplog.records)


def test_no_checkpoint_and_wrong_structure_are_clear_errors(tmp_path):
    abstract = {"x": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=NamedSharding(Mesh(jax.devices()[:1], ("d",)), PartitionSpec()))}
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Checkpointer(tmp_path / "empty").restore(abstract)
    ckpt = Checkpointer(tmp_path / "one", async_save=False)
    ckpt.save(1, {"x": jnp.ones(3)})
    ckpt.wait()
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        Checkpointer(tmp_path / "one").restore(abstract)
