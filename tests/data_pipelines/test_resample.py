"""Crop/resize of images and maps against independent formulas; intrinsics against avat3r_jax.geometry."""

import jax.numpy as jnp
import numpy as np
import pytest

from avat3r_jax import geometry
from data_pipelines import resample


@pytest.mark.parametrize(("in_size", "out_size", "start", "length"), [(40, 10, 0.0, 40.0), (40, 64, 3.0, 30.0), (17, 17, 0.0, 17.0)])
def test_resize_weights_are_normalised_and_preserve_ramps(in_size, out_size, start, length):
    weights = resample.resize_weights(in_size, out_size, start, length)
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-6)
    # Symmetric filters reproduce a linear function of the pixel-centre coordinate away from the borders.
    ramp = 0.3 * (np.arange(in_size) + 0.5) - 2.0
    centers = start + (np.arange(out_size) + 0.5) * length / out_size
    support = max(1.0, length / out_size)
    interior = (centers - support > 0.5) & (centers + support < in_size - 0.5)
    np.testing.assert_allclose((weights @ ramp)[interior], (0.3 * centers - 2.0)[interior], atol=1e-4)


def test_identity_resize_is_exact(rng):
    values = rng.uniform(size=(9, 7, 2)).astype(np.float32)
    np.testing.assert_array_equal(resample.resize(values, (0.0, 0.0, 7.0, 9.0), 9, 7), values)
    # The same map through the weight matrices (a shifted box of the same size) is exact too.
    padded = np.pad(values, ((1, 0), (2, 0), (0, 0)))
    np.testing.assert_allclose(resample.resize(padded, (2.0, 1.0, 7.0, 9.0), 9, 7), values, atol=1e-6)


def test_area_downsample_by_two_averages_blocks(rng):
    values = rng.uniform(size=(8, 8, 3)).astype(np.float32)
    # A triangle filter of half-width 2 over pixel centres at offsets +-0.5 and +-1.5 from the output centre
    # weighs the inner pair 3/4 and the outer pair 1/4 (normalised), per axis.
    out = resample.resize(values, (0.0, 0.0, 8.0, 8.0), 4, 4)
    taps = np.array([0.25, 0.75, 0.75, 0.25]) / 2.0
    padded = np.pad(values, ((1, 1), (1, 1), (0, 0)))
    expected = np.zeros((4, 4, 3))
    for i in range(1, 3):  # interior outputs only (borders renormalise)
        for j in range(1, 3):
            block = padded[2 * i : 2 * i + 4, 2 * j : 2 * j + 4]
            expected[i, j] = np.einsum("a,b,abc->c", taps, taps, block)
    np.testing.assert_allclose(out[1:3, 1:3], expected[1:3, 1:3], atol=1e-5)


def test_nearest_picks_the_pixel_under_each_centre():
    values = np.arange(6 * 8).reshape(6, 8)
    out = resample.resample_nearest(values, (2.0, 1.0, 4.0, 4.0), 2, 2)  # every other pixel of the 4x4 box
    np.testing.assert_array_equal(out, [[values[2, 3], values[2, 5]], [values[4, 3], values[4, 5]]])


@pytest.mark.parametrize(("height", "width", "out"), [(100, 60, (32, 32)), (60, 100, (32, 32)), (90, 160, (16, 9)), (64, 64, (64, 64))])
def test_center_crop_box_has_output_aspect(height, width, out):
    left, top, box_w, box_h = resample.center_crop_box(height, width, *out)
    assert left >= 0 and top >= 0 and left + box_w <= width and top + box_h <= height
    assert abs(box_w / box_h - out[1] / out[0]) < 2.0 / min(box_w, box_h)
    assert box_w == width or box_h == height


def test_crop_resize_intrinsics_match_geometry_and_projection(rng):
    K = np.asarray(geometry.make_intrinsics(300.0, 310.0, 120.5, 90.25))
    box = (20.0, 7.0, 160.0, 120.0)
    out_h, out_w = 48, 64
    ours = resample.crop_resize_intrinsics(K, box, out_h, out_w)
    reference = geometry.resize_intrinsics(geometry.crop_intrinsics(jnp.asarray(K), box[0], box[1]), out_w / box[2], out_h / box[3])
    np.testing.assert_allclose(ours, np.asarray(reference), rtol=1e-6)
    # A point's pixel through the new camera is the old pixel mapped by the box transform.
    world_to_cam = np.asarray(geometry.look_at(jnp.array([0.1, 0.2, 1.0]), jnp.zeros(3)))
    points = rng.uniform(-0.1, 0.1, (20, 3)).astype(np.float32)
    uv, _ = geometry.project_points(jnp.asarray(K), jnp.asarray(world_to_cam), jnp.asarray(points))
    uv_new, _ = geometry.project_points(jnp.asarray(ours), jnp.asarray(world_to_cam), jnp.asarray(points))
    mapped = (np.asarray(uv) - np.array(box[:2])) * np.array([out_w / box[2], out_h / box[3]])
    np.testing.assert_allclose(np.asarray(uv_new), mapped, atol=1e-3)
