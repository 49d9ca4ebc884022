"""Expression interpolation, orbit cameras and intrinsics for rendering."""

import numpy as np
import pytest

from avat3r_jax.export.animate import FrameTimer, expression_sequence, interpolate_keyframes, orbit_around, render_intrinsics
from avat3r_jax.geometry import look_at, make_intrinsics


def test_interpolation_passes_through_keyframes_and_loops(rng):
    keys = rng.normal(size=(3, 5)).astype(np.float32)
    frames = interpolate_keyframes(keys, 4)
    assert frames.shape == (12, 5)
    np.testing.assert_allclose(frames[::4], keys, rtol=1e-6)
    np.testing.assert_allclose(frames[2], 0.5 * (keys[0] + keys[1]), rtol=1e-6)
    np.testing.assert_allclose(frames[11], 0.75 * keys[0] + 0.25 * keys[2], rtol=1e-5)  # back towards the first
    np.testing.assert_allclose(interpolate_keyframes(keys[:1], 3), np.repeat(keys[:1], 3, 0), rtol=1e-6)
    with pytest.raises(ValueError, match="frames_per_keyframe"):
        interpolate_keyframes(keys, 0)


def test_render_intrinsics_scale_uniformly_and_centre_the_view():
    K = np.asarray(make_intrinsics(50.0, 60.0, 16.0, 12.0))
    np.testing.assert_allclose(render_intrinsics(K, (24, 32), (48, 64)), [[100.0, 0, 32.0], [0, 120.0, 24.0], [0, 0, 1]], rtol=1e-6)
    # A wider render: the input is scaled by 2 (to the height) and centred horizontally (offset (128 - 64) / 2).
    np.testing.assert_allclose(render_intrinsics(K, (24, 32), (48, 128)), [[100.0, 0, 64.0], [0, 120.0, 24.0], [0, 0, 1]], rtol=1e-6)


def numpy_centers(world_to_cam: np.ndarray) -> np.ndarray:
    """Camera centres -R^T t, computed independently of the code under test."""
    rotation, translation = world_to_cam[..., :3, :3], world_to_cam[..., :3, 3]
    return -np.einsum("...ji,...j->...i", rotation, translation)


def numpy_project(K: np.ndarray, world_to_cam: np.ndarray, point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam = np.einsum("cij,j->ci", world_to_cam[:, :3, :3], point) + world_to_cam[:, :3, 3]
    pixels = np.einsum("cij,cj->ci", K, cam)
    return pixels[:, :2] / pixels[:, 2:], cam[:, 2]


def test_orbit_circles_the_center_at_the_input_distance_and_starts_at_the_first_view():
    center = np.array([0.02, -0.01, 0.03], np.float32)
    # Inputs in a world whose up is +z, cameras at distance 1 around the centre.
    up = np.array([0.0, 0.0, 1.0], np.float32)
    eyes = center + np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    world_to_cam = np.asarray(look_at(eyes, np.broadcast_to(center, eyes.shape), np.broadcast_to(up, eyes.shape)))
    K = np.asarray(make_intrinsics(np.full(2, 40.0), np.full(2, 40.0), np.full(2, 16.0), np.full(2, 16.0)))
    orbit = orbit_around(K, world_to_cam, center, 8, 0.0, (32, 32), (64, 64))
    orbit_K, orbit_w2c = np.asarray(orbit.K, np.float64), np.asarray(orbit.world_to_cam, np.float64)
    centers = numpy_centers(orbit_w2c)
    np.testing.assert_allclose(np.linalg.norm(centers - center, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(centers[0], eyes[0], atol=1e-5)  # azimuth 0 = first input camera
    np.testing.assert_allclose(centers[2], eyes[1], atol=1e-5)  # a quarter turn later: the second one
    np.testing.assert_allclose(centers[:, 2], center[2], atol=1e-5)  # elevation 0 about the +z up axis
    uv, depth = numpy_project(orbit_K, orbit_w2c, center)
    np.testing.assert_allclose(uv, 32.0, atol=1e-3)  # the centre is in the middle of every render
    assert np.all(depth > 0)
    assert np.all(numpy_project(orbit_K, orbit_w2c, center + 0.1 * up)[0][:, 1] < 32.0)  # world up is image up
    raised = orbit_around(K, world_to_cam, center, 8, 30.0, (32, 32), (64, 64))
    np.testing.assert_allclose(numpy_centers(np.asarray(raised.world_to_cam))[:, 2] - center[2], np.sin(np.deg2rad(30.0)), atol=1e-5)


def test_frame_timer_skips_warmup_calls():
    timer = FrameTimer(warmup=2)
    for value in range(5):
        assert timer.time(lambda x: np.asarray(x) + 1, value) == value + 1
    assert len(timer.seconds) == 3 and timer.median >= 0
    with pytest.raises(ValueError, match="no timed calls"):
        _ = FrameTimer(warmup=1).median


def test_expression_sequence_from_a_file_or_the_keyframes(tmp_path, rng):
    codes = rng.normal(size=(5, 4)).astype(np.float32)
    np.save(tmp_path / "seq.npy", codes)
    np.testing.assert_array_equal(expression_sequence(str(tmp_path / "seq.npy"), None, 3, 4), codes)
    np.testing.assert_allclose(expression_sequence(None, codes[:2], 3, 4), interpolate_keyframes(codes[:2], 3))
    with pytest.raises(ValueError, match=r"must hold codes \[T, 6\].*got shape \[5, 4\]"):
        expression_sequence(str(tmp_path / "seq.npy"), None, 3, 6)
    with pytest.raises(ValueError, match="no expression codes"):
        expression_sequence(None, None, 3, 4)
    codes[1, 1] = np.inf
    np.save(tmp_path / "bad.npy", codes)
    with pytest.raises(ValueError, match="non-finite"):
        expression_sequence(str(tmp_path / "bad.npy"), None, 3, 4)
    with pytest.raises(ValueError, match="cannot read"):
        expression_sequence(str(tmp_path / "missing.npy"), None, 3, 4)
