"""The head-frame rule: training-rig cameras seen through a random similarity come back to the training frame."""

import inspect

import numpy as np
import pytest

from avat3r_jax.frontend import head_frame
from data_pipelines.synthetic import rig
from tests.frontend.synthetic_photos import shoot

RIG = head_frame.TrainingRig()


def random_similarity(rng: np.random.Generator) -> tuple[np.ndarray, float, np.ndarray]:
    """``x_source = scale * Q @ x_head + offset``: a random rotation, a scale in [0.05, 20], an offset."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q, float(np.exp(rng.uniform(np.log(0.05), np.log(20.0)))), rng.normal(scale=5.0, size=3)


def cameras_to_source(world_to_cam: np.ndarray, q: np.ndarray, scale: float, offset: np.ndarray) -> np.ndarray:
    """Head-frame cameras -> the same cameras in the source frame (camera coordinates scale with the world)."""
    out = np.array(world_to_cam, np.float64)
    rotation = out[:, :3, :3] @ q.T
    out[:, :3, 3] = scale * out[:, :3, 3] - np.einsum("vij,j->vi", rotation, offset)
    out[:, :3, :3] = rotation
    return out


def rotation_error_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle of ``a @ b^T`` for rotations ``[..., 3, 3]``."""
    cos = (np.trace(a @ np.swapaxes(b, -1, -2), axis1=-2, axis2=-1) - 1) / 2
    return np.rad2deg(np.arccos(np.clip(cos, -1, 1)))


def test_rig_facts_are_the_synthetic_rig_defaults():
    defaults = {name: p.default for name, p in inspect.signature(rig.dome_cameras).parameters.items()}
    assert RIG.camera_distance == defaults["distance"]
    assert RIG.focal_ratio == defaults["focal_ratio"]
    assert RIG.yaw_range_degrees == defaults["yaw_range_degrees"]
    assert RIG.elevation_range_degrees == defaults["elevation_range_degrees"]
    # The rig aims its cameras at (0, -0.01, 0) +- 0.01 per axis: the look-at point is the mean.
    _, world_to_cam = rig.dome_cameras(np.random.default_rng(0), 64, 32)
    centres = head_frame.camera_centres(world_to_cam)
    centre, _ = head_frame.nearest_point_to_lines(centres, world_to_cam[:, 2, :3])
    np.testing.assert_allclose(centre, RIG.look_at, atol=0.003)


@pytest.mark.parametrize("views", [2, 3, 4, 8])
def test_random_similarity_of_training_cameras_comes_back_to_the_training_frame(views):
    rng = np.random.default_rng(views)
    for _ in range(10):
        _, truth = rig.dome_cameras(rng, views, 64)
        q, scale, offset = random_similarity(rng)
        frame = head_frame.fit_head_frame(cameras_to_source(truth, q, scale, offset))
        assert frame.centre_from == "optical axes"
        recovered = frame.transform.world_to_cam(cameras_to_source(truth, q, scale, offset))
        # Bounds: the rig jitters each camera's aim by +-1 cm, its distance by +-5% and its yaw and
        # elevation by +-3 degrees, which the rule cannot know (over 200 draws per view count the worst
        # were 6.5 cm, 3.5 degrees and 6% scale).
        position_error = np.linalg.norm(head_frame.camera_centres(recovered) - head_frame.camera_centres(truth), axis=-1)
        assert np.sqrt(np.mean(position_error**2)) < 0.08, position_error  # metres, cameras 1 m away
        assert rotation_error_degrees(recovered[:, :3, :3], truth[:, :3, :3]).max() < 4.5
        # Up is exact: the rig's right axes are horizontal, as in upright photos.
        np.testing.assert_allclose(frame.transform.rotation[1], q[:, 1], atol=1e-4)
        np.testing.assert_allclose(frame.transform.scale * scale, 1.0, rtol=0.07)
        assert frame.residual.outside_rig == ()


def test_rule_is_invariant_to_the_source_frame():
    rng = np.random.default_rng(1)
    _, truth = rig.dome_cameras(rng, 4, 64)
    direct = head_frame.fit_head_frame(truth).transform.world_to_cam(truth)
    for _ in range(5):
        source = cameras_to_source(truth, *random_similarity(rng))
        np.testing.assert_allclose(head_frame.fit_head_frame(source).transform.world_to_cam(source), direct, atol=1e-6)


