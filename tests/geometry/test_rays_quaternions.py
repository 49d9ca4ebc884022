import jax.numpy as jnp
import numpy as np

from avat3r_jax import geometry as geo
from tests.geometry.test_cameras import random_cameras


def test_plucker_rays_unit_and_moment_consistent(rng):
    K, w2c = random_cameras(rng, 3)
    rays = geo.plucker_rays(K, w2c, 9, 13)
    assert rays.shape == (3, 9, 13, 6)
    d, m = rays[..., :3], rays[..., 3:]
    np.testing.assert_allclose(jnp.linalg.norm(d, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(jnp.sum(d * m, -1), 0.0, atol=1e-4)  # d . (o x d) = 0
    # The moment is the same for any point on the ray: o + t d with the camera centre o.
    centers = geo.camera_centers(w2c)[:, None, None, :]
    np.testing.assert_allclose(jnp.cross(centers + 2.7 * d, d), m, atol=1e-4)


def test_rays_hit_the_pixels_they_come_from(rng):
    K, w2c = random_cameras(rng, 2)
    origins, dirs = geo.camera_rays(K, w2c, 5, 7)
    points = (origins + 3.0 * dirs).reshape(2, -1, 3)
    uv, depth = geo.project_points(K, w2c, points)
    np.testing.assert_allclose(uv.reshape(2, 5, 7, 2), jnp.broadcast_to(geo.pixel_grid(5, 7), (2, 5, 7, 2)), atol=1e-3)
    assert np.all(depth > 0)


def test_quaternion_rotation_round_trip_and_orthonormality(rng):
    q = jnp.asarray(rng.normal(size=(200, 4)), jnp.float32)
    rotation = geo.quaternion_to_rotation(q)
    np.testing.assert_allclose(rotation @ jnp.swapaxes(rotation, -1, -2), np.broadcast_to(np.eye(3), (200, 3, 3)), atol=1e-5)
    np.testing.assert_allclose(jnp.linalg.det(rotation), 1.0, atol=1e-5)
    q_unit = geo.normalize_quaternion(q)
    q_unit = jnp.where(q_unit[:, :1] < 0, -q_unit, q_unit)
    np.testing.assert_allclose(geo.rotation_to_quaternion(rotation), q_unit, atol=1e-5)


def test_quaternion_rotation_matches_rodrigues(rng):
    axis = rng.normal(size=(50, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    angle = rng.uniform(-np.pi, np.pi, 50)
    q = np.concatenate([np.cos(angle / 2)[:, None], np.sin(angle / 2)[:, None] * axis], 1)
    skew = np.zeros((50, 3, 3))
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    skew -= np.swapaxes(skew, 1, 2)
    rodrigues = np.eye(3) + np.sin(angle)[:, None, None] * skew + (1 - np.cos(angle))[:, None, None] * skew @ skew
    np.testing.assert_allclose(geo.quaternion_to_rotation(jnp.asarray(q, jnp.float32)), rodrigues, atol=1e-5)


def test_quaternion_multiply_composes_rotations(rng):
    a, b = (jnp.asarray(rng.normal(size=(20, 4)), jnp.float32) for _ in range(2))
    composed = geo.quaternion_to_rotation(geo.quaternion_multiply(a, b))
    np.testing.assert_allclose(composed, geo.quaternion_to_rotation(a) @ geo.quaternion_to_rotation(b), atol=1e-5)


def test_zero_quaternion_is_identity():
    np.testing.assert_allclose(geo.quaternion_to_rotation(jnp.zeros(4)), np.eye(3), atol=1e-7)


def test_covariance_symmetric_positive_definite(rng):
    scales = jnp.asarray(rng.uniform(1e-3, 1.0, size=(100, 3)), jnp.float32)
    q = jnp.asarray(rng.normal(size=(100, 4)), jnp.float32)
    cov = np.asarray(geo.covariance_from_scale_rotation(scales, q), np.float64)
    np.testing.assert_allclose(cov, np.swapaxes(cov, 1, 2), atol=1e-7)
    eig = np.linalg.eigvalsh(cov)
    assert np.all(eig > 0)
    np.testing.assert_allclose(np.sort(eig, 1), np.sort(np.asarray(scales, np.float64) ** 2, 1), rtol=1e-3, atol=1e-8)
