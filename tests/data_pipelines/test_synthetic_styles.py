"""Hair styles, glasses, head shapes, long expression videos and 128x128 renders of the generator,
measured on rendered pixels. The render batches of the measurements share one shape (16 heads, 4
ring cameras at 48x48) so the batched tracer compiles once for them."""

import dataclasses

import jax
import numpy as np
import pytest

from avat3r_jax import geometry
from configs import synthetic_varied
from data_pipelines import image_codec, resample, storage
from data_pipelines.synthetic import dataset, head, render, sheet
from tests.data_pipelines.test_synthetic import expression, reprojection_error

RES, STEPS, BATCH = 48, 48, 16
FRONT, SIDE, BACK = 0, 1, 2
NEW_VARIETY = {"hair_style_prob": 0.9, "dyed_hair_prob": 0.3, "glasses_prob": 0.5, "head_shape_jitter": 1.0}


def ring_cameras() -> tuple[np.ndarray, np.ndarray]:
    """Front, side, back and back-three-quarter cameras 1 m away, framing 0.4 m (long hair included)."""
    yaw = np.deg2rad([0.0, 80.0, 180.0, -130.0])
    eyes = np.stack([np.sin(yaw), np.full(4, 0.05), np.cos(yaw)], -1).astype(np.float32)
    world_to_cam = np.asarray(geometry.look_at(eyes, np.tile([[0.0, -0.05, 0.0]], (4, 1)).astype(np.float32)))
    K = np.asarray(geometry.make_intrinsics(np.full(4, 2.5 * RES), np.full(4, 2.5 * RES), RES / 2, RES / 2))
    return K, world_to_cam


def render_heads(identities: list[head.Identity]) -> render.RenderedViews:
    """Host ``RenderedViews [len, 4, RES, RES]`` of neutral heads from the ring (padded to ``BATCH``)."""
    assert len(identities) <= BATCH
    padded = identities + [identities[-1]] * (BATCH - len(identities))
    K, world_to_cam = ring_cameras()
    views = render.render_batch(
        jax.tree.map(lambda *fields: np.stack(fields), *padded),
        np.tile(expression(), (BATCH, 1)),
        np.tile(K, (BATCH, 1, 1, 1)),
        np.tile(world_to_cam, (BATCH, 1, 1, 1)),
        np.ones(3, np.float32),
        height=RES,
        width=RES,
        steps=STEPS,
    )
    return jax.tree.map(lambda a: np.asarray(a)[: len(identities)], views)


@pytest.fixture(scope="module")
def plain_and_varied():
    """The same 8 subjects without and with the new variety (beards and lighting stay off)."""
    plain = dataset.SyntheticSpec(subjects=8, val_subjects=0, test_subjects=0, seed=7)
    varied = dataclasses.replace(plain, **NEW_VARIETY)
    identities = [dataset.sample_subject(spec, s).identity for spec in (plain, varied) for s in range(8)]
    views = render_heads(identities)
    return identities[8:], jax.tree.map(lambda a: a[:8], views), jax.tree.map(lambda a: a[8:], views)


def test_new_variety_spreads_colour_hair_and_silhouettes_over_subjects(plain_and_varied):
    varied_identities, plain, varied = plain_and_varied

    def per_subject(views):
        foreground = views.alpha > 0.5
        colour = np.stack([views.image[s][foreground[s]].mean(0) for s in range(8)])  # [S, 3]
        hair = np.array([(views.label[s] == head.HAIR).sum() / foreground[s].sum() for s in range(8)])
        return colour, hair, views.alpha.mean((1, 2, 3))

    (colour_a, hair_a, area_a), (colour_b, hair_b, area_b) = per_subject(plain), per_subject(varied)
    chroma_a, chroma_b = (c / c.sum(-1, keepdims=True) for c in (colour_a, colour_b))
    # Measured at this seed: chromaticity spread of the mean colours 0.021 -> 0.035 (dyed hair, frames;
    # the brightness spread stays about 0.08, set by the skin tones), hair fraction spread 0.022 ->
    # 0.146, silhouette area spread 0.0065 -> 0.029.
    assert chroma_b.std(0).mean() > 1.4 * chroma_a.std(0).mean(), (chroma_a.std(0), chroma_b.std(0))
    assert hair_b.std() > 3.0 * hair_a.std(), (hair_a, hair_b)
    assert area_b.std() > 2.0 * area_a.std(), (area_a, area_b)
    # Glasses: present in the front view exactly for the subjects that wear them.
    wearing = np.array([float(i.glasses_rim) > 0 for i in varied_identities])
    glasses_pixels = (varied.label[:, FRONT] == head.GLASSES).sum((1, 2))
    assert 0 < wearing.sum() < 8, wearing
    assert np.all(glasses_pixels[wearing] >= 8) and np.all(glasses_pixels[~wearing] == 0), glasses_pixels
    assert np.all(plain.label != head.GLASSES)


