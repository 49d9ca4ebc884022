"""Sapiens backbone: parity with the released mmpretrain code, released key tables, checkpoint errors."""

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from avat3r_jax.frontend.checkpoints import CheckpointError
from avat3r_jax.frontend.sapiens import RELEASED, Sapiens, SapiensSettings, bicubic_matrix, extract_features, forward_flops
from avat3r_jax.frontend.sapiens_checkpoint import abstract_sapiens, convert_state_dict, infer_settings, load_sapiens, state_dict_shapes
from avat3r_jax.sharding import batch_sharding, make_mesh, parameter_shardings

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
WEIGHTS = FIXTURES / "sapiens_tiny.safetensors"


@pytest.fixture(scope="module")
def io() -> dict:
    return dict(np.load(FIXTURES / "sapiens_tiny_io.npz"))


@pytest.fixture(scope="module")
def tiny() -> Sapiens:
    return load_sapiens(WEIGHTS, settings=SapiensSettings.tiny())


@pytest.mark.parametrize("tag", ["a", "b"])
def test_parity_with_released_backbone(tiny, io, tag):
    # a: 80x48 (position grid 4x4 -> 5x3, bicubic up and down); b: 70x40, zero-padded to 80x48 first.
    features = np.asarray(extract_features(tiny, io[f"images_{tag}"]))
    reference = io[f"features_{tag}"]
    assert features.shape == reference.shape
    np.testing.assert_allclose(features, reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("multiple", [3, 16])
def test_padded_attention_heads_change_nothing(io, multiple):
    # head dim 8 padded to 9 / 16 for the attention kernel (as Sapiens-2B's 60 -> 64 for cuDNN).
    model = load_sapiens(WEIGHTS, settings=SapiensSettings.tiny(attention_head_multiple=multiple))
    np.testing.assert_allclose(np.asarray(extract_features(model, io["images_a"])), io["features_a"], atol=1e-4, rtol=0)


def test_bfloat16_compute_close_to_float32(io):
    model = load_sapiens(WEIGHTS, settings=SapiensSettings.tiny(), dtype="bfloat16")
    assert jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype == jnp.float32  # parameters stay float32
    features = np.asarray(extract_features(model, io["images_a"]))
    reference = io["features_a"]
    assert np.linalg.norm(features - reference) / np.linalg.norm(reference) < 0.03


@pytest.mark.parametrize(("source", "target"), [(4, 5), (4, 3), (64, 48), (64, 64), (3, 7), (1, 2)])
def test_bicubic_matrix_matches_torch(source, target):
    torch = pytest.importorskip("torch")
    values = np.random.default_rng(source * 10 + target).standard_normal((2, source))
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(values)[None, :, :, None], size=(target, 1), mode="bicubic", align_corners=False
    )[0, :, :, 0].numpy()
    np.testing.assert_allclose(values @ bicubic_matrix(source, target).T, expected, atol=1e-12)


def _released_tables() -> dict:
    return json.loads((FIXTURES / "sapiens_keys.json").read_text())["sizes"]


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_key_table_consumed_by_loader(name):
    table = {key: tuple(shape) for key, shape in _released_tables()[name]["shapes"].items()}
    settings = SapiensSettings.released(name)
    assert state_dict_shapes(settings) == table
    assert infer_settings(table) == settings
    inputs = {key: jax.ShapeDtypeStruct(shape, jnp.float32) for key, shape in table.items()}
    converted = jax.eval_shape(lambda tensors: convert_state_dict(tensors, settings), inputs)
    expected = nnx.to_pure_dict(nnx.state(abstract_sapiens(settings), nnx.Param))
    assert jax.tree.structure(converted) == jax.tree.structure(expected)
    assert jax.tree.map(lambda a: a.shape, converted) == jax.tree.map(lambda a: a.shape, expected)
    assert sum(np.prod(a.shape) for a in jax.tree.leaves(expected)) == _released_tables()[name]["num_parameters"]


def test_parameters_carry_logical_axes():
    mesh = make_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2}))
    state = nnx.state(abstract_sapiens(SapiensSettings.tiny()), nnx.Param)
    specs = {jax.tree_util.keystr(path): leaf.spec for path, leaf in jax.tree_util.tree_leaves_with_path(parameter_shardings(state, mesh))}
    assert specs["['blocks']['mlp']['up']['kernel'].value"] == jax.sharding.PartitionSpec(None, "fsdp", "tensor")


def _tensors() -> dict[str, np.ndarray]:
    return load_file(WEIGHTS)


def _save(tmp_path, tensors, name="model.safetensors") -> pathlib.Path:
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


def test_mmengine_pth_container_skips_decoder(tmp_path, tiny, io):
    torch = pytest.importorskip("torch")
    state = {key: torch.from_numpy(value.astype(np.float32)) for key, value in _tensors().items()}
    state["neck.decoder_embed.weight"] = torch.zeros(4, 4)  # the MAE decoder: not the backbone, skipped
    path = tmp_path / "sapiens_tiny.pth"
    torch.save({"meta": {"epoch": 3}, "state_dict": state}, path)
    model = load_sapiens(path, settings=SapiensSettings.tiny())
    np.testing.assert_array_equal(np.asarray(extract_features(model, io["images_a"])), np.asarray(extract_features(tiny, io["images_a"])))


