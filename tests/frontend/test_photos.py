"""Photos in: EXIF orientation, alpha masks, clear errors, and head-centred crops that match the training data."""

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from avat3r_jax.frontend import photos
from avat3r_jax.frontend.head_frame import TRAINING_RIG
from avat3r_jax.geometry import look_at, make_intrinsics
from data_pipelines import resample
from data_pipelines.synthetic import head, render, rig
from tests.frontend.synthetic_photos import shoot


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:5, :, 0] = 255  # a red band along the top of the stored (sideways) image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": how phones store portrait photos
    Image.fromarray(pixels).save(tmp_path / "a.jpg", exif=exif, quality=95)
    photo = photos.read_photo(tmp_path / "a.jpg")
    assert photo.size == (30, 20) and photo.alpha is None
    assert photo.rgb[:, -5:, 0].mean() > 0.9 and photo.rgb[:, :-6, 0].mean() < 0.1  # the band is now on the right


def test_alpha_becomes_the_mask(tmp_path):
    pixels = np.full((8, 6, 4), 200, np.uint8)
    pixels[..., 3] = 0
    pixels[2:6, 1:5, 3] = 255
    Image.fromarray(pixels, "RGBA").save(tmp_path / "b.png")
    Image.fromarray(pixels[..., :3]).save(tmp_path / "c.png")
    with_alpha, without = photos.read_photos(tmp_path)
    np.testing.assert_array_equal(with_alpha.alpha[..., 0], pixels[..., 3] / 255.0)
    np.testing.assert_allclose(with_alpha.rgb, 200 / 255.0)
    assert without.alpha is None


@pytest.mark.parametrize("count", [0, 5])
def test_wrong_photo_count_is_one_line(tmp_path, count):
    for i in range(count):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not a photo")
    with pytest.raises(photos.PhotoError, match=f"holds {count} photos.*give 1 to 4") as error:
        photos.read_photos(tmp_path)
    assert "\n" not in str(error.value)


def test_unreadable_photo_is_one_line(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(photos.PhotoError, match=r"broken\.jpg cannot be read as an image") as error:
        photos.read_photos(tmp_path)
    assert "\n" not in str(error.value)


def test_crop_of_a_training_view_is_the_whole_view():
    """A photo taken by the training rig is already a training view: its crop is (nearly) the full image."""
    size = 64
    K, world_to_cam = rig.dome_cameras(np.random.default_rng(0), 16, size)
    for k, w in zip(K, world_to_cam):
        left, top, width, height = photos.head_crop_box(k, w, size, size)
        # The rig jitters focal length and distance by +-5% and aim and principal point by about 1%.
        assert abs(width / size - 1) < 0.11 and width == pytest.approx(height)
        assert abs(left) < 0.08 * size and abs(top) < 0.08 * size


def alpha_moments(alpha: np.ndarray) -> tuple[float, np.ndarray]:
    """Area fraction and centroid (in units of the image size) of a mask ``[H, W]``."""
    rows, cols = np.mgrid[: alpha.shape[0], : alpha.shape[1]] + 0.5
    total = alpha.sum()
    return total / alpha.size, np.array([(rows * alpha).sum(), (cols * alpha).sum()]) / total / np.array(alpha.shape)


def test_crop_of_a_phone_photo_frames_the_head_as_in_training():
    """A wide-angle portrait photo from 60 cm, aimed off the head: its crop frames the head like a training view."""
    training = shoot()
    identity = head.sample_identity(np.random.default_rng(3))  # the head of shoot()
    height, width = 96, 72
    eye = np.array([[0.15, 0.05, 0.58]], np.float32)
    phone_w2c = np.asarray(look_at(eye, np.array([[0.04, 0.03, 0.0]], np.float32)))  # aimed 4 cm beside the head
    phone_K = np.asarray(make_intrinsics(*(np.array([v], np.float32) for v in (1.1 * width, 1.1 * width, width / 2, height / 2))))
    photo = render.render_views(identity, jnp.asarray(head.NEUTRAL_EXPRESSION), phone_K, phone_w2c, jnp.ones(3), height=height, width=width)
    size = training.images.shape[1]
    box = photos.head_crop_box(phone_K[0], phone_w2c[0], size, size)
    assert photos.head_in_photo(phone_K[0], phone_w2c[0], (height, width)) == pytest.approx(1.0)
    crop_alpha = resample.resize(np.asarray(photo.alpha[0])[..., None], box, size, size)[..., 0]
    crop_K = resample.crop_resize_intrinsics(phone_K[0], box, size, size)
    distance = np.linalg.norm(eye[0] - np.asarray(TRAINING_RIG.look_at))
    assert crop_K[0, 0] == pytest.approx(TRAINING_RIG.focal_ratio * size * distance / TRAINING_RIG.camera_distance, rel=1e-5)
    area, centroid = alpha_moments(crop_alpha)
    # The training views of the same head: same apparent size (the 60 cm photo sees more of the
    # head's sides, and the rig's distances and focals vary by 5%: 20% area), centred likewise.
    train_area, train_centroid = zip(*(alpha_moments(a) for a in training.alpha), strict=True)
    assert abs(area / np.mean(train_area) - 1) < 0.2, (area, train_area)
    np.testing.assert_allclose(centroid, np.mean(train_centroid, 0), atol=0.06)
    # Uncropped, the head is off-centre and small in the photo.
    assert alpha_moments(np.asarray(photo.alpha[0]))[0] < 0.6 * np.mean(train_area)


def test_head_in_photo_reports_a_head_cut_by_the_frame():
    K = np.array([[100.0, 0, 50], [0, 100, 50], [0, 0, 1]])
    w2c = np.asarray(look_at(np.array([0.0, 0.0, 1.0], np.float32), np.array([0.5, -0.01, 0.0], np.float32)))
    assert 0.3 < photos.head_in_photo(K, w2c, (100, 100)) < 0.7  # the head centre sits at the photo's left edge
