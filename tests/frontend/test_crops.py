"""Crop/resize geometry: intrinsics by projection, resampling against direct formulas, DUSt3R's sizes."""

import jax.numpy as jnp
import numpy as np
import pytest

from avat3r_jax import geometry
from avat3r_jax.frontend import crops

BOXES = [
    crops.CropBox(left=10.3, top=-4.0, width=50.0, height=37.5, out_height=24, out_width=32),  # shrink, past the top edge
    crops.CropBox(left=3.0, top=5.0, width=12.0, height=9.0, out_height=36, out_width=48),  # enlarge
    crops.CropBox(left=-8.0, top=2.5, width=40.0, height=40.0, out_height=20, out_width=30),  # aspect change, past the left
]


@pytest.mark.parametrize("box", BOXES)
def test_crop_intrinsics_move_projections_with_the_box(box, rng):
    K = geometry.make_intrinsics(70.0, 66.0, 31.0, 23.5)
    w2c = geometry.look_at(jnp.array([0.2, -0.1, 1.0]), jnp.zeros(3))
    points = jnp.asarray(rng.normal(size=(200, 3)) * 0.2, jnp.float32)
    uv, _ = geometry.project_points(K, w2c, points)
    uv_crop, _ = geometry.project_points(crops.crop_box_intrinsics(K, box), w2c, points)
    expected = (np.asarray(uv, np.float64) - [box.left, box.top]) * np.array(box.scale)
    np.testing.assert_allclose(np.asarray(uv_crop), expected, atol=1e-4)
    np.testing.assert_allclose(np.asarray(box.map_pixels(uv)), expected, atol=1e-4)


def _bilinear_reference(values, valid, box):
    """Loop-form float64 reference: bilinear over valid neighbours, valid where the nearest pixel is."""
    height, width = valid.shape
    out = np.zeros((box.out_height, box.out_width, values.shape[-1]))
    out_valid = np.zeros((box.out_height, box.out_width), bool)
    sx, sy = box.scale
    for r in range(box.out_height):
        for c in range(box.out_width):
            x, y = (c + 0.5) / sx + box.left, (r + 0.5) / sy + box.top
            xn, yn = int(np.floor(x)), int(np.floor(y))
            if not (0 <= xn < width and 0 <= yn < height and valid[yn, xn]):
                continue
            fx, fy = x - 0.5, y - 0.5
            x0, y0 = int(np.floor(fx)), int(np.floor(fy))
            acc, total = np.zeros(values.shape[-1]), 0.0
            for yi in (y0, y0 + 1):
                for xi in (x0, x0 + 1):
                    if 0 <= xi < width and 0 <= yi < height and valid[yi, xi]:
                        w = (1 - abs(fx - xi)) * (1 - abs(fy - yi))
                        acc, total = acc + w * values[yi, xi], total + w
            if total > 0:
                out[r, c], out_valid[r, c] = acc / total, True
    return out, out_valid


@pytest.mark.parametrize("box", BOXES)
def test_resample_map_matches_direct_formula_and_never_mixes_invalid(box, rng):
    values = rng.normal(size=(40, 60, 3))
    valid = rng.uniform(size=(40, 60)) > 0.3
    poisoned = np.where(valid[..., None], values, 1e6)  # an invalid pixel leaking in would show
    got, got_valid = crops.resample_map(jnp.asarray(poisoned, jnp.float32), jnp.asarray(valid), box)
    want, want_valid = _bilinear_reference(values, valid, box)
    np.testing.assert_array_equal(np.asarray(got_valid), want_valid)
    np.testing.assert_allclose(np.asarray(got)[want_valid], want[want_valid], atol=1e-5)
    assert want_valid.any()


def test_resample_image_bilinear_upsampling_matches_direct_formula(rng):
    image = rng.uniform(size=(30, 40, 3))
    box = crops.CropBox(left=6.0, top=4.0, width=16.0, height=12.0, out_height=30, out_width=40)  # 2.5x, inside
    got = np.asarray(crops.resample_image(jnp.asarray(image, jnp.float32), box, method="linear"))
    want, _ = _bilinear_reference(image, np.ones((30, 40), bool), box)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_resample_image_shrinks_a_smooth_image_and_fills_outside(rng):
    v, u = np.meshgrid(np.arange(64) + 0.5, np.arange(96) + 0.5, indexing="ij")
    image = np.stack([0.2 + 0.005 * u, 0.3 + 0.004 * v, 0.5 + 0.002 * (u - v)], -1)
    box = crops.CropBox(left=-12.0, top=8.0, width=72.0, height=48.0, out_height=16, out_width=24)  # 3x shrink
    got = np.asarray(crops.resample_image(jnp.asarray(image, jnp.float32), box, fill=1.0))
    x = (np.arange(24) + 0.5) * 3 - 12.0
    y = (np.arange(16) + 0.5) * 3 + 8.0
    yy, xx = np.meshgrid(y, x, indexing="ij")
    want = np.stack([0.2 + 0.005 * xx, 0.3 + 0.004 * yy, 0.5 + 0.002 * (xx - yy)], -1)
    interior = (xx > 6) & (xx < 90) & (yy > 6) & (yy < 58)  # a kernel's reach from the borders
    np.testing.assert_allclose(got[interior], want[interior], atol=2e-3)
    np.testing.assert_array_equal(got[xx < 0], 1.0)


@pytest.mark.parametrize(
    "height, width, out_hw",
    [(3024, 4032, (384, 512)), (1080, 1920, (288, 512)), (1000, 1000, (384, 512)), (4000, 3000, (512, 384)), (333, 500, (336, 512))],
)
def test_dust3r_network_box_sizes(height, width, out_hw):
    """Sizes as dust3r's load_images(size=512) gives them (worked by hand from its rounding and crop)."""
    box = crops.dust3r_network_box(height, width)
    assert (box.out_height, box.out_width) == out_hw
    # The resized image's integer centre (dust3r's crop centre) maps to the output centre.
    longest = max(height, width)
    rw, rh = round(width * 512 / longest), round(height * 512 / longest)
    centre = jnp.array([(rw // 2) * width / rw, (rh // 2) * height / rh])
    np.testing.assert_allclose(box.map_pixels(centre), [out_hw[1] / 2, out_hw[0] / 2], atol=1e-3)


def test_dust3r_box_equals_resize_then_integer_crop():
    """Height 333 -> resized 341 rows, crop rows 2..338 (cy=170, half 168): the box in source pixels."""
    box = crops.dust3r_network_box(333, 500)
    assert box.top == pytest.approx(2 * 333 / 341)
    assert box.height == pytest.approx(336 * 333 / 341)
    assert box.left == pytest.approx(0.0) and box.width == pytest.approx(500.0)


def test_reframe_box_composes_with_the_outer_box():
    photo_to_net = crops.dust3r_network_box(1080, 1920)
    head = crops.CropBox(left=700.0, top=200.0, width=500.0, height=500.0, out_height=64, out_width=64)
    net_to_head = crops.reframe_box(head, photo_to_net)
    uv = jnp.array([[750.0, 300.0], [1100.0, 650.0]])
    np.testing.assert_allclose(net_to_head.map_pixels(photo_to_net.map_pixels(uv)), head.map_pixels(uv), atol=1e-3)


def test_bad_boxes_raise():
    with pytest.raises(ValueError, match="positive sizes"):
        crops.CropBox(0, 0, 0.0, 10, 8, 8)
    with pytest.raises(ValueError, match="too small"):
        crops.dust3r_network_box(1, 512)
