"""Input directories stay contained (no '..', absolute or linked-out paths; one message whether or not
the target exists), mostly invalid position maps are warned about, and output folders are not mixed."""

import json
import logging

import numpy as np
import pytest

from avat3r_jax.export.inputs import InputError, read_inputs, write_inputs
from avat3r_jax.export.output_dir import OutputDirError, prepare_output_dir
from avat3r_jax.export.paths import contained
from avat3r_jax.model import ModelSettings
from configs.tiny import get_config
from tests.export.examples import random_example

SETTINGS = ModelSettings.from_config(get_config())
KEYS = ("image", "mask", "posmap", "posmap_valid", "features")


@pytest.fixture
def layout(tmp_path, rng):
    """``tmp_path/inputs`` (a valid input directory) next to ``tmp_path/outside`` (files a hostile
    inputs.json might name)."""
    inputs = write_inputs(tmp_path / "inputs", random_example(rng, SETTINGS, 2))
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("view0.png", "view0_mask.png", "view0_posmap.npy", "view0_posmap_valid.npy", "view0_features.npy"):
        (outside / name).write_bytes((inputs / name).read_bytes())
    return inputs, outside


def point_view0(inputs, key, name):
    path = inputs / "inputs.json"
    spec = json.loads(path.read_text())
    spec["views"][0][key] = name
    path.write_text(json.dumps(spec))


def refusal(inputs):
    with pytest.raises(InputError) as raised:
        read_inputs(inputs, SETTINGS)
    return str(raised.value)


@pytest.mark.parametrize("key", KEYS)
def test_traversal_and_absolute_paths_are_refused_alike_whether_or_not_the_target_exists(layout, key):
    inputs, outside = layout
    file = {"image": "view0.png", "mask": "view0_mask.png"}.get(key, f"view0_{key}.npy")
    messages = []
    for name in (f"../outside/{file}", "../outside/nothing_here.npy", str(outside / file), str(outside / "nothing_here.npy")):
        point_view0(inputs, key, name)
        message = refusal(inputs)
        assert "is not a path inside the input directory" in message, message
        messages.append(message.replace(name, "NAME"))
    assert len(set(messages)) == 1, messages  # Nothing tells an existing target from a missing one.


def test_symlinks_leading_out_are_refused_links_inside_are_followed(layout):
    inputs, outside = layout
    (inputs / "out_link.png").symlink_to(outside / "view0.png")
    (inputs / "dangling_out.png").symlink_to(outside / "nothing_here.png")
    (inputs / "linked_dir").symlink_to(outside, target_is_directory=True)
    for name in ("out_link.png", "dangling_out.png", "linked_dir/view0.png"):
        point_view0(inputs, "image", name)
        assert "is not a path inside the input directory" in refusal(inputs)
    (inputs / "in_link.png").symlink_to(inputs / "view0.png")
    point_view0(inputs, "image", "in_link.png")
    assert read_inputs(inputs, SETTINGS).num_views == 2


def test_inputs_json_linking_out_is_refused(tmp_path):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "elsewhere.json").write_text("{}")
    (tmp_path / "inputs" / "inputs.json").symlink_to(tmp_path / "elsewhere.json")
    assert "'inputs.json' is not a path inside the input directory" in refusal(tmp_path / "inputs")


@pytest.mark.parametrize("name", ["", "a/../b.png", "..", "x\\..\\y.png", "C:\\x.png", "a\x00.png", 3, None])
def test_odd_names_are_not_contained(tmp_path, name):
    assert contained(tmp_path, name) is None


def test_plain_relative_names_are_contained(tmp_path):
    assert contained(tmp_path, "sub/view0.png") == (tmp_path / "sub" / "view0.png").resolve()
    assert contained(tmp_path, "./view0.png") == (tmp_path / "view0.png").resolve()


@pytest.mark.parametrize(
    "valid_fraction, expected", [(0.0, "no pixel of the position map is valid"), (0.25, "only 25% of the position map")]
)
def test_mostly_invalid_position_maps_are_warned_about(tmp_path, rng, caplog, valid_fraction, expected):
    example = random_example(rng, SETTINGS, 2)
    height, width = example["posmaps"].shape[1:3]
    valid_rows = round(valid_fraction * height * width) // width
    example["posmaps"][1] = np.nan
    example["posmaps"][1, :valid_rows] = 0.1  # The first rows finite, the rest NaN.
    example["posmap_valid"][:] = 1.0
    inputs = write_inputs(tmp_path / "inputs", example)
    with caplog.at_level(logging.WARNING):
        read_inputs(inputs, SETTINGS)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("view 1 (view1.png)") and expected in warnings[0], warnings


def test_fully_valid_position_maps_are_not_warned_about(tmp_path, rng, caplog):
    example = random_example(rng, SETTINGS, 2)
    example["posmap_valid"][:] = 1.0
    with caplog.at_level(logging.WARNING):
        read_inputs(write_inputs(tmp_path / "inputs", example), SETTINGS)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


OUTPUTS = ("avatar.ply", "orbit", "animation.mp4", "summary.json")


def test_output_folder_empty_or_new_is_used(tmp_path):
    assert prepare_output_dir(tmp_path / "new", OUTPUTS, overwrite=False).is_dir()
    (tmp_path / "empty").mkdir()
    assert prepare_output_dir(tmp_path / "empty", OUTPUTS, overwrite=False) == tmp_path / "empty"


def test_non_empty_output_folder_is_refused_then_overwrite_clears_only_our_outputs(tmp_path):
    out = tmp_path / "out"
    (out / "orbit").mkdir(parents=True)
    for index in range(24):
        (out / "orbit" / f"orbit_{index:03d}.png").write_bytes(b"old")
    (out / "avatar.ply").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=r"is not empty; pass --overwrite"):
        prepare_output_dir(out, OUTPUTS, overwrite=False)
    assert len(list((out / "orbit").iterdir())) == 24  # Refusing touched nothing.
    prepare_output_dir(out, OUTPUTS, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_output_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="is a file, not a folder"):
        prepare_output_dir(tmp_path / "file", OUTPUTS, overwrite=True)
