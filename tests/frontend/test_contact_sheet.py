"""The prepare contact sheet: feature PCA separates parts, depth colours only trusted pixels, the layout."""

import numpy as np

from avat3r_jax.frontend import contact_sheet


def test_feature_pca_separates_two_parts_and_ignores_a_constant_offset(rng):
    labels = (np.arange(16)[None, :, None] >= 8).repeat(2, 0).repeat(16, 2)  # [2, 16, 16]: left/right halves
    direction = rng.normal(size=12)
    features = 5.0 + labels[..., None] * direction + 0.01 * rng.normal(size=(2, 16, 16, 12))
    rgb = contact_sheet.feature_pca_rgb(features)
    assert rgb.shape == (2, 16, 16, 3) and rgb.min() >= 0 and rgb.max() <= 1
    first = rgb[..., 0]
    assert abs(first[labels].mean() - first[~labels].mean()) > 0.8  # the two parts at opposite ends of the first component


def test_colourize_blacks_out_invalid_pixels_and_spans_the_ramp():
    values = np.linspace(0, 1, 64).reshape(8, 8)
    valid = np.ones((8, 8), bool)
    valid[0] = False
    rgb = contact_sheet.colourize(values, valid)
    assert np.all(rgb[0] == 0)
    np.testing.assert_allclose(rgb[-1, -1], contact_sheet._RAMP[-1], atol=1e-6)
    np.testing.assert_allclose(rgb[1, 0], contact_sheet._RAMP[0], atol=0.05)


def test_sheet_layout_and_depth(rng):
    views, size = 3, 10
    world_to_cam = np.tile(np.eye(4), (views, 1, 1))
    posmaps = rng.uniform(0.5, 1.5, size=(views, size, size, 3))
    np.testing.assert_allclose(contact_sheet.camera_depth(posmaps, world_to_cam), posmaps[..., 2])
    sheet = contact_sheet.contact_sheet(
        rng.uniform(size=(views, size, size, 3)),
        rng.uniform(1, 5, size=(views, size, size)),
        rng.uniform(size=(views, size, size)) > 0.5,
        posmaps,
        world_to_cam,
        rng.normal(size=(views, 4, 4, 6)),
    )
    assert sheet.dtype == np.uint8 and sheet.shape == (views * (size + 2), 4 * (size + 2), 3)
    assert np.all(sheet[size : size + 2] == 255)  # the white gap between rows
