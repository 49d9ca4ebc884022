"""The Grain pipeline: batch contract, view selection, determinism, exact resumption, sharding, errors,
JAX-free workers, and the stored formats it decodes most."""

import dataclasses
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys

import grain
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags

from avat3r_jax import geometry
from avat3r_jax.spec import ModelSpec, batch_shapes, from_stored
from data_pipelines import grain_pipeline, image_codec, resample, schema, storage

# docs/INTERFACES.md, with B, V, T, H, W, h, w, C, D of configs/tiny.py.
B, V, T, H, W, FH, FW, C, D = 2, 2, 2, 32, 32, 8, 8, 6, 8
CONTRACT = {
    "images": (B, V, H, W, 3),
    "masks": (B, V, H, W, 1),
    "posmaps": (B, V, H, W, 3),
    "posmap_valid": (B, V, H, W, 1),
    "features": (B, V, FH, FW, C),
    "K": (B, V, 3, 3),
    "world_to_cam": (B, V, 4, 4),
    "expression": (B, D),
    "input_view_valid": (B, V),
    "target_images": (B, T, H, W, 3),
    "target_masks": (B, T, H, W, 1),
    "target_K": (B, T, 3, 3),
    "target_world_to_cam": (B, T, 4, 4),
    "subject": (B,),
    "frame": (B,),
}


def take(dataset, count):
    iterator = iter(dataset)
    return [next(iterator) for _ in range(count)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.parametrize("split", ["train", "val_subjects", "val_expressions", "test"])
def test_batches_follow_the_interface_contract(tiny_dataset, tiny_config, split):
    (batch,) = take(grain_pipeline.make_dataset(tiny_config.data, tiny_dataset, split=split, num_epochs=1), 1)
    assert {k: v.shape for k, v in batch.items()} == CONTRACT
    expected = batch_shapes(ModelSpec.from_config(tiny_config), B, num_target_views=T)
    assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {k: (e.shape, e.dtype) for k, e in expected.items()}
    assert set(np.unique(batch["posmap_valid"])) <= {0, 1}
    assert 0.05 < from_stored("masks", batch["masks"]).mean() < 0.9


def test_input_posmaps_project_onto_their_pixels_through_the_batch_cameras(tiny_dataset, tiny_config):
    (batch,) = take(grain_pipeline.make_dataset(tiny_config.data, tiny_dataset, split="train", seed=3), 1)
    np.testing.assert_array_equal(batch["posmap_valid"], from_stored("masks", batch["masks"]) > 0.5)  # synthetic: trusted on the head
    assert np.all(batch["posmaps"][batch["posmap_valid"][..., 0] == 0] == 0)
    points = jnp.asarray(batch["posmaps"].reshape(B, V, H * W, 3))
    uv, _ = geometry.project_points(jnp.asarray(batch["K"]), jnp.asarray(batch["world_to_cam"]), points)
    error = np.linalg.norm(np.asarray(uv) - np.asarray(geometry.pixel_grid(H, W)).reshape(1, 1, -1, 2), axis=-1)
    assert error[batch["posmap_valid"].reshape(B, V, -1) > 0].max() < 0.5


def test_crop_and_resize_keep_cameras_consistent(tiny_dataset, tiny_config):
    """At 16x24 the views are centre-cropped and shrunk; projections must still land on their pixels."""
    config = tiny_config.data.copy_and_resolve_references()
    config.image_height, config.image_width = 16, 24
    (batch,) = take(grain_pipeline.make_dataset(config, tiny_dataset, split="train", seed=3), 1)
    assert batch["images"].shape == (B, V, 16, 24, 3) and batch["target_K"].shape == (B, T, 3, 3)
    points = jnp.asarray(batch["posmaps"].reshape(B, V, -1, 3))
    uv, _ = geometry.project_points(jnp.asarray(batch["K"]), jnp.asarray(batch["world_to_cam"]), points)
    error = np.linalg.norm(np.asarray(uv) - np.asarray(geometry.pixel_grid(16, 24)).reshape(1, 1, -1, 2), axis=-1)
    # Nearest-neighbour resampling of the 32x32 maps: each point projects within half a source pixel
    # (per axis) of its output pixel's centre, i.e. within half the output/source scale in output pixels.
    _, _, box_w, box_h = resample.center_crop_box(32, 32, 16, 24)
    bound = 0.5 * np.hypot(24 / box_w, 16 / box_h) + 1e-3
    assert error[batch["posmap_valid"].reshape(B, V, -1) > 0].max() < bound


@pytest.mark.parametrize("different_frame_prob", [0.0, 1.0])
def test_input_views_come_from_other_frames_with_the_configured_probability(tiny_dataset, tiny_config, different_frame_prob):
    config = tiny_config.data.copy_and_resolve_references()
    config.different_frame_prob = different_frame_prob
    source = storage.open_source(tiny_dataset, ("train",))
    example_config = grain_pipeline.ExampleConfig.from_config(config)
    assemble = grain_pipeline.AssembleExample(source, np.array([[0, 0], [1, 1]], np.int32), example_config)
    rng = np.random.default_rng(0)
    for subject, frame in ((0, 0), (1, 1)):
        for _ in range(10):
            inputs, targets = assemble.choose_views(subject, frame, rng)
            assert len(inputs) == V and len(targets) == T
            assert {tuple(source.index[i][:2]) for i in targets} == {(subject, frame)}
            assert len({source.index[i][2] for i in targets}) == T  # distinct target cameras
            assert len({source.index[i][2] for i in inputs}) == V  # distinct input cameras
            input_frames = {int(source.index[i][1]) for i in inputs}
            assert {int(source.index[i][0]) for i in inputs} == {subject}
            assert (frame not in input_frames) if different_frame_prob == 1.0 else (input_frames == {frame})


def test_held_out_splits(tiny_dataset, tiny_config):
    def pairs(split):
        batches = take(grain_pipeline.make_dataset(tiny_config.data, tiny_dataset, split=split, num_epochs=1), 2 if split == "train" else 1)
        return {(int(s), int(f)) for b in batches for s, f in zip(b["subject"], b["frame"], strict=True)}

    train, val_expressions = pairs("train"), pairs("val_expressions")
    assert train == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert val_expressions == {(0, 2), (1, 2)}  # training subjects, held-out last frame
    assert {s for s, _ in pairs("val_subjects")} == {2} and {s for s, _ in pairs("test")} == {3}


def test_expression_is_the_target_frames_code(tiny_dataset, tiny_config):
    source = storage.open_source(tiny_dataset, storage.STORED_SPLITS)
    codes = {(int(s), int(f)): source[i].expression for i, (s, f, _) in enumerate(source.index)}
    for split in ("train", "val_expressions"):
        (batch,) = take(grain_pipeline.make_dataset(tiny_config.data, tiny_dataset, split=split, seed=1), 1)
        for b in range(B):
            np.testing.assert_array_equal(batch["expression"][b], codes[int(batch["subject"][b]), int(batch["frame"][b])])


def test_deterministic_under_a_fixed_seed(tiny_dataset, tiny_config):
    first = take(grain_pipeline.make_dataset(tiny_config.data, tiny_dataset, seed=11), 5)
    again = take(grain_pipeline.make_dataset(tiny_config.data, tiny_dataset, seed=11), 5)
    other = take(grain_pipeline.make_dataset(tiny_config.data, tiny_dataset, seed=12), 5)
    assert_batches_equal(first, again)
    assert any(not np.array_equal(a["images"], b["images"]) for a, b in zip(first, other, strict=True))


def test_exact_continuation_from_saved_iterator_state_through_orbax(tiny_dataset, tiny_config, tmp_path):
    iterator = iter(grain_pipeline.make_dataset(tiny_config.data, tiny_dataset, seed=5))
    for _ in range(3):  # mid-epoch: 2 batches per epoch, so inside the second epoch
        next(iterator)
    manager = ocp.CheckpointManager(tmp_path / "ckpt", options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False))
    manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
    expected = [next(iterator) for _ in range(4)]
    fresh = iter(grain_pipeline.make_dataset(tiny_config.data, tiny_dataset, seed=5))
    manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert_batches_equal([next(fresh) for _ in range(4)], expected)


