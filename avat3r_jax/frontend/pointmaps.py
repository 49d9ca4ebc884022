"""Images -> DUSt3R point maps and cameras in our conventions: preprocessing, pair predictions, alignment.

``view_geometry`` takes 1-4 images of any (common aspect) size, resamples them to DUSt3R's network
resolution (``crops.dust3r_network_box``), predicts every ordered pair (one image is paired with a
copy of itself, as dust3r's demo does), and aligns them (``alignment.global_align``; with known
cameras ``alignment.align_to_cameras``; one image ``alignment.align_single_view``). The result is a
:class:`ViewGeometry` at the network resolution; ``crop_view_geometry`` maps it into any crop.

Validity: AVAT3R masks DUSt3R points "with confidence below 0.5". DUSt3R's confidence is
``1 + exp(x) >= 1``, so a threshold on it at 0.5 would mask nothing; we read the paper's number on
the scale dust3r's alignment weights points by, ``log(confidence)`` (its ``conf_trf='log'``):
``valid = log(conf) >= 0.5``, i.e. ``conf >= e^0.5 ~= 1.65`` (and the point in front of its camera).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from avat3r_jax.frontend import alignment, crops
from avat3r_jax.frontend.dust3r import Dust3r, predict_pairs
from avat3r_jax.frontend.pairs import ordered_pairs
from avat3r_jax.geometry import Cameras


@dataclasses.dataclass(frozen=True)
class PointMapSettings:
    alignment: alignment.AlignmentSettings = dataclasses.field(default_factory=alignment.AlignmentSettings)
    min_log_confidence: float = 0.5  # AVAT3R's 0.5 on log(conf); see the module docstring
    long_side: int = crops.DUST3R_LONG_SIDE
    patch_size: int = crops.DUST3R_PATCH_SIZE


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ViewGeometry:
    """Cameras and world point maps of ``V`` views at one resolution ``H x W``.

    ``K [V, 3, 3]`` (pixel centres at +0.5), ``world_to_cam [V, 4, 4]`` (OpenCV), ``points [V, H, W, 3]``
    (world), ``confidence [V, H, W]`` (DUSt3R's, >= 1; 0 where a crop left the image), ``valid [V, H, W]``.
    """

    K: jax.Array
    world_to_cam: jax.Array
    points: jax.Array
    confidence: jax.Array
    valid: jax.Array


def network_boxes(sizes: Sequence[tuple[int, int]], settings: PointMapSettings = PointMapSettings()) -> tuple[crops.CropBox, ...]:
    """DUSt3R's box for each image ``(height, width)``; all must give one network size (pairs share it)."""
    if not 1 <= len(sizes) <= alignment.MAX_VIEWS:
        raise ValueError(f"point maps take 1 to {alignment.MAX_VIEWS} images, got {len(sizes)}")
    boxes = tuple(crops.dust3r_network_box(h, w, settings.long_side, settings.patch_size) for h, w in sizes)
    shapes = sorted({(b.out_height, b.out_width) for b in boxes})
    if len(shapes) > 1:
        raise ValueError(f"images {list(sizes)} give different DUSt3R sizes {shapes}; give images of one aspect ratio")
    return boxes


def from_alignment(aligned: alignment.Alignment, min_log_confidence: float) -> ViewGeometry:
    """The alignment's cameras and points with ``valid = log(conf) >= min_log_confidence`` and depth > 0."""
    valid = (jnp.log(aligned.confidence) >= min_log_confidence) & (aligned.depth > 0)
    return ViewGeometry(aligned.K, aligned.world_to_cam, aligned.points, aligned.confidence, valid)


def view_geometry(
    model: Dust3r,
    images: Sequence[jax.Array],
    settings: PointMapSettings = PointMapSettings(),
    cameras: Cameras | None = None,
) -> tuple[ViewGeometry, tuple[crops.CropBox, ...]]:
    """Point maps and cameras of 1-4 images ``[H_v, W_v, 3]`` (float in [0, 1]) at DUSt3R's resolution.

    ``model``: the DUSt3R network (``dust3r_checkpoint.load_dust3r``). ``cameras``: known ``K`` (in each image's own
    pixels) and ``world_to_cam`` of every image, kept exactly (``K`` moved to the network crop); needs
    2+ images, as one image's depth scale is unobservable. Returns the geometry and each image's
    network box (image pixels -> network pixels).
    """
    images = [jnp.asarray(image, jnp.float32) for image in images]
    if any(image.ndim != 3 or image.shape[-1] != 3 for image in images):
        raise ValueError(f"images must be [H, W, 3] each, got shapes {[tuple(i.shape) for i in images]}")
    boxes = network_boxes([tuple(image.shape[:2]) for image in images], settings)
    net = jnp.stack([crops.resample_image(image, box) for image, box in zip(images, boxes, strict=True)])
    if cameras is None:
        if len(images) == 1:
            pred = predict_pairs(model, jnp.concatenate([net, net]), alignment.SELF_PAIRS)
            aligned = alignment.align_single_view(pred, settings.alignment)
        else:
            aligned = alignment.global_align(predict_pairs(model, net, ordered_pairs(len(images))), settings.alignment)
    else:
        if len(images) < 2:
            raise ValueError("known cameras need 2+ images: one image's depth scale is unobservable")
        if cameras.batch_shape != (len(images),):
            raise ValueError(f"cameras must be a batch of {len(images)} (one per image), got batch shape {cameras.batch_shape}")
        K = jnp.stack([crops.crop_box_intrinsics(jnp.asarray(cameras.K[v], jnp.float32), box) for v, box in enumerate(boxes)])
        pred = predict_pairs(model, net, ordered_pairs(len(images)))
        aligned = alignment.align_to_cameras(pred, K, jnp.asarray(cameras.world_to_cam, jnp.float32), settings.alignment)
    return from_alignment(aligned, settings.min_log_confidence), boxes


def crop_view_geometry(geometry: ViewGeometry, boxes: Sequence[crops.CropBox]) -> ViewGeometry:
    """The geometry in one crop per view (boxes in the geometry's pixels, one output size for all).

    Points are resampled without mixing in invalid pixels (``crops.resample_map``), and so is the
    confidence of valid pixels (elsewhere it is interpolated from all pixels, 0 outside the image); ``K``
    follows the box, ``world_to_cam`` is unchanged. To place a crop given on the original image, pass
    ``crops.reframe_box(box, network_box)``.
    """
    if len(boxes) != geometry.K.shape[0]:
        raise ValueError(f"crop_view_geometry needs one box per view ({geometry.K.shape[0]}), got {len(boxes)}")
    if len({(b.out_height, b.out_width) for b in boxes}) > 1:
        raise ValueError(f"crop boxes must share one output size, got {[(b.out_height, b.out_width) for b in boxes]}")
    K, points, confidence, valid = [], [], [], []
    for v, box in enumerate(boxes):
        p, ok = crops.resample_map(geometry.points[v], geometry.valid[v], box)
        conf = geometry.confidence[v][..., None]
        c_valid, _ = crops.resample_map(conf, geometry.valid[v], box)  # a valid point keeps its own confidence
        c_all, _ = crops.resample_map(conf, jnp.ones_like(geometry.valid[v]), box)
        c = jnp.where(ok[..., None], c_valid, c_all)
        K.append(crops.crop_box_intrinsics(geometry.K[v], box))
        points.append(p)
        confidence.append(c[..., 0])
        valid.append(ok)
    return ViewGeometry(jnp.stack(K), geometry.world_to_cam, jnp.stack(points), jnp.stack(confidence), jnp.stack(valid))


def geometry_in_photo_crops(geometry: ViewGeometry, network: Sequence[crops.CropBox], photo_crops: Sequence[crops.CropBox]) -> ViewGeometry:
    """``crop_view_geometry`` for crops placed on the original images (``network``: ``view_geometry``'s boxes)."""
    return crop_view_geometry(geometry, [crops.reframe_box(c, n) for c, n in zip(photo_crops, network, strict=True)])
