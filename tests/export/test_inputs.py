"""The input directory reader: round trip with the writer and a clear error for each kind of bad input."""

import json

import numpy as np
import pytest

from avat3r_jax.export.inputs import InputError, read_inputs, write_inputs
from avat3r_jax.model import ModelSettings
from configs.tiny import get_config
from tests.export.examples import random_example

SETTINGS = ModelSettings.from_config(get_config())  # 32x32 images, 2 views, 6 feature channels, 8-d codes


def example(rng, views: int = 2) -> dict[str, np.ndarray]:
    return random_example(rng, SETTINGS, views)


def edit_spec(directory, change):
    path = directory / "inputs.json"
    spec = json.loads(path.read_text())
    change(spec)
    path.write_text(json.dumps(spec))


def test_written_inputs_read_back(tmp_path, rng):
    source = example(rng)
    keyframes = rng.normal(size=(3, 8))
    inputs = read_inputs(write_inputs(tmp_path, source, keyframes), SETTINGS)
    batch = inputs.batch
    assert inputs.num_views == 2 and inputs.names == ["view0.png", "view1.png"]
    np.testing.assert_allclose(batch["images"][0], source["images"], atol=0.5 / 255 + 1e-6)  # 8-bit PNG
    np.testing.assert_array_equal(batch["masks"][0], source["masks"])
    for key in ("K", "world_to_cam", "posmap_valid", "features"):
        np.testing.assert_allclose(batch[key][0], source[key], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(batch["posmaps"][0], source["posmaps"] * source["posmap_valid"], rtol=1e-6)
    np.testing.assert_allclose(inputs.keyframes, keyframes, rtol=1e-6)


def test_single_view_and_per_view_expressions(tmp_path, rng):
    write_inputs(tmp_path, {k: v[:1] for k, v in example(rng).items()})
    edit_spec(tmp_path, lambda spec: spec["views"][0].update(expression=[0.5] * 8))
    inputs = read_inputs(tmp_path, SETTINGS)
    assert inputs.batch["images"].shape == (1, 1, 32, 32, 3) and inputs.batch["features"].shape == (1, 1, 8, 8, 6)
    np.testing.assert_array_equal(inputs.keyframes, np.full((1, 8), 0.5, np.float32))


def test_rgba_alpha_becomes_the_mask_and_non_finite_posmap_is_invalid(tmp_path, rng):
    import imageio.v3 as iio

    source = example(rng)
    source["posmaps"][0, 3, 4] = np.nan
    write_inputs(tmp_path, {k: v for k, v in source.items() if k != "masks"})
    rgba = np.concatenate([np.full((32, 32, 3), 200, np.uint8), np.zeros((32, 32, 1), np.uint8)], -1)
    rgba[:16, :, 3] = 255
    iio.imwrite(tmp_path / "view0.png", rgba)
    batch = read_inputs(tmp_path, SETTINGS).batch
    assert batch["masks"][0, 0, :16].min() == 1.0 and batch["masks"][0, 0, 16:].max() == 0.0
    assert batch["posmap_valid"][0, 0, 3, 4, 0] == 0.0 and np.isfinite(batch["posmaps"]).all()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update(views=s["views"] * 2), r"1 to 2 views for this model, got 4"),
        (lambda s: s.update(views=[]), r"1 to 2 views for this model, got 0"),
        (lambda s: s["views"][1].pop("K"), r"view 1 \(view1.png\): camera 'K' is missing"),
        (lambda s: s["views"][0]["world_to_cam"][0].__setitem__(3, float("nan")), r"view 0 .*'world_to_cam' has non-finite"),
        (lambda s: s["views"][0].update(world_to_cam=[[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "rigid transform"),
        (lambda s: s["views"][0].update(K=[[1, 0], [0, 1]]), r"'K' must be 3x3"),
        (lambda s: s["views"][0].update(K=[[-5, 0, 1], [0, 5, 1], [0, 0, 1]]), r"fx, fy > 0"),
        (lambda s: s["views"][1].pop("posmap"), r"view 1 .*no 'posmap'.*DUSt3R"),
        (lambda s: s["views"][0].pop("features"), r"no 'features'.*Sapiens"),
        (lambda s: s["views"][0].update(image="missing.png"), r"image file .*missing.png does not exist"),
        (lambda s: s.update(expressions=[[1.0, 2.0]]), r"data.expression_dim=8"),
    ],
)
def test_bad_inputs_are_named(tmp_path, rng, change, message):
    write_inputs(tmp_path, example(rng))
    edit_spec(tmp_path, change)
    with pytest.raises(InputError, match=message):
        read_inputs(tmp_path, SETTINGS)


def test_bad_files_are_named(tmp_path, rng):
    write_inputs(tmp_path, example(rng))
    (tmp_path / "view1.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"view 1 \(view1.png\): cannot read .* as an image"):
        read_inputs(tmp_path, SETTINGS)

    write_inputs(tmp_path, example(rng))
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "view1.png", np.zeros((16, 32, 3), np.uint8))
    with pytest.raises(InputError, match=r"view 1 .*image is 16x32 but the model takes 32x32"):
        read_inputs(tmp_path, SETTINGS)

    write_inputs(tmp_path, example(rng))
    np.save(tmp_path / "view0_features.npy", np.zeros((8, 8, 5), np.float32))
    with pytest.raises(InputError, match=r"features must be \[h, w, 6\]"):
        read_inputs(tmp_path, SETTINGS)

    (tmp_path / "inputs.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        read_inputs(tmp_path, SETTINGS)
    with pytest.raises(InputError, match=r"has no inputs\.json"):
        read_inputs(tmp_path / "elsewhere", SETTINGS)