# A sitecustomize for the workers' PYTHONPATH: `import jax` (and jaxlib) fails, and each process
# that loads it records its pid, its JAX_PLATFORMS and the JAX imports it refused.
JAX_BLOCKER = """
import json, os, sys

_log = os.path.join(os.environ["AVAT3R_JAX_BLOCK_LOG"], f"{os.getpid()}.json")
_seen = {"JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS"), "refused": []}


def _write():
    with open(_log, "w") as f:
        json.dump(_seen, f)


class _RefuseJax:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib"):
            _seen["refused"].append(name)
            _write()
            raise ModuleNotFoundError(f"JAX is blocked in this process: {name}")
        return None


sys.meta_path.insert(0, _RefuseJax())
_write()
"""


def test_workers_without_jax_continue_exactly_and_match_the_threaded_pipeline(tiny_dataset, tiny_config, tmp_path):
    """2 workers that cannot import JAX (and are started with JAX_PLATFORMS=cpu by the pipeline) give the
    batches of the 0-worker pipeline, and resume from a saved state exactly; the parent holds a JAX backend."""
    shim, log = tmp_path / "shim", tmp_path / "log"
    shim.mkdir(), log.mkdir()
    (shim / "sitecustomize.py").write_text(JAX_BLOCKER)
    out = tmp_path / "workers.npz"
    script = pathlib.Path(__file__).with_name("grain_workers_main.py")
    root = pathlib.Path(__file__).parents[2]
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # the pipeline must set it for the workers
    env.update(PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", AVAT3R_JAX_BLOCK_LOG=str(log))
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            f"--data_dir={tiny_dataset}",
            f"--out={out}",
            "--workers=2",
            "--seed=7",
            f"--worker_pythonpath={shim}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parent = json.loads(pathlib.Path(f"{out}.parent.json").read_text())
    assert parent["JAX_PLATFORMS"] is None  # restored in the parent once the workers had started
    workers = {int(p.stem): json.loads(p.read_text()) for p in log.glob("*.json")}
    assert parent["pid"] not in workers and len(workers) >= 2, workers  # 2 workers per iterator, 2 iterators
    for pid, worker in workers.items():
        assert worker["JAX_PLATFORMS"] == "cpu", (pid, worker)
    assert any("jax" in worker["refused"] for worker in workers.values())  # grain tried, and ran without it
    arrays = np.load(out)
    for key in ("subject", "frame", "images", "target_images"):
        np.testing.assert_array_equal(arrays[f"resumed_{key}"], arrays[f"run_{key}"][3:], err_msg=key)
    threaded = take(grain_pipeline.make_dataset(tiny_config.data, tiny_dataset, split="train", seed=7), 7)
    for key in ("subject", "frame", "images", "target_images"):
        np.testing.assert_array_equal(arrays[f"run_{key}"], np.stack([b[key] for b in threaded]), err_msg=key)


def test_what_workers_import_initialises_no_jax_backend():
    """Grain workers re-import the main program: importing the programs that start workers (and the data
    path they run) must not initialise a JAX backend, which on an accelerator host opens the device."""
    modules = ["launch.train", "launch.train_data", "launch.bench_data", "data_pipelines.grain_pipeline", "configs.paper"]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules)
    code += "from jax._src import xla_bridge\nprint(sorted(xla_bridge._backends))"
    root = pathlib.Path(__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[-2] == "[]", result.stdout


@pytest.mark.parametrize(("shard_count", "shuffle"), [(2, False), (2, True), (3, True)])
def test_process_shards_partition_the_examples(tiny_dataset, tiny_config, shard_count, shuffle):
    config = tiny_config.data.copy_and_resolve_references()
    config.batch_size = shard_count  # one example per process per step
    seen = []
    for shard in range(shard_count):
        dataset = grain_pipeline.make_dataset(
            config, tiny_dataset, split="train", seed=2, shard_index=shard, shard_count=shard_count, num_epochs=1, shuffle=shuffle
        )
        seen.append([(int(b["subject"][0]), int(b["frame"][0])) for b in dataset])
    everything = [(s, f) for s in (0, 1) for f in (0, 1)]  # the 4 training examples
    flat = [pair for shard in seen for pair in shard]
    assert len(flat) == len(set(flat))  # no overlap between processes
    assert len({len(s) for s in seen}) == 1  # equal batch counts keep multi-host steps in lockstep
    assert set(flat) <= set(everything) and len(flat) == len(everything) // shard_count * shard_count


def test_infinite_training_shards_cover_all_examples(tiny_dataset, tiny_config):
    config = tiny_config.data.copy_and_resolve_references()
    config.batch_size = 3
    seen = set()
    for shard in range(3):
        for b in take(grain_pipeline.make_dataset(config, tiny_dataset, seed=2, shard_index=shard, shard_count=3), 4):
            seen.add((int(b["subject"][0]), int(b["frame"][0])))
    assert seen == {(s, f) for s in (0, 1) for f in (0, 1)}


def test_configuration_errors_are_clear(tiny_dataset, tiny_config):
    with pytest.raises(ValueError, match="not divisible by the 3 data-loading processes"):
        grain_pipeline.make_dataset(tiny_config.data, tiny_dataset, shard_count=3)
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        grain_pipeline.make_dataset(tiny_config.data, tiny_dataset, split="validation")
    config = tiny_config.data.copy_and_resolve_references()
    config.expression_dim = 5
    with pytest.raises(ValueError, match=r"expression codes of size 8; data\.expression_dim is 5"):
        grain_pipeline.make_dataset(config, tiny_dataset)
    config = tiny_config.data.copy_and_resolve_references()
    config.num_workers = 2
    assert not flags.FLAGS.is_parsed()  # pytest does not parse absl flags
    with pytest.raises(RuntimeError, match=r"absl\.app\.run"):
        grain_pipeline.make_dataset(config, tiny_dataset)


def test_a_truncated_record_file_fails_with_the_file_name(tiny_dataset, tiny_config, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset, broken)
    path = broken / "train-00000.array_record"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(Exception, match=r"train-00000\.array_record .*truncated"):
        take(grain_pipeline.make_dataset(tiny_config.data, broken, seed=0), 1)


# Stored formats the pipeline decodes most: raw uint8 images, per-field CRCs (targets skip the maps).


def test_raw_images_decode_to_the_pixels_and_match_png():
    rng = np.random.default_rng(0)
    rgb, grey = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8), rng.integers(0, 256, (7, 5), dtype=np.uint8)
    assert schema.image_format(image_codec.encode_raw(rgb)) == "raw"
    np.testing.assert_array_equal(image_codec.decode_rgb(image_codec.encode_raw(rgb)), rgb)
    np.testing.assert_array_equal(image_codec.decode_grey(image_codec.encode_raw(grey)), grey)
    np.testing.assert_array_equal(
        image_codec.decode_rgb(image_codec.encode_raw(grey)), image_codec.decode_rgb(image_codec.encode_png(grey))
    )
    np.testing.assert_array_equal(
        image_codec.decode_grey(image_codec.encode_raw(rgb)), image_codec.decode_grey(image_codec.encode_png(rgb))
    )
    assert image_codec.image_size(image_codec.encode_raw(rgb)) == (7, 5)
    with pytest.raises(ValueError, match=r"cannot decode image \(123 bytes\): raw image header says 7x5x3, which needs 125 bytes"):
        image_codec.decode_rgb(image_codec.encode_raw(rgb)[:-2])


