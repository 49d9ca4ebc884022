"""DUSt3R in Flax against the released PyTorch code (mini-dust3r at random init, committed fixtures), and its loader.

Fixtures: tests/frontend/fixtures/make_dust3r_fixtures.py (run in a reference venv) wrote the tiny
model's random weights, three portrait views and the reference's outputs on all 6 ordered pairs, and
the released checkpoint's key/shape table built on torch's meta device.
"""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from avat3r_jax.frontend.checkpoints import CheckpointError, check_keys
from avat3r_jax.frontend.dust3r import RELEASED_512_DPT_ARGS, Dust3r, Dust3rSettings, predict_pairs
from avat3r_jax.frontend.dust3r_checkpoint import load_dust3r, torch_key_shapes
from avat3r_jax.frontend.pairs import ordered_pairs
from avat3r_jax.sharding import make_mesh

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
WEIGHTS = FIXTURES / "dust3r_tiny.safetensors"
OUTPUTS = ("pts_i", "conf_i", "pts_j", "conf_j")
# pts3d and confidence agree with the reference to 1e-4, relative to the value's size (|a - b| <= 1e-4 (1 + |b|)).
TOLERANCE = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def reference() -> dict:
    return dict(np.load(FIXTURES / "dust3r_tiny_io.npz"))


@pytest.fixture(scope="module")
def tiny_model() -> Dust3r:
    return load_dust3r(WEIGHTS, settings=Dust3rSettings.tiny())


def test_parity_with_released_code(tiny_model, reference):
    out = predict_pairs(tiny_model, reference["images"], ordered_pairs(3))
    assert out.pairs == ordered_pairs(3)
    for name in OUTPUTS:
        np.testing.assert_allclose(np.asarray(getattr(out, name)), reference[name], **TOLERANCE, err_msg=name)
    assert float(np.abs(reference["pts_j"]).max()) > 1.0 and float(reference["conf_i"].min()) >= 1.0  # not a degenerate output


def test_sharded_over_eight_devices_matches(tiny_model, reference):
    mesh = make_mesh(dict(data=2, fsdp=2, tensor=2))
    sharded = load_dust3r(WEIGHTS, settings=Dust3rSettings.tiny(), mesh=mesh)
    qkv = sharded.enc_blocks[0].attn.qkv.kernel[...]
    assert qkv.sharding.spec == jax.sharding.PartitionSpec("fsdp", None, "tensor", None)
    with jax.set_mesh(mesh):
        out = predict_pairs(sharded, reference["images"], ordered_pairs(3))
    for name in OUTPUTS:
        np.testing.assert_allclose(np.asarray(getattr(out, name)), reference[name], **TOLERANCE, err_msg=name)


def test_bfloat16_compute_stays_close(reference):
    model = load_dust3r(WEIGHTS, settings=Dust3rSettings.tiny(), dtype=jnp.bfloat16)
    assert model.enc_blocks[0].mlp.fc1.kernel[...].dtype == jnp.float32  # parameters stay float32
    out = predict_pairs(model, reference["images"], ((0, 1), (1, 0)))
    points, expected = np.asarray(out.pts_i), reference["pts_i"][[0, 2]]  # ordered_pairs(3) rows of (0, 1) and (1, 0)
    assert out.pts_i.dtype == jnp.float32
    relative = np.linalg.norm(points - expected) / np.linalg.norm(expected)
    assert 1e-4 < relative < 0.05, relative  # bf16 really ran, and stayed close


def test_pth_loads_the_same_weights(tmp_path, tiny_model):
    torch = pytest.importorskip("torch")
    import argparse

    tensors = load_file(WEIGHTS)
    args = argparse.Namespace(model="AsymmetricCroCo3DStereo(pos_embed='RoPE100', head_type='dpt', enc_embed_dim=24)")
    path = tmp_path / "tiny.pth"
    torch.save({"model": {k: torch.from_numpy(v.astype(np.float32)) for k, v in tensors.items()}, "args": args}, path)
    model = load_dust3r(path, settings=Dust3rSettings.tiny())
    ours, theirs = nnx.state(model, nnx.Param), nnx.state(tiny_model, nnx.Param)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(a, b)


def test_released_key_table_is_consumed_completely():
    table = json.loads((FIXTURES / "dust3r_512_dpt_keys.json").read_text())
    assert table["args"] == RELEASED_512_DPT_ARGS
    settings = Dust3rSettings.from_model_args(table["args"])
    assert settings == Dust3rSettings.released_512_dpt()
    model = nnx.eval_shape(lambda: Dust3r(settings, rngs=nnx.Rngs(0)))
    expected = torch_key_shapes(model)
    assert len(expected) == table["num_keys"] == 1009
    check_keys(expected, {key: tuple(shape) for key, shape in table["shapes"].items()}, what="released table")
    unique = sum(int(np.prod(p.shape)) for _, p in nnx.iter_graph(model) if isinstance(p, nnx.Param))
    assert unique == 571_170_440  # 571.2M: the state dict's count less the 4 x 2 aliased layer_rn weights and mask_token
    assert table["num_parameters"] - unique == sum(
        int(np.prod(shape)) for key, shape in table["shapes"].items() if "_rn.weight" in key and "layer_rn." not in key
    ) + int(np.prod(table["shapes"]["mask_token"]))


