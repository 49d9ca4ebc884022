"""The procedural head generator: determinism, exact position maps, parameter effects, cameras, codes.

Every render uses 4 cameras at 32x32 with 48 steps, the tiny config's shapes, so the sphere tracer
compiles once per test process.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from avat3r_jax import geometry
from data_pipelines import image_codec, resample, storage
from data_pipelines.synthetic import dataset, head, render, rig
from launch import data as data_cli

RES, CAMERAS, STEPS = 32, 4, 48


@pytest.fixture(scope="module")
def spec(tiny_config):
    return dataset.SyntheticSpec.from_config(tiny_config.data)


def render_views(identity, expression, K, world_to_cam) -> render.RenderedViews:
    views = render.render_views(identity, jnp.asarray(expression), K, world_to_cam, jnp.ones(3), height=RES, width=RES, steps=STEPS)
    return render.RenderedViews(*(np.asarray(v) for v in dataclasses.astuple(views)))


def face_cameras(focal_ratio: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """Four nearly frontal cameras 1 m away, zoomed on the face."""
    yaw = np.deg2rad([0.0, 10.0, -10.0, 5.0])
    eyes = np.stack([np.sin(yaw), np.full(4, 0.05), np.cos(yaw)], -1).astype(np.float32)
    world_to_cam = np.asarray(geometry.look_at(eyes, np.tile([[0.0, -0.01, 0.0]], (4, 1)).astype(np.float32)))
    K = np.asarray(geometry.make_intrinsics(np.full(4, focal_ratio * RES), np.full(4, focal_ratio * RES), RES / 2, RES / 2))
    return K, world_to_cam


def expression(**values) -> np.ndarray:
    e = head.NEUTRAL_EXPRESSION.copy()
    for name, value in values.items():
        e[head.EXPRESSION_NAMES.index(name)] = value
    return e


def reprojection_error(position: np.ndarray, alpha: np.ndarray, K: np.ndarray, world_to_cam: np.ndarray) -> np.ndarray:
    """Pixel distance between each foreground pixel's centre and the projection of its position-map point."""
    height, width = alpha.shape
    points = jnp.asarray(position.reshape(-1, 3), jnp.float32)  # all pixels: one shape, one compile
    uv, depth = geometry.project_points(jnp.asarray(K), jnp.asarray(world_to_cam), points)
    foreground = alpha.reshape(-1) > 0.5
    assert np.all(np.asarray(depth)[foreground] > 0.5)
    centers = np.asarray(geometry.pixel_grid(height, width)).reshape(-1, 2)
    return np.linalg.norm(np.asarray(uv) - centers, axis=-1)[foreground]


def test_generation_is_deterministic_in_its_seed_whatever_the_batching(tmp_path, spec):
    variety = {"beard_prob": 0.5, "lighting_jitter": 0.5, "hair_style_prob": 1.0, "glasses_prob": 0.5, "head_shape_jitter": 1.0}
    small = dataclasses.replace(spec, subjects=2, frames=2, val_subjects=0, test_subjects=0, **variety)

    def all_bytes(out_dir):
        source = storage.open_source(out_dir, storage.STORED_SPLITS)
        source.open_files()
        return [source._source[i] for i in range(len(source))]

    # Three frames per device call: a padded last call; the default renders all four in one.
    first = all_bytes(dataset.generate(small, tmp_path / "a", progress=False, batch=3) and tmp_path / "a")
    second = all_bytes(dataset.generate(small, tmp_path / "b", progress=False) and tmp_path / "b")
    other = all_bytes(dataset.generate(dataclasses.replace(small, seed=1), tmp_path / "c", progress=False) and tmp_path / "c")
    assert len(first) == 2 * 2 * CAMERAS and first == second
    assert all(a != b for a, b in zip(first, other, strict=True))


