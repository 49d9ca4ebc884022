"""Images -> ViewGeometry through a tiny random-init DUSt3R; crops of a ViewGeometry on synthetic truth."""

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from avat3r_jax import geometry
from avat3r_jax.frontend import crops, pointmaps
from avat3r_jax.frontend.alignment import AlignmentSettings
from avat3r_jax.frontend.dust3r import Dust3r, Dust3rSettings
from avat3r_jax.frontend.dust3r_checkpoint import load_dust3r
from tests.frontend import synthetic_pairs

FIXTURES = pathlib.Path(__file__).parent / "fixtures"

# Network images of 16x32 (photos of 30x40 -> long side 32 -> 24x32 -> rows cropped to 16); few steps.
SETTINGS = pointmaps.PointMapSettings(alignment=AlignmentSettings(iterations=20), long_side=32)


@pytest.fixture(scope="module")
def model() -> Dust3r:
    return load_dust3r(FIXTURES / "dust3r_tiny.safetensors", settings=Dust3rSettings.tiny())  # random weights


def _photos(rng, count):
    return [rng.uniform(size=(30, 40, 3)).astype(np.float32) for _ in range(count)]


def test_view_geometry_of_two_photos(model, rng):
    geo, boxes = pointmaps.view_geometry(model, _photos(rng, 2), SETTINGS)
    assert geo.points.shape == (2, 16, 32, 3) and geo.K.shape == (2, 3, 3) and geo.world_to_cam.shape == (2, 4, 4)
    assert all((b.out_height, b.out_width) == (16, 32) for b in boxes)
    assert np.isfinite(np.asarray(geo.points)).all() and (np.asarray(geo.confidence) >= 1).all()
    np.testing.assert_array_equal(geo.valid, np.log(np.asarray(geo.confidence)) >= 0.5)


def test_known_cameras_are_kept_and_moved_to_the_network_crop(model, rng):
    K = geometry.make_intrinsics(jnp.array([120.0, 110.0]), jnp.array([120.0, 110.0]), 20.0, 15.0)
    w2c = geometry.orbit_cameras(2, 1.0, azimuth_range_degrees=(-20.0, 20.0))
    geo, boxes = pointmaps.view_geometry(model, _photos(rng, 2), SETTINGS, geometry.Cameras(K, w2c))
    np.testing.assert_array_equal(geo.world_to_cam, w2c)
    np.testing.assert_allclose(geo.K, jnp.stack([crops.crop_box_intrinsics(K[v], boxes[v]) for v in range(2)]), atol=1e-6)
    # 40x30 -> 32x24, rows 4..20 kept: fx scales by 0.8, cy = 15 * 0.8 - 4.
    np.testing.assert_allclose(geo.K[0, :2], [[96.0, 0.0, 16.0], [0.0, 96.0, 8.0]], atol=1e-4)


def test_one_photo_is_paired_with_itself(model, rng):
    geo, _ = pointmaps.view_geometry(model, _photos(rng, 1), SETTINGS)
    assert geo.points.shape == (1, 16, 32, 3)
    np.testing.assert_array_equal(geo.world_to_cam[0], np.eye(4))


def test_bad_image_inputs_raise_one_line(model, rng):
    with pytest.raises(ValueError, match="1 to 4 images, got 5"):
        pointmaps.view_geometry(model, _photos(rng, 5), SETTINGS)
    with pytest.raises(ValueError, match="1 to 4 images, got 0"):
        pointmaps.view_geometry(model, [], SETTINGS)
    with pytest.raises(ValueError, match="different DUSt3R sizes"):
        pointmaps.view_geometry(model, [np.zeros((30, 40, 3)), np.zeros((40, 30, 3))], SETTINGS)
    with pytest.raises(ValueError, match=r"must be \[H, W, 3\]"):
        pointmaps.view_geometry(model, [np.zeros((30, 40))], SETTINGS)
    with pytest.raises(ValueError, match="known cameras need 2\\+ images"):
        pointmaps.view_geometry(model, _photos(rng, 1), SETTINGS, geometry.Cameras(jnp.eye(3)[None], jnp.eye(4)[None]))


def test_crop_view_geometry_keeps_points_on_the_cropped_rays():
    """Synthetic truth cropped and resized: the resampled points project to the crop's pixel centres."""
    scene = synthetic_pairs.make_scene(2, height=48, width=64, seed=3)
    geo = pointmaps.ViewGeometry(
        K=jnp.asarray(scene.K, jnp.float32),
        world_to_cam=jnp.asarray(scene.world_to_cam, jnp.float32),
        points=jnp.asarray(scene.points, jnp.float32),
        confidence=jnp.where(jnp.asarray(scene.head), 5.0, 1.2),
        valid=jnp.asarray(scene.head),
    )
    boxes = [crops.CropBox(12.0, 6.0, 40.0, 30.0, 36, 48), crops.CropBox(-4.0, 10.0, 30.0, 30.0, 36, 48)]  # the second leaves the image
    out = pointmaps.crop_view_geometry(geo, boxes)
    assert out.points.shape == (2, 36, 48, 3)
    np.testing.assert_array_equal(out.world_to_cam, geo.world_to_cam)
    uv, _ = geometry.project_points(out.K, out.world_to_cam, out.points.reshape(2, -1, 3))
    grid = np.broadcast_to(geometry.pixel_grid(36, 48).reshape(-1, 2), uv.shape)
    offset = np.linalg.norm(np.asarray(uv) - grid, axis=-1).reshape(2, 36, 48)
    for v, box in enumerate(boxes):
        # Where all four source neighbours are valid the point lies on the crop pixel's ray (up to the
        # surface's curvature between rays); at the mask's edge the valid neighbours' weights are
        # renormalised, which moves the point by at most half a source pixel.
        coverage, _ = crops.resample_map(jnp.asarray(scene.head[v], jnp.float32)[..., None], jnp.ones((48, 64), bool), box)
        interior = (np.asarray(coverage[..., 0]) > 1 - 1e-6) & np.asarray(out.valid[v])
        edge = np.asarray(out.valid[v]) & ~interior
        assert interior.sum() > 400 and edge.sum() > 20
        assert offset[v][interior].max() < 0.02
        assert offset[v][edge].max() <= 0.5 * box.scale[0]
    assert not np.asarray(out.valid[1, :, :4]).any()  # left of the image: invalid
    np.testing.assert_allclose(out.confidence[0][np.asarray(out.valid[0])], 5.0, rtol=1e-6)
