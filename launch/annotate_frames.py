"""One frame of a dataset through the networks: DUSt3R position maps (known cameras) and projected Sapiens features.

``Annotator`` is what ``avat3r-data annotate`` (``launch/annotate.py``) runs per frame, on one of the
local devices; it reads and returns ``ViewRecord``s and touches no files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avat3r_jax.frontend import alignment, crops, features, pointmaps
from avat3r_jax.frontend.dust3r import Dust3r
from avat3r_jax.frontend.prepare import sapiens_box
from avat3r_jax.frontend.sapiens import Sapiens, extract_features
from avat3r_jax.geometry import Cameras
from data_pipelines import image_codec, schema

MAX_GROUP = 4  # views per DUSt3R alignment (the alignment's limit)


class AnnotateError(ValueError):
    """The dataset, the work directory or the arguments cannot be annotated as asked."""


def camera_groups(world_to_cam: np.ndarray, max_views: int = MAX_GROUP) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Groups of neighbouring cameras ``[n, 4, 4]`` for alignment: ``(members, outputs)`` per group.

    Greedy and deterministic: the first camera not yet covered with its nearest uncovered cameras (by
    centre distance), up to ``max_views``. Every camera is an output of exactly one group; a camera
    left alone borrows its nearest covered camera as a helper member (aligned, not an output).
    """
    n = len(world_to_cam)
    if n < 2:
        raise AnnotateError(f"a frame has {n} view: known-camera point maps need at least 2 views of a frame")
    rotation, translation = world_to_cam[:, :3, :3].astype(np.float64), world_to_cam[:, :3, 3].astype(np.float64)
    centres = -np.einsum("vji,vj->vi", rotation, translation)
    distance = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    uncovered, groups = list(range(n)), []
    while uncovered:
        first = uncovered[0]
        nearest = sorted(uncovered, key=lambda c: (distance[first, c], c))[:max_views]
        members = tuple(nearest)
        if len(members) == 1:
            helper = min((c for c in range(n) if c != first), key=lambda c: (distance[first, c], c))
            members = (first, helper)
        groups.append((members, tuple(nearest)))
        uncovered = [c for c in uncovered if c not in nearest]
    return groups


@dataclasses.dataclass(frozen=True)
class AnnotateSettings:
    """What the maps are made with (all of it recorded in the work plan and the dataset's parameters)."""

    feature_channels: int = 64
    feature_height: int = 64
    feature_width: int = 64
    posmap_long_side: int = 512  # stored position maps: the image's field of view at most this long side
    dust3r_long_side: int = crops.DUST3R_LONG_SIDE
    sapiens_long_side: int = 1024
    alignment_iterations: int = 300
    frames_per_shard: int = 16
    projection_views: int = 256  # training views the feature projection is fitted on

    def point_settings(self) -> pointmaps.PointMapSettings:
        return pointmaps.PointMapSettings(
            alignment=alignment.AlignmentSettings(iterations=self.alignment_iterations), long_side=self.dust3r_long_side
        )


def decode(record: schema.ViewRecord) -> np.ndarray:
    """The record's image as float32 ``[H, W, 3]`` in [0, 1]."""
    return image_codec.decode_rgb(record.image, what=f"image of record {(record.subject, record.frame, record.camera)}") / np.float32(255)


def backbone_features(sapiens: Sapiens, images: Sequence[np.ndarray], long_side: int) -> np.ndarray:
    """Sapiens feature maps ``[V, h, w, C]`` of whole images (one size), each resized to ``long_side``."""
    height, width = images[0].shape[:2]
    box = sapiens_box(crops.CropBox(0.0, 0.0, float(width), float(height), height, width), long_side, sapiens.settings.patch_size)
    return np.asarray(extract_features(sapiens, jnp.stack([crops.resample_image(image, box) for image in images])))


def posmap_box(height: int, width: int, long_side: int) -> crops.CropBox:
    """The whole image at the stored position-map resolution (long side at most ``long_side``)."""
    scale = min(1.0, long_side / max(height, width))
    return crops.CropBox(0.0, 0.0, float(width), float(height), max(1, round(height * scale)), max(1, round(width * scale)))


def stored_confidence(confidence: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """DUSt3R confidence -> the record's ``[0, 1]`` scale, trusted where ``>= 0.5`` exactly when ``valid``.

    ``log(confidence)`` (the scale ``pointmaps`` thresholds at 0.5) clipped to ``[0.5, 1]`` where valid, 0 elsewhere.
    """
    with np.errstate(divide="ignore"):
        log_confidence = np.log(np.maximum(confidence, 1e-30))
    return np.where(valid, np.clip(log_confidence, 0.5, 1.0), 0.0).astype(np.float16)


def _on_device(module: nnx.Module, device: jax.Device) -> nnx.Module:
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.device_put(state, device))


class Annotator:
    """Records of one frame -> with position maps, confidences and features; one model copy per device."""

    def __init__(
        self,
        dust3r: Dust3r,
        sapiens: Sapiens,
        projection: features.FeatureProjection,
        settings: AnnotateSettings,
        devices: Sequence[jax.Device],
    ):
        self.devices = list(devices)
        self.models = [(_on_device(dust3r, d), _on_device(sapiens, d)) for d in self.devices]
        self.projection = projection
        self.settings = settings

    def __call__(self, records: list[schema.ViewRecord], slot: int) -> list[schema.ViewRecord]:
        with jax.default_device(self.devices[slot]):
            return self._annotate(records, *self.models[slot])

    def _annotate(self, records: list[schema.ViewRecord], dust3r: Dust3r, sapiens: Sapiens) -> list[schema.ViewRecord]:
        s = self.settings
        images = [decode(record) for record in records]
        K = np.stack([record.K for record in records])
        world_to_cam = np.stack([record.world_to_cam for record in records])
        maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for members, outputs in camera_groups(world_to_cam):
            chosen = list(members)
            cameras = Cameras(jnp.asarray(K[chosen]), jnp.asarray(world_to_cam[chosen]))
            geometry, net_boxes = pointmaps.view_geometry(dust3r, [images[i] for i in chosen], s.point_settings(), cameras)
            boxes = [
                crops.reframe_box(posmap_box(*images[i].shape[:2], s.posmap_long_side), box)
                for i, box in zip(chosen, net_boxes, strict=True)
            ]
            full = jax.tree.map(np.asarray, pointmaps.crop_view_geometry(geometry, boxes))
            for position, view in enumerate(chosen):
                if view in outputs:
                    valid = full.valid[position].astype(bool)
                    maps[view] = (
                        np.where(valid[..., None], full.points[position], 0.0).astype(np.float16),
                        stored_confidence(full.confidence[position], valid),
                    )
        backbone = backbone_features(sapiens, images, s.sapiens_long_side)
        projected = features.model_features(backbone, self.projection, s.feature_height, s.feature_width)
        stored = features.quantise(projected, "float16").values
        return [
            dataclasses.replace(record, posmap=maps[i][0], posmap_confidence=maps[i][1], features=stored[i])
            for i, record in enumerate(records)
        ]