def _record(rng, **changes):
    record = schema.ViewRecord(
        subject=1,
        frame=2,
        camera=3,
        image=image_codec.encode_raw(rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)),
        mask=image_codec.encode_raw(rng.integers(0, 256, (6, 4), dtype=np.uint8)),
        K=rng.normal(size=(3, 3)).astype(np.float32),
        world_to_cam=rng.normal(size=(4, 4)).astype(np.float32),
        expression=rng.normal(size=5).astype(np.float32),
        posmap=rng.normal(size=(3, 2, 3)).astype(np.float16),
        posmap_confidence=rng.random((3, 2)).astype(np.float16),
        features=rng.normal(size=(3, 2, 4)).astype(np.float16),
    )
    return dataclasses.replace(record, **changes)


def _flip_byte_inside(data: bytes, needle: bytes) -> bytes:
    at = data.rindex(needle) + len(needle) // 2
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def test_records_without_maps_check_only_the_fields_they_decode():
    rng = np.random.default_rng(1)
    record = _record(rng)
    data = schema.serialize(record)
    light = schema.deserialize(data, with_maps=False)
    assert all(getattr(light, name) is None for name in schema.MAP_FIELDS)
    assert light.image == record.image and light.mask == record.mask
    np.testing.assert_array_equal(light.K, record.K)
    bad_features = _flip_byte_inside(data, record.features.tobytes())
    schema.deserialize(bad_features, with_maps=False)  # the skipped bytes are not read
    with pytest.raises(schema.CorruptRecordError, match="CRC-32"):
        schema.deserialize(bad_features)
    with pytest.raises(schema.CorruptRecordError, match="field 'image' fails its CRC-32"):
        schema.deserialize(_flip_byte_inside(data, record.image), with_maps=False)


