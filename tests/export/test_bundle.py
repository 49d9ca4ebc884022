"""Bundle files: manifest, checksums, version and config checks."""

import json

import ml_dtypes
import numpy as np
import pytest

from avat3r_jax.export import bundle as bundle_lib
from avat3r_jax.export.bundle import BundleError, load_bundle, save_bundle
from avat3r_jax.export.params import cast_params
from configs.tiny import get_config


@pytest.fixture
def saved(tmp_path, rng):
    params = {"a/kernel": rng.normal(size=(3, 4)).astype(np.float32), "b/0/scale": rng.normal(size=(5,)).astype(np.float32)}
    directory = tmp_path / "bundle"
    save_bundle(directory, get_config(), params, {}, source={"workdir": "run", "step": 7})
    return directory, params


def test_bundle_round_trips_params_config_and_manifest(saved):
    directory, params = saved
    loaded = load_bundle(directory)
    assert loaded.params.keys() == params.keys()
    for name, value in params.items():
        np.testing.assert_array_equal(loaded.params[name], value)
    assert loaded.config == get_config()
    manifest = loaded.manifest
    assert manifest["version"] == bundle_lib.BUNDLE_VERSION and manifest["source"]["step"] == 7
    assert manifest["params"]["shapes"] == {"a/kernel": [3, 4], "b/0/scale": [5]} and manifest["params"]["count"] == 17
    assert set(manifest["versions"]) >= {"avat3r_jax", "jax", "flax"}
    assert set(manifest["files"]) == {"config.json", "params.safetensors"}


def test_bfloat16_bundle_halves_params_and_round_trips(tmp_path, rng):
    params = cast_params({"w": rng.normal(size=(64, 64)).astype(np.float32)}, "bfloat16")
    assert params["w"].dtype == ml_dtypes.bfloat16
    save_bundle(tmp_path, get_config(), params, {}, source={})
    loaded = load_bundle(tmp_path)
    assert loaded.params["w"].dtype == ml_dtypes.bfloat16 and loaded.manifest["params"]["dtype"] == "bfloat16"
    np.testing.assert_array_equal(loaded.params["w"].astype(np.float32), params["w"].astype(np.float32))
    with pytest.raises(ValueError, match=r"float16"):
        cast_params(params, "float16")


def test_corrupt_file_is_refused(saved):
    directory, _ = saved
    data = bytearray((directory / "params.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (directory / "params.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum of params.safetensors does not match"):
        load_bundle(directory)


def test_missing_file_and_missing_manifest_are_refused(saved, tmp_path):
    directory, _ = saved
    (directory / "config.json").unlink()
    with pytest.raises(BundleError, match=r"config.json is missing"):
        load_bundle(directory)
    with pytest.raises(BundleError, match=r"manifest.json is missing"):
        load_bundle(tmp_path / "nowhere")


def test_other_format_version_is_refused(saved):
    directory, _ = saved
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["version"] = bundle_lib.BUNDLE_VERSION + 1
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"format version 2 .* does not match this code's version 1"):
        load_bundle(directory)


def test_bundle_from_another_config_is_refused(saved):
    directory, _ = saved
    other = get_config()
    other.model.width = 32
    other.data.image_height = 64
    with pytest.raises(BundleError, match=r"another config(.|\n)*data.image_height: 32 vs 64(.|\n)*model.width: 64 vs 32"):
        load_bundle(directory, expected_config=other)
    runtime_only = get_config()
    runtime_only.model.attention_impl = "cudnn"
    runtime_only.render.backend = "xla"
    load_bundle(directory, expected_config=runtime_only)  # runtime and render fields may differ


def test_unknown_config_key_is_refused(saved):
    directory, _ = saved
    config = json.loads((directory / "config.json").read_text())
    config["model"]["mystery"] = 1
    (directory / "config.json").write_text(json.dumps(config))
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["config.json"]["sha256"] = bundle_lib.sha256_of(directory / "config.json")
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"'model.mystery' is unknown"):
        load_bundle(directory)


@pytest.mark.parametrize("dropped", ["params.safetensors", "config.json"])
def test_manifest_must_list_every_needed_file(saved, dropped):
    directory, _ = saved
    manifest = json.loads((directory / "manifest.json").read_text())
    del manifest["files"][dropped]  # The file is still there, its checksum no longer is.
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=rf"manifest gives no checksum for \['{dropped}'\]"):
        load_bundle(directory)


def test_manifest_export_file_must_be_listed(saved):
    directory, _ = saved
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["exports"]["forward"] = {"file": "forward.jax_export"}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"no checksum for \['forward.jax_export'\]"):
        load_bundle(directory)


def test_manifest_file_outside_the_bundle_is_refused(saved):
    directory, _ = saved
    (directory.parent / "elsewhere.bin").write_bytes(b"x")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["../elsewhere.bin"] = {"sha256": bundle_lib.sha256_of(directory.parent / "elsewhere.bin")}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"'../elsewhere.bin' is not a path inside the bundle"):
        load_bundle(directory)
