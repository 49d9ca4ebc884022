"""Photos -> the model's inputs: cameras, head-centred crops, position maps with validity, feature maps.

The stages (each reported through ``progress``):

1-2. ``pointmaps.view_geometry``: DUSt3R on every ordered pair of the photos at the network's
   resolution and global alignment (one photo: paired with a copy of itself), or, with known
   cameras, alignment of the point maps to them;
3. the head frame (``head_frame.fit_head_frame``: the training data's frame, from the cameras and the
   confident points) applied to cameras and points;
4. per photo a head-centred crop at the model's size (``photos.head_crop_box``), applied to the photo,
   its alpha, its intrinsics and its point map (``crops``);
5. Sapiens on the same crop at the backbone's resolution, then the documented feature step
   (``features.model_features``) with the given ``FeatureProjection`` (or one fitted on these photos).

Nothing here reads or writes files; ``launch/prepare.py`` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from avat3r_jax.frontend import alignment, crops, features, head_frame, photos, pointmaps
from avat3r_jax.frontend.dust3r import Dust3r
from avat3r_jax.frontend.sapiens import Sapiens, extract_features
from avat3r_jax.geometry import Cameras as KnownCameras


class PrepareError(ValueError):
    """The photos, cameras or models cannot be prepared as asked."""


@dataclasses.dataclass(frozen=True)
class PrepareSettings:
    """The model's input sizes (``data.*``) and how the front end runs."""

    image_height: int
    image_width: int
    feature_height: int
    feature_width: int
    feature_channels: int
    dust3r_long_side: int = crops.DUST3R_LONG_SIDE
    sapiens_long_side: int = 1024  # Sapiens' pretraining resolution
    alignment: alignment.AlignmentSettings = dataclasses.field(default_factory=alignment.AlignmentSettings)
    rig: head_frame.TrainingRig = head_frame.TRAINING_RIG


@dataclasses.dataclass(frozen=True)
class Cameras:
    """Known cameras of the photos: ``K [V, 3, 3]`` in each photo's pixels, ``world_to_cam [V, 4, 4]`` in any frame."""

    K: np.ndarray
    world_to_cam: np.ndarray


@dataclasses.dataclass(frozen=True)
class PreparedViews:
    """The model's inputs for ``V`` views (``avat3r_jax.export.inputs.write_inputs`` keys) and what made them."""

    images: np.ndarray  # [V, H, W, 3]
    masks: np.ndarray | None  # [V, H, W, 1] from the photos' alpha, or None
    K: np.ndarray  # [V, 3, 3] of the crops
    world_to_cam: np.ndarray  # [V, 4, 4] head frame
    posmaps: np.ndarray  # [V, H, W, 3] head frame, 0 where invalid
    posmap_valid: np.ndarray  # [V, H, W, 1]
    confidence: np.ndarray  # [V, H, W] DUSt3R confidence in the crops (0 outside the photo)
    features: np.ndarray  # [V, h, w, C]
    frame: head_frame.HeadFrame
    projection: features.FeatureProjection
    projection_fitted_here: bool

    def example(self) -> dict[str, np.ndarray]:
        keys = ("images", "masks", "K", "world_to_cam", "posmaps", "posmap_valid", "features")
        return {key: getattr(self, key) for key in keys if getattr(self, key) is not None}


def _to_photo_box(box: crops.CropBox, size: tuple[int, int]) -> crops.CropBox:
    """The inverse of a network ``box``: network pixels -> the photo of ``size`` (height, width)."""
    sx, sy = box.scale
    return crops.CropBox(-box.left * sx, -box.top * sy, size[1] * sx, size[0] * sy, size[0], size[1])


def sapiens_box(box: crops.CropBox, long_side: int, patch_size: int) -> crops.CropBox:
    """The head crop ``box`` at Sapiens' resolution: long side ``long_side``, sides multiples of the patch."""
    scale = long_side / max(box.out_height, box.out_width)
    height, width = (max(patch_size, round(side * scale / patch_size) * patch_size) for side in (box.out_height, box.out_width))
    return dataclasses.replace(box, out_height=height, out_width=width)