def test_records_written_before_per_field_crcs_stay_readable_and_checked():
    rng = np.random.default_rng(2)
    record = _record(rng, image=image_codec.encode_png(rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)))
    data = schema.serialize(record)
    prefix = len(b"AV3RVIEW") + 4
    (length,) = struct.unpack_from("<I", data, 8)
    header = json.loads(data[prefix : prefix + length])
    del header["field_crc32"]
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    old = b"AV3RVIEW" + struct.pack("<I", len(header_bytes)) + header_bytes + data[prefix + length :]
    for with_maps in (True, False):
        assert schema.deserialize(old, with_maps=with_maps).image == record.image
        with pytest.raises(schema.CorruptRecordError, match="payload fails its CRC-32"):
            schema.deserialize(_flip_byte_inside(old, record.features.tobytes()), with_maps=with_maps)


def test_float16_trust_from_bits_matches_the_float_comparisons(rng):
    bits = rng.integers(0, 2**16, size=(64, 64, 4), dtype=np.uint16)  # every kind of float16: subnormal, inf, NaN, negative
    values = bits.view(np.float16)
    points, confidence = values[..., :3], np.ascontiguousarray(values[..., 3])
    confidence[0, :6] = np.array([0.5, np.nextafter(np.float16(0.5), np.float16(0)), np.inf, -np.inf, -0.0, 1.0], np.float16)
    wide = points.astype(np.float32)
    np.testing.assert_array_equal(grain_pipeline.float16_trusted(points, None), np.isfinite(wide).all(-1))
    expected = np.isfinite(wide).all(-1) & (confidence.astype(np.float32) >= 0.5)
    np.testing.assert_array_equal(grain_pipeline.float16_trusted(points, confidence), expected)