def test_position_maps_reproject_onto_pixel_centres(tiny_dataset, spec):
    sample = dataset.sample_subject(spec, 0)
    views = render_views(sample.identity, sample.expressions[0], sample.K, sample.world_to_cam)
    assert 0.05 < views.alpha.mean() < 0.9
    for c in range(CAMERAS):  # float32 render output: exact up to rounding
        error = reprojection_error(views.position[c], views.alpha[c], sample.K[c], sample.world_to_cam[c])
        assert error.max() < 1e-2
        assert np.all(views.position[c][views.alpha[c] == 0] == 0)
    source = storage.open_source(tiny_dataset, ("train",))
    errors = []
    for i in range(len(source)):  # stored float16 maps, through the record's own camera
        record = source[i]
        alpha = image_codec.decode_grey(record.mask) / 255.0
        np.testing.assert_array_equal(record.posmap_confidence, alpha)
        errors.append(reprojection_error(record.posmap.astype(np.float32), alpha, record.K, record.world_to_cam))
    errors = np.concatenate(errors)
    assert errors.max() < 0.5 and errors.mean() < 0.05


def test_structured_posmap_noise_stays_on_the_pixel_rays(spec):
    noisy = dataclasses.replace(spec, posmap_noise=0.004)
    sample = dataset.sample_subject(noisy, 1)
    views = render_views(sample.identity, sample.expressions[0], sample.K, sample.world_to_cam)
    clean = dataset.view_records(spec, 1, 0, sample, views)
    records = dataset.view_records(noisy, 1, 0, sample, views)
    offsets = []
    for c, (a, b) in enumerate(zip(clean, records, strict=True)):
        alpha = np.asarray(views.alpha[c])
        assert reprojection_error(b.posmap.astype(np.float32), alpha, b.K, b.world_to_cam).max() < 0.5
        center = np.linalg.inv(b.world_to_cam)[:3, 3]
        depth = [np.linalg.norm(r.posmap.astype(np.float32) - center, axis=-1) for r in (a, b)]
        depth_change = depth[1] - depth[0]
        offsets.append(depth_change[alpha > 0])
        # Structured: neighbouring pixels share most of their error.
        field = np.where(alpha > 0, depth_change, np.nan)
        assert np.nanmean(np.abs(np.diff(field, axis=1))) < 0.3 * np.nanstd(field) + 1e-4
    offsets = np.concatenate(offsets)
    assert 0.3 * noisy.posmap_noise < offsets.std() < 3.0 * noisy.posmap_noise


@pytest.mark.parametrize(
    ("change", "landmark"),
    [({"jaw_open": 1.0}, "mouth"), ({"smile": 1.0}, "mouth"), ({"blink": 1.0}, "left_eye"), ({"gaze_yaw": 0.35}, "right_eye")],
)
def test_expression_changes_pixels_near_its_part_only(change, landmark):
    identity = head.sample_identity(np.random.default_rng(3))
    K, world_to_cam = face_cameras()
    neutral = render_views(identity, expression(), K, world_to_cam)
    changed = render_views(identity, expression(**change), K, world_to_cam)
    point = np.asarray(head.landmarks(identity, expression())[landmark])
    uv, _ = geometry.project_points(jnp.asarray(K), jnp.asarray(world_to_cam), jnp.asarray(point[None], jnp.float32))
    ys, xs = np.mgrid[:RES, :RES] + 0.5
    for c in range(CAMERAS):
        difference = np.abs(changed.image[c] - neutral.image[c]).mean(-1)
        distance = np.hypot(xs - float(uv[c, 0, 0]), ys - float(uv[c, 0, 1]))
        near, far = difference[distance < 4.0].mean(), difference[distance > 12.0].mean()
        assert near > 0.03, (c, near)
        assert far < 0.1 * near, (c, near, far)


