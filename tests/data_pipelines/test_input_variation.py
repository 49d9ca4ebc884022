"""Variable view counts, front-end-like corruption and random-encoder features: statistics on their outputs."""

import dataclasses
import itertools

import numpy as np
import pytest

from avat3r_jax import geometry
from avat3r_jax.config_validation import ConfigValueError, validate_config
from avat3r_jax.spec import from_stored
from configs import tiny
from data_pipelines import grain_pipeline
from data_pipelines.corruption import Corruption, depth_noise, disc_holes, random_similarity
from data_pipelines.input_variation import InputVariation
from data_pipelines.random_features import RandomFeatureEncoder
from data_pipelines.view_sampling import ViewCounts


def take(dataset, count):
    iterator = iter(dataset)
    return [next(iterator) for _ in range(count)]


def umeyama(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``target ~ s R source + t`` (Umeyama 1991), float64."""
    source, target = source.astype(np.float64), target.astype(np.float64)
    mu_s, mu_t = source.mean(0), target.mean(0)
    a, b = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd(b.T @ a / len(a))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ d @ vt
    scale = float(np.trace(np.diag(sigma) @ d) / (a**2).sum(1).mean())
    return scale, rotation, mu_t - scale * rotation @ mu_s


def test_view_count_frequencies_follow_the_distribution():
    probs = (0.1, 0.2, 0.3, 0.4)
    rng = np.random.default_rng(0)
    counts = ViewCounts(4, probs)
    draws = np.array([counts.sample(rng) for _ in range(20_000)])
    frequencies = np.bincount(draws, minlength=5)[1:] / len(draws)
    np.testing.assert_allclose(frequencies, probs, atol=0.015)  # > 4 standard errors (<= 0.0035)
    assert ViewCounts(4).sample(rng) == 4 and ViewCounts(4, (0.0, 0.0, 0.0, 1.0)).sample(rng) == 4


def varied(config, **data):
    config = tiny.get_config() if config is None else config
    config = config.copy_and_resolve_references()
    for key, value in data.items():
        if key.startswith("corruption_"):
            config.data.corruption[key.removeprefix("corruption_")] = value
        else:
            config.data[key] = value
    validate_config(config)
    return config


def test_pipeline_samples_view_counts_and_keeps_the_views_it_would_have_chosen(tiny_dataset):
    base = tiny.get_config()
    plain = take(grain_pipeline.make_dataset(base.data, tiny_dataset, seed=3), 12)
    sampled = take(grain_pipeline.make_dataset(varied(base, view_count_probs=(0.5, 0.5)).data, tiny_dataset, seed=3), 12)
    counts = []
    for a, b in zip(plain, sampled, strict=True):
        np.testing.assert_array_equal(a["input_view_valid"], 1.0)
        valid = b["input_view_valid"]  # [B, V]
        assert set(np.unique(valid)) <= {0.0, 1.0} and (valid[:, 0] == 1).all()
        for example in range(valid.shape[0]):
            present = int(valid[example].sum())
            counts.append(present)
            for key in ("images", "posmaps", "posmap_valid", "features", "K", "world_to_cam", "masks"):
                np.testing.assert_array_equal(b[key][example, :present], a[key][example, :present], err_msg=key)
            for key in ("images", "posmaps", "posmap_valid", "features", "masks"):
                np.testing.assert_array_equal(b[key][example, present:], 0.0, err_msg=key)
            np.testing.assert_array_equal(b["K"][example, present:], b["K"][example, :1].repeat(2 - present, 0))
        for key in ("target_images", "expression", "subject", "frame"):
            np.testing.assert_array_equal(a[key], b[key])
    assert 6 <= counts.count(1) <= 18, counts  # 24 draws at p = 0.5: 3.3 standard deviations either side


def camera_points(rng, count):
    """Points at camera depths uniform in [0.4, 2.0] m in front of a camera looking at the origin."""
    world_to_cam = np.asarray(geometry.look_at(np.array([0.3, 0.2, 1.5], np.float32), np.zeros(3, np.float32)), np.float64)
    depth = rng.uniform(0.4, 2.0, count)
    cam = np.stack([rng.uniform(-0.3, 0.3, count) * depth, rng.uniform(-0.3, 0.3, count) * depth, depth], -1)
    rotation, translation = world_to_cam[:3, :3], world_to_cam[:3, 3]
    return (cam - translation) @ rotation, world_to_cam  # world points [N, 3]


def test_depth_noise_std_grows_with_depth_squared_along_the_rays():
    rng = np.random.default_rng(1)
    points, world_to_cam = camera_points(rng, 400_000)
    coefficient = 0.01
    noisy = depth_noise(points, world_to_cam, coefficient, rng)
    to_cam = lambda x: x @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    before, after = to_cam(points), to_cam(noisy)
    np.testing.assert_allclose(after[:, :2] / after[:, 2:], before[:, :2] / before[:, 2:], atol=1e-9)  # same pixel
    error = after[:, 2] - before[:, 2]
    edges = np.linspace(0.4, 2.0, 9)
    for lo, hi in itertools.pairwise(edges):
        inside = (before[:, 2] >= lo) & (before[:, 2] < hi)
        expected = coefficient * np.sqrt(np.mean(before[inside, 2] ** 4))  # RMS of c z^2 in the bin
        np.testing.assert_allclose(np.std(error[inside]), expected, rtol=0.03)
        assert abs(np.mean(error[inside])) < 0.05 * expected


def posmap_view(rng, size=32):
    """A trusted posmap ``[H, W, 3]`` of head-sized points, with its validity and camera."""
    points, world_to_cam = camera_points(rng, size * size)
    xyz = (0.1 * points / np.linalg.norm(points, axis=-1, keepdims=True)).reshape(size, size, 3).astype(np.float32)
    valid = np.ones((size, size, 1), np.float32)
    valid[:4] = 0.0
    xyz[:4] = 0.0
    return xyz, valid, world_to_cam.astype(np.float32)


def test_misalignment_is_one_similarity_per_view_recovered_by_procrustes():
    corruption = Corruption(misalign_degrees=3.0, misalign_translation=0.01, misalign_log_scale=0.02)
    for seed in range(5):
        xyz, valid, world_to_cam = posmap_view(np.random.default_rng(seed))
        original = xyz.copy()
        corruption.apply(xyz, valid, world_to_cam, np.random.default_rng(100 + seed))
        trusted = valid[..., 0] > 0.5
        np.testing.assert_array_equal(xyz[~trusted], 0.0)
        scale, rotation, translation = umeyama(original[trusted], xyz[trusted])
        drawn = random_similarity(np.random.default_rng(100 + seed), 3.0, 0.01, 0.02)
        np.testing.assert_allclose(scale, drawn[0], rtol=1e-5)
        np.testing.assert_allclose(rotation, drawn[1], atol=1e-5)
        np.testing.assert_allclose(translation, drawn[2], atol=1e-6)
    rng = np.random.default_rng(7)
    draws = [random_similarity(rng, 3.0, 0.01, 0.02) for _ in range(4000)]
    angles = np.array([np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))) for _, r, _ in draws])
    np.testing.assert_allclose(np.sqrt(np.mean(angles**2)), 3.0, rtol=0.05)
    np.testing.assert_allclose(np.std(np.log([s for s, _, _ in draws])), 0.02, rtol=0.05)
    np.testing.assert_allclose(np.std(np.stack([t for _, _, t in draws])), 0.01, rtol=0.05)


def test_holes_make_trusted_pixels_untrusted_and_zero_and_leave_the_rest():
    corruption = Corruption(hole_fraction=0.2, hole_radius=3.0)
    patterns = []
    for seed in range(2):
        xyz, valid, world_to_cam = posmap_view(np.random.default_rng(0), 64)
        original_xyz, original_valid = xyz.copy(), valid.copy()
        corruption.apply(xyz, valid, world_to_cam, np.random.default_rng(seed))
        kept = valid[..., 0] > 0.5
        assert not (kept & (original_valid[..., 0] < 0.5)).any()
        np.testing.assert_array_equal(xyz[~kept], 0.0)
        np.testing.assert_array_equal(xyz[kept], original_xyz[kept])
        assert 0.1 < 1.0 - kept.sum() / (original_valid > 0.5).sum() < 0.35
        patterns.append(kept)
    assert not np.array_equal(patterns[0], patterns[1])


def test_hole_fraction_over_the_image():
    size, radius, fraction = 64, 3.0, 0.2
    disc = np.pi * radius**2 / size**2
    fractions = [disc_holes((size, size), fraction, radius, np.random.default_rng(seed)).mean() for seed in range(50)]
    assert min(fractions) >= fraction and max(fractions) <= fraction + disc + 1e-9
    holes = disc_holes((size, size), 0.05, 6.0, np.random.default_rng(0))
    assert holes.mean() >= 0.05 and not holes.all()


def test_random_encoder_is_deterministic_per_seed_and_differs_across_seeds_and_images():
    rng = np.random.default_rng(0)
    image, other = (rng.uniform(size=(32, 32, 3)).astype(np.float32) for _ in range(2))
    features = lambda seed, img: (RandomFeatureEncoder(seed, 6)(img, out := np.empty((8, 8, 6), np.float32)), out)[1]
    a, again, b = features(0, image), features(0, image), features(1, image)
    np.testing.assert_array_equal(a, again)
    assert np.abs(a - b).mean() > 0.1 * np.abs(a).mean()
    assert np.abs(a - features(0, other)).mean() > 0.01 * np.abs(a).mean()
    assert np.isfinite(a).all() and a.std() > 0
    with pytest.raises(ValueError, match="multiple of"):
        RandomFeatureEncoder(0, 6)(image[:30], np.empty((8, 8, 6), np.float32))


def test_pipeline_corrupts_and_replaces_features_from_the_example_seed(tiny_dataset):
    base = tiny.get_config()
    plain = take(grain_pipeline.make_dataset(base.data, tiny_dataset, seed=5), 3)
    config = varied(
        base, feature_source="random_encoder", feature_encoder_seed=4, corruption_hole_fraction=0.25, corruption_hole_radius=2.0
    )
    first = take(grain_pipeline.make_dataset(config.data, tiny_dataset, seed=5), 3)
    again = take(grain_pipeline.make_dataset(config.data, tiny_dataset, seed=5), 3)
    encoder = RandomFeatureEncoder(4, config.data.feature_channels)
    for a, b, c in zip(plain, first, again, strict=True):
        for key in b:
            np.testing.assert_array_equal(b[key], c[key], err_msg=key)
        np.testing.assert_array_equal(a["images"], b["images"])
        for example in range(2):
            for view in range(2):
                expected = np.empty_like(b["features"][example, view])
                encoder(from_stored("images", b["images"][example, view]), expected)  # the encoder sees [0, 1] values
                np.testing.assert_array_equal(b["features"][example, view], expected)
        lost = (a["posmap_valid"] > 0.5) & (b["posmap_valid"] < 0.5)
        assert not ((a["posmap_valid"] < 0.5) & (b["posmap_valid"] > 0.5)).any()
        assert 0.1 < lost.sum() / (a["posmap_valid"] > 0.5).sum() < 0.4


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("view_count_probs", (0.5, 0.6), "data.view_count_probs must be () or non-negative numbers summing to 1"),
        ("view_count_probs", (0.2, 0.3, 0.5), "data.view_count_probs needs one probability per view count"),
        ("feature_source", "sapiens", "data.feature_source must be one of"),
        ("corruption_hole_fraction", 1.0, "data.corruption.hole_fraction must be a finite number in [0.0, 1.0)"),
        ("corruption_depth_noise", -0.1, "data.corruption.depth_noise must be a finite number"),
        ("feature_height", 7, "data.feature_source='random_encoder' averages pixels"),
    ],
)
def test_bad_variation_fields_are_named_in_one_line(field, value, expected):
    config = tiny.get_config()
    if field == "feature_height":
        config.data.feature_source = "random_encoder"
    with pytest.raises(ConfigValueError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace(".", r"\.")):
        varied(config, **{field: value})


def test_defaults_are_off():
    config = tiny.get_config()
    variation = InputVariation.from_config(config.data)
    assert not variation.corruption.active and variation.feature_encoder is None and not variation.view_counts.varies
    assert dataclasses.asdict(variation.corruption)["hole_fraction"] == 0.0