def test_settings_from_args_reject_other_models():
    with pytest.raises(
        CheckpointError, match=r"args.model builds 'CroCoNet', not AsymmetricCroCo3DStereo: a checkpoint of another model\?"
    ):
        Dust3rSettings.from_model_args("CroCoNet(enc_embed_dim=768)")
    with pytest.raises(CheckpointError, match=r"head_type='linear'; only head_type='dpt' is supported"):
        Dust3rSettings.from_model_args("AsymmetricCroCo3DStereo(pos_embed='RoPE100', img_size=(224, 224))")
    with pytest.raises(CheckpointError, match=r"pos_embed='cosine'; only RoPE models"):
        Dust3rSettings.from_model_args("AsymmetricCroCo3DStereo(head_type='dpt')")


def test_checkpoint_of_another_model(tmp_path):
    path = tmp_path / "sapiens.safetensors"
    save_file(
        {
            "backbone.layers.0.ln1.weight": np.ones(8, np.float32),
            "backbone.patch_embed.projection.weight": np.ones((8, 3, 16, 16), np.float32),
        },
        path,
    )
    with pytest.raises(CheckpointError) as info:
        load_dust3r(path, settings=Dust3rSettings.tiny())
    message = str(info.value)
    tiny_keys = len(torch_key_shapes(nnx.eval_shape(lambda: Dust3r(Dust3rSettings.tiny(), rngs=nnx.Rngs(0)))))
    assert message.startswith(f"DUSt3R checkpoint {path} does not match: {tiny_keys} missing keys (")
    assert message.endswith(
        "2 unexpected keys (backbone.layers.0.ln1.weight, backbone.patch_embed.projection.weight); "
        "no key in common: a checkpoint of another model?"
    )


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "dust3r.safetensors"
    data = WEIGHTS.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"dust3r.safetensors: not a readable safetensors file \(truncated or corrupt\?\)"):
        load_dust3r(path, settings=Dust3rSettings.tiny())


def test_missing_key_wrong_shape_and_nan_weights(tmp_path):
    tensors = load_file(WEIGHTS)
    dropped = dict(tensors)
    del dropped["dec_blocks2.3.cross_attn.projv.bias"]
    save_file(dropped, tmp_path / "dropped.safetensors")
    with pytest.raises(CheckpointError, match=r"does not match: 1 missing keys \(dec_blocks2.3.cross_attn.projv.bias\)$"):
        load_dust3r(tmp_path / "dropped.safetensors", settings=Dust3rSettings.tiny())
    with pytest.raises(
        CheckpointError,
        match=r"does not match: 203 shape mismatches \(dec_blocks.0.attn.proj.bias \(16,\) vs expected \(32,\), .*, ... 199 more\)$",
    ):
        load_dust3r(WEIGHTS, settings=Dust3rSettings.tiny(dec_width=32))
    broken = dict(tensors, **{"enc_norm.weight": np.full(24, np.nan, np.float32)})
    save_file(broken, tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match=r"1 tensors hold NaN or infinite values \(enc_norm.weight\)"):
        load_dust3r(tmp_path / "nan.safetensors", settings=Dust3rSettings.tiny())


def test_settings_from_a_checkpoint_without_args(tmp_path):
    path = tmp_path / "bare.safetensors"
    save_file(load_file(WEIGHTS), path)
    with pytest.raises(
        CheckpointError, match=r"no args.model \(model constructor string\) to read the settings from; pass settings= explicitly"
    ):
        load_dust3r(path)


@pytest.mark.parametrize(
    "shape, pairs, message",
    [
        ((1, 48, 32, 3), ((0, 0),), r"DUSt3R needs at least 2 images, got 1"),
        ((2, 50, 32, 3), ((0, 1),), r"DUSt3R needs image sides that are multiples of 16, got 50x32 \(H x W\)"),
        ((2, 48, 32, 4), ((0, 1),), r"DUSt3R needs images \[V, H, W, 3\], got shape \(2, 48, 32, 4\)"),
        ((2, 48, 32, 3), ((0, 2), (1, 1)), r"pairs \[\(0, 2\), \(1, 1\)\] are not two different views among the 2 images \(indices 0..1\)"),
    ],
)
def test_bad_images_and_pairs(tiny_model, shape, pairs, message):
    with pytest.raises(ValueError, match=message):
        predict_pairs(tiny_model, np.zeros(shape, np.float32), pairs)


def test_integer_images_refused(tiny_model):
    with pytest.raises(ValueError, match=r"DUSt3R needs float images in \[0, 1\], got dtype uint8"):
        predict_pairs(tiny_model, np.zeros((2, 48, 32, 3), np.uint8), ((0, 1),))


def test_settings_validate():
    with pytest.raises(ValueError, match=r"bad Dust3rSettings: dec_width 16 is not divisible by dec_heads 3"):
        Dust3r(dataclasses.replace(Dust3rSettings.tiny(), dec_heads=3), rngs=nnx.Rngs(0))
