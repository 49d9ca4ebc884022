"""Optional head variety of the generator (beards, per-subject lighting): measured on rendered pixels."""

import dataclasses

import numpy as np

from data_pipelines.synthetic import dataset, head
from tests.data_pipelines.test_synthetic import expression, face_cameras, render_views

SUBJECTS = 12


def subject_views(spec: dataset.SyntheticSpec):
    K, world_to_cam = face_cameras()
    return [render_views(dataset.sample_subject(spec, s).identity, expression(), K, world_to_cam) for s in range(SUBJECTS)]


def mean_colours(views) -> np.ndarray:
    """Each subject's mean foreground colour ``[S, 3]``."""
    return np.stack([v.image[v.alpha > 0.5].mean(0) for v in views])


def test_subjects_differ_in_colour_and_lighting_varies_brightness_and_tint(tiny_config):
    plain = dataclasses.replace(dataset.SyntheticSpec.from_config(tiny_config.data), seed=3)
    varied = dataclasses.replace(plain, beard_prob=0.5, lighting_jitter=1.0)
    beards = 0
    for s in range(SUBJECTS):  # the variety has its own random stream: every other draw is unchanged
        a, b = dataset.sample_subject(plain, s).identity, dataset.sample_subject(varied, s).identity
        for field in ("head_scale", "skin_rgb", "hair_rgb", "noise_phases"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        np.testing.assert_array_equal(a.key_light, head.DEFAULT_KEY_LIGHT)
        np.testing.assert_array_equal(a.light_rgb, 1.0)
        assert a.beard_thickness == 0.0
        beards += int(b.beard_thickness > 0)
    assert 0 < beards < SUBJECTS
    colours_plain, colours_varied = mean_colours(subject_views(plain)), mean_colours(subject_views(varied))
    # Skin tones and hair colours already spread the subjects' mean colours (measured about 0.10 per channel).
    assert (colours_plain.std(0) > 0.05).all(), colours_plain.std(0)
    # Lighting: per-subject brightness and warm/cool tint move (measured std 0.19 and 0.31 at this seed).
    brightness = colours_varied.mean(1) / colours_plain.mean(1)
    tint = np.log((colours_varied[:, 0] / colours_varied[:, 2]) / (colours_plain[:, 0] / colours_plain[:, 2]))
    assert brightness.std() > 0.1 and tint.std() > 0.15, (brightness, tint)


def test_a_beard_is_hair_on_the_lower_face_and_leaves_the_rest():
    identity = head.sample_identity(np.random.default_rng(4))
    K, world_to_cam = face_cameras()
    bare = render_views(identity, expression(), K, world_to_cam)
    bearded = render_views(dataclasses.replace(identity, beard_thickness=np.float32(0.006)), expression(), K, world_to_cam)
    lower, upper = slice(20, 32), slice(0, 12)  # image rows below the mouth, above the eyes (frontal camera 0)
    gained = (bearded.label[0, lower] == head.HAIR).sum() - (bare.label[0, lower] == head.HAIR).sum()
    assert gained >= 10, gained
    np.testing.assert_array_equal(bearded.label[0, upper], bare.label[0, upper])
    unset = render_views(dataclasses.replace(identity, beard_thickness=np.float32(0.0)), expression(), K, world_to_cam)
    np.testing.assert_array_equal(unset.image, bare.image)
