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
    assert any("step 2 refused" in r.message for r in caplog.records)


def test_no_checkpoint_and_wrong_structure_are_clear_errors(tmp_path):
    abstract = {"x": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=NamedSharding(Mesh(jax.devices()[:1], ("d",)), PartitionSpec()))}
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Checkpointer(tmp_path / "empty").restore(abstract)
    ckpt = Checkpointer(tmp_path / "one", async_save=False)
    ckpt.save(1, {"x": jnp.ones(3)})
    ckpt.wait()
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        Checkpointer(tmp_path / "one").restore(abstract)
    assert Checkpointer(tmp_path / "one").all_steps() == [1]  # Intact files of another model stay in place.


def one_device_abstract(tree):
    return abstract_like(tree, NamedSharding(Mesh(jax.devices()[:1], ("d",)), PartitionSpec()))


def largest_state_file(step_dir: pathlib.Path) -> pathlib.Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def garble(path: pathlib.Path, count: int = 64) -> None:
    """Overwrites ``count`` bytes in the middle of a file with random ones; the size stays the same."""
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - count // 2)
    data[start : start + count] = np.random.default_rng(0).integers(0, 256, min(count, len(data) - start), dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_garbled_bytes_fail_the_checksum_one_line_fallback_and_resave(tmp_path, caplog):
    state = lambda value: {"w": jnp.full((256,), value, jnp.float32), "step": jnp.array(int(value), jnp.int32)}
    ckpt = Checkpointer(tmp_path, keep=3)
    ckpt.save(1, state(1.0))
    ckpt.save(2, state(2.0))
    ckpt.wait()
    assert ckpt.good_steps() == [1, 2]
    assert (tmp_path / "2" / "checksums.json").is_file()
    victim = largest_state_file(tmp_path / "2")
    size = victim.stat().st_size
    garble(victim)
    assert victim.stat().st_size == size
    with caplog.at_level(logging.WARNING):
        step, restored = Checkpointer(tmp_path, keep=3).restore(one_device_abstract(state(0.0)))
    assert step == 1
    np.testing.assert_array_equal(restored["w"], state(1.0)["w"])
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and "\n" not in refusals[0] and "does not match its checksum" in refusals[0], refusals
    # Kept for inspection, out of the way: the run can write step 2 again when it passes it.
    assert (tmp_path / "corrupt" / "2").is_dir() and not (tmp_path / "2").exists()
    again = Checkpointer(tmp_path, keep=3)
    assert again.all_steps() == [1]
    assert again.save(2, state(2.5))
    again.wait()
    _, restored = again.restore(one_device_abstract(state(0.0)))
    np.testing.assert_array_equal(restored["w"], state(2.5)["w"])


def test_non_finite_state_is_refused_on_restore(tmp_path, caplog):
    ckpt = Checkpointer(tmp_path, keep=3, async_save=False)
    ckpt.save(1, {"x": jnp.ones(4)})
    with caplog.at_level(logging.WARNING):
        ckpt.save(2, {"x": jnp.array([1.0, jnp.nan, 1.0, 1.0])})
    ckpt.wait()
    assert ckpt.good_steps() == [1]
    step, restored = Checkpointer(tmp_path).restore(one_device_abstract({"x": jnp.ones(4)}))
    assert step == 1 and np.isfinite(np.asarray(restored["x"])).all()
    assert any("non-finite" in r.getMessage() for r in caplog.records)


def test_rotation_never_removes_the_newest_good_checkpoint(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=1, async_save=False)
    ckpt.save(1, {"x": jnp.ones(2)})
    ckpt.save(2, {"x": jnp.full((2,), jnp.nan)})
    ckpt.save(3, {"x": jnp.full((2,), jnp.inf)})
    ckpt.wait()
    assert ckpt.all_steps() == [1, 3] and ckpt.good_steps() == [1]
    ckpt.save(4, {"x": jnp.zeros(2)})
    ckpt.wait()
    assert ckpt.all_steps() == [4] and ckpt.good_steps() == [4]


def test_unrecorded_checkpoint_restores_and_then_counts_good(tmp_path):
    """A checkpoint whose checksums were never recorded (killed right after the commit) still restores."""
    ckpt = Checkpointer(tmp_path, keep=2, async_save=False)
    ckpt.save(5, {"x": jnp.arange(3.0)})
    ckpt.wait()
    (tmp_path / "5" / "checksums.json").unlink()
    reopened = Checkpointer(tmp_path, keep=2)
    assert reopened.good_steps() == []
    step, restored = reopened.restore(one_device_abstract({"x": jnp.arange(3.0)}))
    np.testing.assert_array_equal(restored["x"], jnp.arange(3.0))
    assert step == 5 and reopened.good_steps() == [5] and (tmp_path / "5" / "checksums.json").is_file()


def test_every_refused_checkpoint_gives_one_line_each(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=3, async_save=False)
    for step in (1, 2):
        ckpt.save(step, {"x": jnp.full((64,), float(step))})
    ckpt.wait()
    for step in (1, 2):
        garble(largest_state_file(tmp_path / str(step)))
    with pytest.raises(CheckpointError) as raised:
        Checkpointer(tmp_path).restore(one_device_abstract({"x": jnp.ones(64)}))
    message = str(raised.value)
    assert "\n" not in message and "step 2: file" in message and "step 1: file" in message, message


def test_restoring_one_named_step_refuses_in_one_line_and_moves_nothing(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=3, async_save=False)
    ckpt.save(1, {"x": jnp.full((64,), 1.0)})
    ckpt.wait()
    garble(largest_state_file(tmp_path / "1"))
    with pytest.raises(CheckpointError, match=r"^checkpoint at step 1 in .* refused: file state/.* does not match its checksum"):
        Checkpointer(tmp_path).restore(one_device_abstract({"x": jnp.ones(64)}), step=1)
    assert Checkpointer(tmp_path).all_steps() == [1]