def test_points_follow_the_cameras():
    rng = np.random.default_rng(2)
    _, truth = rig.dome_cameras(rng, 3, 64)
    q, scale, offset = random_similarity(rng)
    frame = head_frame.fit_head_frame(cameras_to_source(truth, q, scale, offset))
    points = rng.normal(scale=0.1, size=(50, 3))
    cam = frame.transform.world_to_cam(cameras_to_source(truth, q, scale, offset))
    moved = frame.transform.points(scale * points @ q.T + offset)
    # The same points seen from the same cameras: camera-frame coordinates agree up to the fitted scale.
    in_truth = np.einsum("vij,nj->vni", truth[:, :3, :3], points) + truth[:, None, :3, 3]
    in_fit = np.einsum("vij,nj->vni", cam[:, :3, :3], moved) + cam[:, None, :3, 3]
    np.testing.assert_allclose(in_fit, in_truth * frame.transform.scale * scale, atol=1e-5)  # float32 rig rotations


def test_surface_depth_is_the_synthetic_heads_median_depth():
    photos = shoot()
    for view in range(len(photos.images)):
        on_head = photos.alpha[view] > 0.5
        depth = (np.einsum("ij,hwj->hwi", photos.world_to_cam[view, :3, :3], photos.position[view]) + photos.world_to_cam[view, :3, 3])[
            ..., 2
        ]
        distance = np.linalg.norm(head_frame.camera_centres(photos.world_to_cam[view]) - RIG.look_at)
        assert abs(np.median(depth[on_head]) / distance - RIG.surface_depth) < 0.015  # 32 views of 4 heads: 0.929-0.950


def test_one_photo_is_placed_from_its_points():
    photos = shoot()
    rng = np.random.default_rng(4)
    for view in range(len(photos.images)):
        q, scale, offset = random_similarity(rng)
        truth = photos.world_to_cam[view : view + 1].astype(np.float64)
        on_head = photos.alpha[view] > 0.5
        points = scale * photos.position[view][on_head] @ q.T + offset
        frame = head_frame.fit_head_frame(cameras_to_source(truth, q, scale, offset), points)
        assert frame.centre_from == "points"
        recovered = frame.transform.world_to_cam(cameras_to_source(truth, q, scale, offset))
        # One view: the head centre's depth comes from the surface depth (bound 6% of the distance),
        # up is the camera's own up (off by the camera's elevation) and forward its own direction.
        assert np.linalg.norm(head_frame.camera_centres(recovered)[0] - RIG.look_at) == pytest.approx(1.0)
        assert abs(frame.transform.scale * scale - 1) < 0.06
        elevation = np.rad2deg(np.arcsin(-truth[0, 2, 1]))  # the camera looks down by its elevation
        up_error = np.rad2deg(np.arccos(np.clip(frame.transform.rotation[1] @ q[:, 1], -1, 1)))
        assert abs(up_error - abs(elevation)) < 1.0


def test_residual_names_cameras_outside_the_rig():
    _, truth = rig.dome_cameras(np.random.default_rng(5), 4, 64)
    assert head_frame.rig_residual(truth).outside_rig == ()
    far = truth.copy()
    far[0, :3, 3] *= 1.5
    assert any("distances" in line for line in head_frame.rig_residual(far).outside_rig)
    rolled = truth.copy()
    angle = np.deg2rad(30)
    roll = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    rolled[1, :3, :] = roll @ truth[1, :3, :]
    residual = head_frame.rig_residual(rolled)
    assert any("is rolled by" in line for line in residual.outside_rig)
    assert 25 < abs(residual.roll_degrees[1]) <= 30  # the right axis leaves the horizontal by 30 deg times cos(elevation)
    assert np.abs(np.delete(residual.roll_degrees, 1)).max() < 1e-3
    assert "outside the training rig" in residual.summary()


def test_one_camera_without_points_is_refused():
    _, truth = rig.dome_cameras(np.random.default_rng(6), 1, 64)
    with pytest.raises(ValueError, match="points are needed"):
        head_frame.fit_head_frame(truth)