def test_identity_colours_change_skin_and_hair_pixels():
    identity = head.sample_identity(np.random.default_rng(4))
    darker = dataclasses.replace(identity, skin_rgb=identity.skin_rgb * np.float32(0.5), hair_rgb=np.array([0.8, 0.2, 0.1], np.float32))
    K, world_to_cam = rig.dome_cameras(np.random.default_rng(0), CAMERAS, RES)
    a = render_views(identity, expression(), K, world_to_cam)
    b = render_views(darker, expression(), K, world_to_cam)
    np.testing.assert_array_equal(a.label, b.label)  # colours only: the geometry is unchanged
    skin, hair, eyes = a.label == head.SKIN, a.label == head.HAIR, a.label == head.EYE
    assert skin.sum() > 50 and hair.sum() > 50
    ratio = b.image[skin].mean(0) / a.image[skin].mean(0)
    np.testing.assert_allclose(ratio, 0.5, atol=0.06)  # shading scales the albedo
    hair_a, hair_b = a.image[hair].mean(0), b.image[hair].mean(0)
    np.testing.assert_allclose(hair_b / hair_b.sum(), darker.hair_rgb / darker.hair_rgb.sum(), atol=0.05)
    assert np.abs(hair_b - hair_a).max() > 0.1
    np.testing.assert_array_equal(a.image[eyes], b.image[eyes])


def test_identities_differ_in_shape_and_colour():
    K, world_to_cam = rig.dome_cameras(np.random.default_rng(0), CAMERAS, RES)
    a = render_views(head.sample_identity(np.random.default_rng(10)), expression(), K, world_to_cam)
    b = render_views(head.sample_identity(np.random.default_rng(11)), expression(), K, world_to_cam)
    assert np.mean(a.alpha != b.alpha) > 0.01
    assert np.abs(a.image[a.label == head.SKIN].mean(0) - b.image[b.label == head.SKIN].mean(0)).max() > 0.02


def test_part_label_features_are_area_fractions(tiny_dataset, tiny_config):
    source = storage.open_source(tiny_dataset, ("train",))
    for i in range(0, len(source), 5):
        record = source[i]
        features = record.features.astype(np.float32)
        assert features.shape == (tiny_config.data.feature_height, tiny_config.data.feature_width, len(head.PART_NAMES))
        np.testing.assert_allclose(features.sum(-1), 1.0, atol=3e-3)
        alpha = image_codec.decode_grey(record.mask)[..., None] / np.float32(255.0)
        coverage = resample.resize(alpha, (0.0, 0.0, RES, RES), *features.shape[:2])[..., 0]
        np.testing.assert_allclose(features[..., head.BACKGROUND], 1.0 - coverage, atol=3e-3)


def test_expression_codes_are_the_fixed_map_of_the_parameters(tiny_dataset, spec):
    code_map = dataset.expression_code_map(spec)
    source = storage.open_source(tiny_dataset, ("train", "val_expressions"))
    for i in range(len(source)):
        record = source[i]
        params = dataset.sample_subject(spec, record.subject).expressions[record.frame]
        np.testing.assert_allclose(record.expression, dataset.expression_code(params, code_map), rtol=1e-6)
    assert code_map.shape == (spec.expression_dim, head.NUM_EXPRESSION_PARAMS)
    np.testing.assert_array_equal(code_map, dataset.expression_code_map(dataclasses.replace(spec, subjects=99)))


def test_expression_trajectories_are_smooth_videos_within_range():
    trajectory = head.sample_expression_trajectory(np.random.default_rng(0), 48)
    low, high = (np.array(v) for v in zip(*head.EXPRESSION_RANGES.values(), strict=True))
    assert np.all(trajectory >= low - 1e-6) and np.all(trajectory <= high + 1e-6)
    consecutive = np.abs(np.diff(trajectory, axis=0)).mean()
    shuffled = np.abs(trajectory - trajectory[np.random.default_rng(1).permutation(48)]).mean()
    assert consecutive < 0.2 * shuffled