def test_variety_off_draws_the_identities_of_older_datasets_and_on_keeps_their_other_draws():
    plain = dataset.SyntheticSpec(subjects=8, val_subjects=0, test_subjects=0, seed=7)
    neutral = head.sample_identity(np.random.default_rng(0))
    for s in range(8):
        a = dataset.sample_subject(plain, s)
        b = dataset.sample_subject(dataclasses.replace(plain, **NEW_VARIETY), s)
        new_fields = ("chin_length", "cheek_width", "neck_width", "hair_cap", "hair_length", "bun_radius", "ponytail_length", "glasses_rim")
        for field in new_fields:
            np.testing.assert_array_equal(getattr(a.identity, field), getattr(neutral, field))
        for field in ("skin_rgb", "iris_rgb", "noise_phases", "lip_rgb"):  # the new draws come from their own streams
            np.testing.assert_array_equal(getattr(a.identity, field), getattr(b.identity, field))
        np.testing.assert_array_equal(a.K, b.K)
        np.testing.assert_array_equal(a.expressions, b.expressions)
    with pytest.raises(ValueError, match="glasses_prob must be >= 0"):
        dataclasses.replace(plain, glasses_prob=-0.1)


def styled(base: head.Identity, **fields) -> head.Identity:
    return dataclasses.replace(base, **{k: np.asarray(v, np.float32) for k, v in fields.items()})


def test_each_hair_style_and_glasses_change_the_pixels_they_should():
    base = styled(head.sample_identity(np.random.default_rng(4)), hair_thickness=0.012, hair_back_length=0.03)
    variants = {
        "cap": base,
        "short": styled(base, hair_thickness=0.003, hair_back_length=0.0, hairline=0.075),
        "long": styled(base, hair_length=0.12, hair_back_length=0.06),
        "bun": styled(base, bun_radius=0.03),
        "ponytail": styled(base, ponytail_length=0.12),
        "bald": styled(base, hair_cap=0.0),
        "glasses": styled(base, glasses_rim=0.0018, glasses_lens_radius=0.019),
        "sunglasses": styled(base, glasses_rim=0.0018, glasses_lens_radius=0.019, sunglasses=1.0),
    }
    views = dict(zip(variants, (jax.tree.map(lambda a, i=i: a[i], render_heads(list(variants.values()))) for i in range(8)), strict=True))
    cap = views["cap"]
    hair_count = {name: int((v.label == head.HAIR).sum()) for name, v in views.items()}
    # Bald: only the eyebrows remain hair; a short crop covers less than the thick cap.
    assert hair_count["bald"] < 0.1 * hair_count["cap"], hair_count
    assert (views["short"].alpha.sum() < cap.alpha.sum()) and hair_count["short"] < hair_count["cap"], hair_count
    # Long hair, bun and ponytail add silhouette behind or below the head, and what they add is hair.
    for name, camera, least in (("long", BACK, 40), ("bun", SIDE, 8), ("ponytail", SIDE, 12)):
        gained = (views[name].alpha[camera] > 0) & (cap.alpha[camera] == 0)
        assert gained.sum() >= least, (name, gained.sum())
        assert np.all(views[name].label[camera][gained] == head.HAIR), name
    # Long hair falls below the ears at the back: hair in rows where the cap has none.
    assert (views["long"].label[BACK] == head.HAIR).any(1).sum() > (cap.label[BACK] == head.HAIR).any(1).sum() + 4
    # Glasses in front of the eyes: a rim around them; sunglasses' lenses hide the eyes.
    eyes = (cap.label[FRONT] == head.EYE).sum()
    assert (views["glasses"].label[FRONT] == head.GLASSES).sum() >= 10
    assert (views["glasses"].label[FRONT] == head.EYE).sum() > 0.3 * eyes
    assert (views["sunglasses"].label[FRONT] == head.EYE).sum() < 0.1 * eyes
    assert (views["sunglasses"].label[FRONT] == head.GLASSES).sum() > (views["glasses"].label[FRONT] == head.GLASSES).sum() + eyes // 2
    lens = views["sunglasses"].image[FRONT][views["sunglasses"].label[FRONT] == head.GLASSES]
    assert np.median(lens.mean(-1)) < 0.15  # dark lenses
    # Outside the glasses, the head is unchanged.
    away = views["glasses"].label[FRONT] != head.GLASSES
    assert np.mean(views["glasses"].label[FRONT][away] == cap.label[FRONT][away]) > 0.97