def test_bare_backbone_state_dicts(tmp_path, tiny, io):
    torch = pytest.importorskip("torch")
    bare = {key.removeprefix("backbone."): value for key, value in _tensors().items()}
    path = tmp_path / "sapiens_tiny_clean.pth"
    torch.save({key: torch.from_numpy(value.astype(np.float32)) for key, value in bare.items()}, path)
    expected = np.asarray(extract_features(tiny, io["images_b"]))
    for source in (path, _save(tmp_path, bare)):
        model = load_sapiens(source, settings=SapiensSettings.tiny())
        np.testing.assert_array_equal(np.asarray(extract_features(model, io["images_b"])), expected)


def test_wrong_model_pth_is_one_line(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "dust3r.pth"
    torch.save({"args": {"model": "AsymmetricCroCo3DStereo"}, "model": {"enc_blocks.0.attn.qkv.weight": torch.zeros(6, 2)}}, path)
    with pytest.raises(CheckpointError, match=r"no 'state_dict' entry \(top-level keys: args, model\); a checkpoint of another model"):
        load_sapiens(path)


def test_wrong_model_is_one_line(tmp_path):
    path = _save(tmp_path, {"enc_blocks.0.attn.qkv.weight": np.zeros((6, 2), np.float32)})
    with pytest.raises(CheckpointError, match=r"no backbone.cls_token / backbone.pos_embed: not a Sapiens checkpoint") as error:
        load_sapiens(path)
    assert "\n" not in str(error.value)


def test_wrong_size_names_the_shapes():
    with pytest.raises(
        CheckpointError, match=r"Sapiens-0.3b .*shape mismatches \(backbone.cls_token \(1, 1, 32\) vs expected \(1, 1, 1024\)"
    ):
        load_sapiens(WEIGHTS, name="0.3b")
    with pytest.raises(CheckpointError, match=r"width 32 x depth 2 is no released Sapiens size"):
        load_sapiens(WEIGHTS)


def test_missing_and_unknown_keys_named(tmp_path):
    tensors = _tensors()
    del tensors["backbone.layers.1.attn.qkv.bias"]
    tensors["backbone.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(
        CheckpointError, match=r"1 missing keys \(backbone.layers.1.attn.qkv.bias\), 1 unexpected keys \(backbone.extra.weight\)"
    ):
        load_sapiens(_save(tmp_path, tensors), settings=SapiensSettings.tiny())


def test_truncated_checkpoint_is_one_line(tmp_path):
    data = WEIGHTS.read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=r"truncated.safetensors: not a readable safetensors file \(truncated or corrupt\?\)"
    ) as error:
        load_sapiens(path, settings=SapiensSettings.tiny())
    assert "\n" not in str(error.value)


def test_truncated_pth_is_one_line(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "sapiens.pth"
    torch.save({"state_dict": {key: torch.from_numpy(value.astype(np.float32)) for key, value in _tensors().items()}}, path)
    path.write_bytes(path.read_bytes()[:50_000])
    with pytest.raises(CheckpointError, match=r"sapiens.pth: not a readable PyTorch checkpoint \(truncated or corrupt\?\)") as error:
        load_sapiens(path, settings=SapiensSettings.tiny())
    assert "\n" not in str(error.value)


def test_nan_weights_and_torchscript_refused(tmp_path):
    tensors = _tensors()
    tensors["backbone.ln1.bias"] = np.full_like(tensors["backbone.ln1.bias"], np.nan)
    with pytest.raises(CheckpointError, match=r"1 tensors hold NaN or infinite values \(backbone.ln1.bias\)"):
        load_sapiens(_save(tmp_path, tensors), settings=SapiensSettings.tiny())
    (tmp_path / "sapiens_2b_torchscript.pt2").write_bytes(b"PK")
    with pytest.raises(CheckpointError, match=r"TorchScript/exported program, not a state dict"):
        load_sapiens(tmp_path / "sapiens_2b_torchscript.pt2")


def test_bad_images_rejected(tiny):
    with pytest.raises(ValueError, match=r"expects images \[B, H, W, 3\], got shape \(8, 8, 3\)"):
        extract_features(tiny, np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        extract_features(tiny, np.full((1, 16, 16, 3), np.nan, np.float32))


def test_forward_flops_against_xla():
    # One block (XLA counts a scanned body once), position grid = input grid (no resize einsum):
    # XLA's count adds the elementwise work (norms, GELU, softmax) that the analytic count leaves out.
    settings = SapiensSettings(width=512, depth=1, num_heads=8, mlp_width=2048, pretrain_grid=(4, 6))
    graphdef, state = nnx.split(abstract_sapiens(settings))
    images = jax.ShapeDtypeStruct((1, 64, 96, 3), jnp.float32)
    xla = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)).lower(state, images).cost_analysis()["flops"]
    assert 1.0 <= xla / forward_flops(settings, 64, 96) < 1.03
    assert forward_flops(SapiensSettings.released("2b"), 1024, 768) == pytest.approx(16.54e12, rel=1e-3)


def test_data_parallel_over_eight_devices_matches_single_calls(tiny, io):
    # Same per-device batch (1) -> bitwise the same features; a larger per-device batch may round differently.
    images = np.concatenate([io["images_a"]] * 4)  # [8, 80, 48, 3]
    single = np.concatenate([np.asarray(extract_features(tiny, images[i : i + 1])) for i in range(8)])
    mesh = make_mesh(ml_collections.ConfigDict({"data": 8, "fsdp": 1, "tensor": 1}))
    with jax.set_mesh(mesh):
        sharded = extract_features(tiny, jax.device_put(images, batch_sharding(mesh, 4)))
    assert sharded.sharding.spec == jax.sharding.PartitionSpec("data")
    np.testing.assert_array_equal(np.asarray(sharded), single)