def test_dome_cameras_look_at_the_head_from_the_front_half():
    rng = np.random.default_rng(0)
    K, world_to_cam = rig.dome_cameras(rng, CAMERAS, 64, distance_jitter=0.05, focal_jitter=0.05)
    centers = np.asarray(geometry.camera_centers(jnp.asarray(world_to_cam)))
    assert np.all(np.abs(np.linalg.norm(centers, axis=-1) - 1.0) < 0.07)
    yaw = np.degrees(np.arctan2(centers[:, 0], centers[:, 2]))
    elevation = np.degrees(np.arcsin(centers[:, 1] / np.linalg.norm(centers, axis=-1)))
    np.testing.assert_allclose(yaw, [-60.0, -20.0, 20.0, 60.0], atol=4.0)  # spread evenly over (-80, 80) degrees, jittered
    assert np.all((elevation > -20) & (elevation < 35))
    uv, depth = geometry.project_points(jnp.asarray(K), jnp.asarray(world_to_cam), jnp.zeros((CAMERAS, 1, 3)))
    assert np.all(np.abs(np.asarray(uv) - 32) < 4) and np.all(np.asarray(depth) > 0.9)
    assert np.all(np.abs(K[:, 0, 0] / (3.0 * 64) - 1) <= 0.05 + 1e-6)


def test_ensure_dataset_reuses_a_matching_dataset_and_rejects_others(tiny_dataset, tiny_config, tmp_path):
    stamp = (tiny_dataset / storage.METADATA_FILE).stat().st_mtime_ns
    assert dataset.ensure_dataset(tiny_config.data, tiny_dataset) == tiny_dataset
    assert (tiny_dataset / storage.METADATA_FILE).stat().st_mtime_ns == stamp
    other = tiny_config.data.copy_and_resolve_references()
    other.synthetic.seed = 5
    with pytest.raises(storage.DatasetError, match=r"seed: dataset 0 vs config 5"):
        dataset.ensure_dataset(other, tiny_dataset)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(storage.DatasetError, match="not a dataset"):
        dataset.ensure_dataset(tiny_config.data, tmp_path / "junk")


def test_cli_generates_the_requested_dataset(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["synthetic", "--out", str(out), "--subjects", "3", "--frames", "2", "--cameras", str(CAMERAS), "--resolution", str(RES)]
    variety = ["--head-shape-jitter", "0.5", "--expression-cycles", "2", "--batch", "4"]
    data_cli.main([*args, "--val-subjects", "1", "--test-subjects", "0", "--feature-channels", "9", "--seed", "3", *variety])
    info = storage.load_info(out)
    assert info.parameters["subjects"] == 3 and info.parameters["seed"] == 3 and info.feature_channels == 9
    assert info.parameters["head_shape_jitter"] == 0.5 and info.parameters["expression_cycles"] == 2.0
    assert {s: info.splits[s]["num_records"] for s in storage.STORED_SPLITS} == {
        "train": 2 * 1 * CAMERAS,
        "val_expressions": 2 * 1 * CAMERAS,
        "val_subjects": 1 * 2 * CAMERAS,
        "test": 0,
    }
    assert "val_subjects" in capsys.readouterr().out
    # 9 channels: the part fractions through the fixed random projection, not one-hot.
    record = storage.open_source(out, ("train",))[0]
    projection = dataset.feature_projection(dataset.SyntheticSpec(feature_channels=9, seed=3))
    parts = np.linalg.lstsq(projection.T, record.features.reshape(-1, 9).T.astype(np.float32), rcond=None)[0].T
    np.testing.assert_allclose(parts.sum(-1), 1.0, atol=0.02)


def test_the_sphere_tracer_compiles_with_its_own_cpu_options(monkeypatch):
    monkeypatch.setattr(render, "_CPU_COMPILER_OPTIONS", {"xla_no_such_option": True})
    render._jitted.cache_clear()
    K, world_to_cam = face_cameras()
    try:
        with pytest.raises(Exception, match="xla_no_such_option"):
            render_views(head.sample_identity(np.random.default_rng(0)), expression(), K[:1], world_to_cam[:1])
    finally:
        render._jitted.cache_clear()