def test_glasses_count_as_hair_in_the_part_label_features():
    full_resolution = {"resolution": RES, "feature_height": RES, "feature_width": RES}
    spec = dataset.SyntheticSpec(subjects=1, cameras=4, val_subjects=0, test_subjects=0, **full_resolution)
    identity = styled(head.sample_identity(np.random.default_rng(4)), glasses_rim=0.0018, sunglasses=1.0)
    views = jax.tree.map(lambda a: a[0], render_heads([identity]))
    K, world_to_cam = ring_cameras()
    sample = dataset.Subject(identity, K, world_to_cam, expression()[None])
    record = dataset.view_records(spec, 0, 0, sample, views)[FRONT]
    features = record.features.astype(np.float32)  # full resolution: the one-hot labels themselves
    label = views.label[FRONT]
    np.testing.assert_array_equal(features[..., head.HAIR], (label == head.HAIR) | (label == head.GLASSES))
    np.testing.assert_array_equal(features.sum(-1), 1.0)


@pytest.mark.parametrize(("resolution", "height", "width"), [(64, 16, 16), (128, 16, 12), (48, 20, 48)])
def test_part_fractions_are_the_resampled_one_hot_parts(resolution, height, width):
    label = np.random.default_rng(resolution).integers(0, len(head.LABEL_NAMES), (resolution, resolution))
    one_hot = np.eye(len(head.PART_NAMES), dtype=np.float32)[head.FEATURE_PART[label]]
    expected = resample.resize(one_hot, (0.0, 0.0, float(resolution), float(resolution)), height, width)
    np.testing.assert_allclose(dataset.part_fractions(label, height, width), expected, atol=1e-6)


def test_leaving_out_the_style_pieces_changes_nothing_for_heads_without_them():
    plain = dataset.sample_subject(dataset.SyntheticSpec(subjects=3, val_subjects=0, test_subjects=0, beard_prob=1.0), 0).identity
    points = tuple(np.random.default_rng(0).uniform(-0.25, 0.25, (3, 2048)).astype(np.float32))
    full, cut = (np.asarray(head.part_distances(points, plain, expression(), styled)) for styled in (True, False))
    np.testing.assert_array_equal(full, cut)
    assert not head.has_style_pieces(plain)
    for field in ("hair_length", "bun_radius", "ponytail_length", "glasses_rim"):
        stack = jax.tree.map(lambda *fields: np.stack(fields), plain, styled(plain, **{field: 0.01}))
        assert head.has_style_pieces(stack), field