def prepare_views(
    photo_list: list[photos.Photo],
    dust3r: Dust3r,
    sapiens: Sapiens,
    settings: PrepareSettings,
    *,
    cameras: Cameras | None = None,
    projection: features.FeatureProjection | None = None,
    progress: Callable[[str], None] = print,
) -> PreparedViews:
    """The model's inputs from 1-4 photos (see the module docstring for the stages)."""
    count = len(photo_list)
    known = None
    if cameras is not None:
        if cameras.K.shape != (count, 3, 3) or cameras.world_to_cam.shape != (count, 4, 4):
            raise PrepareError(f"--cameras must give K [V, 3, 3] and world_to_cam [V, 4, 4] for the {count} photos")
        if count < 2:
            raise PrepareError("known cameras need 2 or more photos (one photo's depth scale is unobservable); drop --cameras")
        known = KnownCameras(jnp.asarray(cameras.K, jnp.float32), jnp.asarray(cameras.world_to_cam, jnp.float32))
    pair_count = max(2, count) * (max(2, count) - 1)
    progress(f"point maps: DUSt3R on {pair_count} image pairs, then {'known-camera' if known else 'global'} alignment")
    point_settings = pointmaps.PointMapSettings(alignment=settings.alignment, long_side=settings.dust3r_long_side)
    try:
        geometry, net_boxes = pointmaps.view_geometry(dust3r, [p.rgb for p in photo_list], point_settings, known)
    except ValueError as error:
        raise PrepareError(str(error)) from error
    geometry = jax.tree.map(np.asarray, geometry)
    valid = geometry.valid.astype(bool)
    if not valid.any():
        raise PrepareError("DUSt3R is confident about no pixel of the photos: are they photos of one head?")

    frame = head_frame.fit_head_frame(geometry.world_to_cam, geometry.points[valid], geometry.confidence[valid], settings.rig)
    progress(f"head frame (centre from the {frame.centre_from}): {frame.residual.summary()}")
    world_to_cam = frame.transform.world_to_cam(geometry.world_to_cam).astype(np.float32)
    in_head_frame = dataclasses.replace(
        geometry, world_to_cam=world_to_cam, points=frame.transform.points(geometry.points).astype(np.float32)
    )

    H, W = settings.image_height, settings.image_width
    head_boxes = []
    for index, (photo, net_box) in enumerate(zip(photo_list, net_boxes, strict=True)):
        K_photo = (
            cameras.K[index]
            if cameras is not None
            else np.asarray(crops.crop_box_intrinsics(jnp.asarray(geometry.K[index]), _to_photo_box(net_box, photo.size)))
        )
        head_boxes.append(crops.CropBox(*photos.head_crop_box(K_photo, world_to_cam[index], H, W, settings.rig), out_height=H, out_width=W))
        inside = photos.head_in_photo(K_photo, world_to_cam[index], photo.size, settings.rig)
        if inside < 0.8:
            progress(f"warning: {photo.name}: only {100 * inside:.0f}% of the head lies inside the photo; the crop is padded with black")
    cropped = jax.tree.map(np.asarray, pointmaps.geometry_in_photo_crops(jax.tree.map(jnp.asarray, in_head_frame), net_boxes, head_boxes))
    images = np.stack([np.asarray(crops.resample_image(p.rgb, box)) for p, box in zip(photo_list, head_boxes, strict=True)])
    masks = None
    if all(p.alpha is not None for p in photo_list):
        masks = np.stack([np.asarray(crops.resample_image(p.alpha, box)) for p, box in zip(photo_list, head_boxes, strict=True)])
    progress(f"crops: {count} views at {H}x{W}, {cropped.valid.mean():.0%} of pixels with trusted points")

    patch = sapiens.settings.patch_size
    sapiens_images = [
        crops.resample_image(p.rgb, sapiens_box(box, settings.sapiens_long_side, patch))
        for p, box in zip(photo_list, head_boxes, strict=True)
    ]
    backbone = np.asarray(extract_features(sapiens, jnp.stack(sapiens_images)))
    fitted_here = projection is None
    if fitted_here:
        projection = features.FeatureProjection.fit(backbone, settings.feature_channels, provenance={"fitted_on": "the prepared photos"})
        progress(
            f"warning: no --feature_projection given: fitted a {projection.in_channels}->{projection.out_channels} projection on these "
            f"{count} photos alone; the model was trained with the dataset's projection (feature_projection.npz): pass that one"
        )
    if projection.in_channels != backbone.shape[-1] or projection.out_channels != settings.feature_channels:
        raise PrepareError(
            f"the feature projection maps {projection.in_channels} -> {projection.out_channels} channels, but the backbone gives "
            f"{backbone.shape[-1]} and the model takes data.feature_channels={settings.feature_channels}"
        )
    model_features = np.asarray(features.model_features(backbone, projection, settings.feature_height, settings.feature_width))
    progress(f"features: Sapiens grid {backbone.shape[1]}x{backbone.shape[2]}x{backbone.shape[3]} -> {model_features.shape[1:]} per view")

    valid = cropped.valid.astype(bool)[..., None]
    return PreparedViews(
        images=images,
        masks=masks,
        K=cropped.K.astype(np.float32),
        world_to_cam=world_to_cam,
        posmaps=np.where(valid, cropped.points, 0.0).astype(np.float32),
        posmap_valid=valid.astype(np.float32),
        confidence=cropped.confidence,
        features=model_features.astype(np.float32),
        frame=frame,
        projection=projection,
        projection_fitted_here=fitted_here,
    )
