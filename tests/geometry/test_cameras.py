import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avat3r_jax import geometry as geo


def random_rotation(rng, n):
    q = rng.normal(size=(n, 4))
    return np.asarray(geo.quaternion_to_rotation(jnp.asarray(q)))


def random_cameras(rng, n):
    rotation = random_rotation(rng, n)
    translation = rng.normal(size=(n, 3))
    w2c = np.tile(np.eye(4), (n, 1, 1))
    w2c[:, :3, :3], w2c[:, :3, 3] = rotation, translation
    K = np.asarray(geo.make_intrinsics(rng.uniform(50, 200, n), rng.uniform(50, 200, n), rng.uniform(10, 60, n), rng.uniform(10, 60, n)))
    return jnp.asarray(K, jnp.float32), jnp.asarray(w2c, jnp.float32)


def test_project_unproject_round_trip(rng):
    K, w2c = random_cameras(rng, 5)
    uv = jnp.asarray(rng.uniform(0, 64, size=(5, 100, 2)), jnp.float32)
    depth = jnp.asarray(rng.uniform(0.5, 5, size=(5, 100)), jnp.float32)
    points = geo.unproject_points(K, w2c, uv, depth)
    uv2, depth2 = jax.jit(geo.project_points)(K, w2c, points)
    np.testing.assert_allclose(uv2, uv, atol=2e-3)
    np.testing.assert_allclose(depth2, depth, rtol=1e-5)


def test_project_matches_independent_formula(rng):
    K, w2c = random_cameras(rng, 3)
    points = rng.normal(size=(3, 20, 3)) + np.array([0, 0, 6.0])
    uv, depth = geo.project_points(K, w2c, jnp.asarray(points, jnp.float32))
    for c in range(3):
        homo = np.concatenate([points[c], np.ones((20, 1))], 1) @ np.asarray(w2c[c], np.float64).T
        pix = homo[:, :3] @ np.asarray(K[c], np.float64).T
        np.testing.assert_allclose(uv[c], pix[:, :2] / pix[:, 2:], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(depth[c], homo[:, 2], rtol=1e-5, atol=1e-5)


def test_invert_rigid_matches_matrix_inverse(rng):
    _, w2c = random_cameras(rng, 7)
    np.testing.assert_allclose(geo.invert_rigid(w2c), np.linalg.inv(np.asarray(w2c, np.float64)), atol=1e-5)


def test_look_at_centres_target_and_is_opencv():
    eye = jnp.array([[0.0, 0.0, 3.0], [2.0, 1.0, -1.0]])
    w2c = geo.look_at(eye, jnp.zeros_like(eye))
    np.testing.assert_allclose(geo.camera_centers(w2c), eye, atol=1e-6)
    target_cam = geo.transform_points(w2c, jnp.zeros((2, 1, 3)))
    np.testing.assert_allclose(target_cam[:, 0, :2], 0.0, atol=1e-6)
    assert np.all(target_cam[:, 0, 2] > 0)  # Target in front (+z).
    # World up (+y) appears up in the image, i.e. at negative camera y.
    up_point = geo.transform_points(w2c, jnp.array([[[0.0, 0.5, 0.0]]] * 2))
    assert np.all(up_point[:, 0, 1] < 0)
    rotation = w2c[:, :3, :3]
    np.testing.assert_allclose(rotation @ jnp.swapaxes(rotation, -1, -2), np.eye(3)[None].repeat(2, 0), atol=1e-6)
    np.testing.assert_allclose(jnp.linalg.det(rotation), 1.0, atol=1e-6)


def test_orbit_cameras_distance_and_spacing():
    w2c = geo.orbit_cameras(6, radius=2.5, elevation_degrees=20.0, target=(0.0, 0.1, 0.0))
    centers = geo.camera_centers(w2c)
    np.testing.assert_allclose(jnp.linalg.norm(centers - jnp.array([0.0, 0.1, 0.0]), axis=-1), 2.5, rtol=1e-5)
    np.testing.assert_allclose(centers[:, 1] - 0.1, 2.5 * np.sin(np.deg2rad(20.0)), rtol=1e-5)
    gaps = jnp.linalg.norm(centers - jnp.roll(centers, 1, 0), axis=-1)
    np.testing.assert_allclose(gaps, gaps[0], rtol=1e-4)


def test_intrinsics_resize_and_crop_keep_pixel_centres(rng):
    K = geo.intrinsics_from_fov(40.0, 64, 48)
    point = jnp.array([[[0.1, -0.2, 2.0]]])
    uv, _ = geo.project_points(K[None], jnp.eye(4)[None], point)
    uv_half, _ = geo.project_points(geo.resize_intrinsics(K, 0.5, 0.5)[None], jnp.eye(4)[None], point)
    np.testing.assert_allclose(uv_half, uv * 0.5, rtol=1e-6)
    uv_crop, _ = geo.project_points(geo.crop_intrinsics(K, 5.0, 7.0)[None], jnp.eye(4)[None], point)
    np.testing.assert_allclose(uv_crop, uv - jnp.array([5.0, 7.0]), rtol=1e-6)


def test_cameras_rejects_bad_shapes():
    with pytest.raises(ValueError, match="world_to_cam"):
        geo.Cameras(jnp.zeros((2, 3, 3)), jnp.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="batch shape"):
        geo.Cameras(jnp.zeros((2, 3, 3)), jnp.zeros((3, 4, 4)))


def test_pixel_grid_centres():
    grid = geo.pixel_grid(2, 3)
    assert grid.shape == (2, 3, 2)
    np.testing.assert_allclose(grid[0, 0], [0.5, 0.5])
    np.testing.assert_allclose(grid[1, 2], [2.5, 1.5])