def test_no_head_reaches_the_tracers_bounding_sphere():
    """Every style, glasses and the widest head shapes stay inside the sphere rays are traced in."""
    spec = dataset.SyntheticSpec(subjects=48, val_subjects=0, test_subjects=0, hair_style_prob=1.0, glasses_prob=1.0, head_shape_jitter=1.5)
    identities = [dataset.sample_subject(spec, s).identity for s in range(48)]
    identities += [styled(i, hair_length=0.15, hair_back_length=0.07, ponytail_length=0.14, bun_radius=0.032) for i in identities[:8]]
    directions = np.random.default_rng(0).normal(size=(4096, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    points = np.asarray(render.BOUND_CENTER) + 0.999 * render.BOUND_RADIUS * directions
    extremes = np.array([head.EXPRESSION_RANGES[n][k] for k, n in zip([1, 1, 0, 1, 1, 1, 0, 0, 1], head.EXPRESSION_NAMES, strict=True)])

    def closest(identity, expression_params):
        return head.head_sdf(tuple(points.T.astype(np.float32)), identity, expression_params).min()

    stacked = jax.tree.map(lambda *fields: np.stack(fields), *identities)
    for params in (head.NEUTRAL_EXPRESSION, extremes.astype(np.float32)):
        distances = np.asarray(jax.jit(jax.vmap(closest, in_axes=(0, None)))(stacked, params))
        assert distances.min() > 0.02, distances.min()


def test_expression_cycles_make_long_videos_visit_more_expressions():
    def rng():  # the same draws for both speeds
        return np.random.default_rng(5)

    slow, fast = head.sample_expression_trajectory(rng(), 64), head.sample_expression_trajectory(rng(), 64, cycles=4.0)
    np.testing.assert_array_equal(head.sample_expression_trajectory(rng(), 64, cycles=1.0), slow)
    low, high = (np.array(v) for v in zip(*head.EXPRESSION_RANGES.values(), strict=True))
    assert np.all(fast >= low - 1e-6) and np.all(fast <= high + 1e-6)
    # Half as long a stretch of the fast video covers more of the range than the slow one; still smooth.

    def spread(t):
        return ((t[:32].max(0) - t[:32].min(0)) / (high - low)).mean()

    assert spread(fast) > 1.3 * spread(slow), (spread(slow), spread(fast))
    assert np.abs(np.diff(fast, axis=0)).mean() < 0.25 * np.abs(fast - fast[np.random.default_rng(1).permutation(64)]).mean()


def test_a_32_frame_128x128_varied_subject(tmp_path):
    spec = dataset.SyntheticSpec(
        subjects=1, frames=32, cameras=1, resolution=128, val_subjects=0, test_subjects=0, expression_cycles=3.0, **NEW_VARIETY
    )
    info = dataset.generate(spec, tmp_path / "d", progress=False)
    assert info.splits["train"]["num_records"] == 31 and info.splits["val_expressions"]["num_records"] == 1
    source = storage.open_source(tmp_path / "d", storage.STORED_SPLITS)
    records = sorted((source[i] for i in range(len(source))), key=lambda r: r.frame)
    assert [r.frame for r in records] == list(range(32))
    assert len({r.expression.tobytes() for r in records}) == 32
    for record in records[::10]:
        image = image_codec.decode_rgb(record.image)
        alpha = image_codec.decode_grey(record.mask) / 255.0
        assert image.shape == (128, 128, 3) and 0.05 < alpha.mean() < 0.9
        assert reprojection_error(record.posmap.astype(np.float32), alpha, record.K, record.world_to_cam).max() < 0.5


def test_the_variety_sheet_shows_the_same_subjects_without_and_with_the_variety():
    spec = dataset.SyntheticSpec.from_config(synthetic_varied.get_config().data)
    assert all(getattr(spec, field) != off for field, off in dataset.VARIETY_OFF.items() if field != "expression_cycles")
    size = 16
    pixels = sheet.variety_sheet(spec, subjects=3, size=size, columns=2)
    assert pixels.shape == (2 * 3 * size, 2 * size, 3) and pixels.dtype == np.uint8
    tiles = pixels.reshape(2, 3, size, 2, size, 3).transpose(0, 3, 1, 2, 4, 5).reshape(4, 3, size, size, 3)  # [slot, row, ...]
    assert np.all(tiles[3] == 255)  # the second group's empty slot
    heads = tiles[:3]
    assert np.all((heads < 250).any(-1).mean((2, 3)) > 0.05)  # a head in every tile
    assert np.any(np.abs(heads[:, 0].astype(int) - heads[:, 1]).max((1, 2, 3)) > 60)  # the variety shows
