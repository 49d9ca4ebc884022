"""Reading released checkpoints: .pth (weights_only, Namespace allowed) and .safetensors; key/shape checks."""

import argparse
import pathlib

import numpy as np
import pytest
from safetensors.numpy import save_file

from avat3r_jax.frontend.checkpoints import CheckpointError, check_finite, check_keys, read_checkpoint

torch = pytest.importorskip("torch")


def _state(rng) -> dict:
    return {"enc.weight": rng.standard_normal((4, 3)).astype(np.float32), "enc.bias": rng.standard_normal(4).astype(np.float32)}


def test_pth_with_namespace_args(tmp_path, rng):
    state = _state(rng)
    path = tmp_path / "model.pth"
    args = argparse.Namespace(model="Net(width=4)", lr=1e-4)
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}, "args": args, "epoch": 3}, path)
    checkpoint = read_checkpoint(path, container="model")
    assert set(checkpoint.tensors) == set(state)
    for key, value in state.items():
        np.testing.assert_array_equal(checkpoint.tensors[key], value)
    assert checkpoint.metadata == {"args": {"model": "Net(width=4)", "lr": 1e-4}, "epoch": 3}


def test_pth_flat_and_bfloat16_widened(tmp_path):
    path = tmp_path / "flat.pt"
    values = torch.tensor([1.5, -2.25, 3.0], dtype=torch.bfloat16)
    torch.save({"w": values}, path)
    checkpoint = read_checkpoint(path)
    assert checkpoint.tensors["w"].dtype == np.float32
    np.testing.assert_array_equal(checkpoint.tensors["w"], [1.5, -2.25, 3.0])


def test_pth_other_classes_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "where": pathlib.PurePosixPath("/x")}, path)
    with pytest.raises(CheckpointError, match=r"refused by torch.load\(weights_only=True\)"):
        read_checkpoint(path, container="model")


def test_pth_missing_container_names_the_keys(tmp_path):
    path = tmp_path / "mmengine.pth"
    torch.save({"state_dict": {"backbone.w": torch.zeros(2)}, "meta": {}}, path)
    with pytest.raises(CheckpointError, match=r"no 'model' entry \(top-level keys: meta, state_dict\); a checkpoint of another model"):
        read_checkpoint(path, container="model")
    assert set(read_checkpoint(path, container="state_dict").tensors) == {"backbone.w"}


def test_truncated_pth(tmp_path, rng):
    path = tmp_path / "model.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in _state(rng).items()}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.pth: not a readable PyTorch checkpoint \(truncated or corrupt\?\)"):
        read_checkpoint(path, container="model")


def test_safetensors_and_container_prefix(tmp_path, rng):
    state = _state(rng)
    flat = tmp_path / "flat.safetensors"
    save_file(state, flat, metadata={"model": "Net(width=4)"})
    checkpoint = read_checkpoint(flat, container="model")
    assert set(checkpoint.tensors) == set(state)
    assert checkpoint.metadata == {"model": "Net(width=4)"}
    prefixed = tmp_path / "prefixed.safetensors"
    save_file({f"model.{k}": v for k, v in state.items()} | {"other.x": np.zeros(1, np.float32)}, prefixed)
    np.testing.assert_array_equal(read_checkpoint(prefixed, container="model").tensors["enc.weight"], state["enc.weight"])
    assert set(read_checkpoint(prefixed, container="model").tensors) == set(state)


def test_truncated_safetensors(tmp_path, rng):
    path = tmp_path / "w.safetensors"
    save_file(_state(rng), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 9])
    with pytest.raises(CheckpointError, match=r"w.safetensors: not a readable safetensors file \(truncated or corrupt\?\)"):
        read_checkpoint(path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file at"):
        read_checkpoint(tmp_path / "absent.pth")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint format '\.npz'"):
        read_checkpoint(tmp_path / "w.npz")


def test_check_keys_names_missing_unexpected_and_shapes():
    expected = {f"block.{i}.w": (2, 2) for i in range(6)} | {"head.w": (3,)}
    found = {f"block.{i}.w": np.zeros((2, 2)) for i in range(1, 6)} | {"head.w": (4,), "extra.a": (1,), "extra.b": (1,)}
    check_keys(expected, {k: np.zeros(v) for k, v in expected.items()}, what="Net")
    with pytest.raises(CheckpointError) as info:
        check_keys(expected, found, what="Net checkpoint x.pth")
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "Net checkpoint x.pth does not match: 1 missing keys (block.0.w), 2 unexpected keys (extra.a, extra.b), "
        "1 shape mismatches (head.w (4,) vs expected (3,))"
    )


def test_check_keys_lists_a_few_and_hints_another_model():
    expected = {f"enc.{i}": (1,) for i in range(10)}
    found = {f"backbone.{i}": (1,) for i in range(7)}
    with pytest.raises(CheckpointError) as info:
        check_keys(expected, found, what="DUSt3R")
    assert str(info.value) == (
        "DUSt3R does not match: 10 missing keys (enc.0, enc.1, enc.2, enc.3, ... 6 more), "
        "7 unexpected keys (backbone.0, backbone.1, backbone.2, backbone.3, ... 3 more); "
        "no key in common: a checkpoint of another model?"
    )


def test_check_finite():
    check_finite({"a": np.ones(3, np.float32), "i": np.arange(3)}, what="x")
    with pytest.raises(CheckpointError, match=r"x: 1 tensors hold NaN or infinite values \(b\)"):
        check_finite({"a": np.ones(3, np.float32), "b": np.array([0.0, np.nan], np.float32)}, what="x")


def test_safetensors_bfloat16_widened(tmp_path):
    from safetensors.torch import save_file as save_torch

    path = tmp_path / "bf16.safetensors"
    save_torch({"w": torch.tensor([1.5, -2.25], dtype=torch.bfloat16)}, path)
    tensors = read_checkpoint(path).tensors
    assert tensors["w"].dtype == np.float32
    np.testing.assert_array_equal(tensors["w"], [1.5, -2.25])
