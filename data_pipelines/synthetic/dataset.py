"""Generation of the procedural multi-view head-video dataset, and ``ensure_dataset`` for the trainer."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from data_pipelines import image_codec, resample, schema, sources, splits, storage
from data_pipelines.synthetic import head, render, rig

log = logging.getLogger(__name__)


# The optional head variety and the value of each field that turns it off: what datasets generated
# before the field existed were made with.
VARIETY_OFF = {
    "beard_prob": 0.0,
    "lighting_jitter": 0.0,
    "hair_style_prob": 0.0,
    "dyed_hair_prob": 0.0,
    "glasses_prob": 0.0,
    "head_shape_jitter": 0.0,
    "expression_cycles": 1.0,
}
# Rays traced per device call by ``generate`` (frames of several subjects batched to about this many).
RAYS_PER_CALL = 2**18


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the generated dataset (two equal specs give identical records)."""

    subjects: int = 24
    frames: int = 8
    cameras: int = 8
    resolution: int = 64
    expression_dim: int = 16
    feature_channels: int = len(head.PART_NAMES)
    feature_height: int = 16
    feature_width: int = 16
    posmap_noise: float = 0.0  # std (metres) of the structured depth error of the position maps
    distance_jitter: float = 0.05
    focal_jitter: float = 0.05
    val_subjects: int = 2
    test_subjects: int = 2
    heldout_frames: int = 1
    render_steps: int = 48
    seed: int = 0
    beard_prob: float = 0.0  # P(a subject has a chin beard)
    lighting_jitter: float = 0.0  # per-subject key light direction, intensity and tint (head.sample_styling)
    hair_style_prob: float = 0.0  # P(a subject's hair is one of head.HAIR_STYLES[1:] instead of the cap)
    dyed_hair_prob: float = 0.0  # P(a subject's hair is dyed)
    glasses_prob: float = 0.0  # P(a subject wears glasses); a quarter of them sunglasses
    head_shape_jitter: float = 0.0  # head proportions, chin, cheeks, neck (head.sample_head_shape; 0: as before)
    expression_cycles: float = 1.0  # speed of the expression videos (head.sample_expression_trajectory)

    def __post_init__(self):
        for name in (
            "subjects",
            "frames",
            "cameras",
            "resolution",
            "expression_dim",
            "feature_channels",
            "feature_height",
            "feature_width",
            "render_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"synthetic dataset: {name} must be >= 1, got {getattr(self, name)}")
        variety = ("beard_prob", "lighting_jitter", "hair_style_prob", "dyed_hair_prob", "glasses_prob", "head_shape_jitter")
        for name in ("posmap_noise", *variety):
            if getattr(self, name) < 0:
                raise ValueError(f"synthetic dataset: {name} must be >= 0, got {getattr(self, name)}")
        if self.expression_cycles <= 0:
            raise ValueError(f"synthetic dataset: expression_cycles must be > 0, got {self.expression_cycles}")
        self.split_plan()  # validates the split sizes

    def split_plan(self) -> splits.SplitPlan:
        return splits.SplitPlan(self.subjects, self.val_subjects, self.test_subjects, self.heldout_frames)

    @classmethod
    def from_config(cls, data: ml_collections.ConfigDict) -> SyntheticSpec:
        s = data.synthetic
        return cls(
            subjects=s.subjects,
            frames=s.frames,
            cameras=s.cameras,
            resolution=s.resolution,
            expression_dim=data.expression_dim,
            feature_channels=data.feature_channels,
            feature_height=data.feature_height,
            feature_width=data.feature_width,
            posmap_noise=s.posmap_noise,
            distance_jitter=s.distance_jitter,
            focal_jitter=s.focal_jitter,
            val_subjects=s.val_subjects,
            test_subjects=s.test_subjects,
            heldout_frames=s.heldout_frames,
            render_steps=s.render_steps,
            seed=s.seed,
            beard_prob=s.beard_prob,
            lighting_jitter=s.lighting_jitter,
            hair_style_prob=s.hair_style_prob,
            dyed_hair_prob=s.dyed_hair_prob,
            glasses_prob=s.glasses_prob,
            head_shape_jitter=s.head_shape_jitter,
            expression_cycles=s.expression_cycles,
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def expression_code_map(spec: SyntheticSpec) -> np.ndarray:
    """The fixed random linear map ``[expression_dim, NUM_EXPRESSION_PARAMS]`` from parameters to codes."""
    rng = np.random.default_rng([spec.seed, 0xE3])
    return (rng.normal(size=(spec.expression_dim, head.NUM_EXPRESSION_PARAMS)) / np.sqrt(head.NUM_EXPRESSION_PARAMS)).astype(np.float32)


def expression_code(params: np.ndarray, code_map: np.ndarray) -> np.ndarray:
    """Expression parameters ``[..., P]`` -> codes ``[..., D]``: parameters scaled to [-1, 1], then mapped."""
    low, high = (np.array(v, np.float32) for v in zip(*head.EXPRESSION_RANGES.values(), strict=True))
    unit = 2.0 * (params - low) / (high - low) - 1.0
    return (unit @ code_map.T).astype(np.float32)


def feature_projection(spec: SyntheticSpec) -> np.ndarray | None:
    """``None`` (one-hot part labels as they are) when the channel count equals the part count, else a
    fixed random map ``[parts, feature_channels]`` standing in for higher-dimensional features."""
    if spec.feature_channels == len(head.PART_NAMES):
        return None
    rng = np.random.default_rng([spec.seed, 0xFE])
    return rng.normal(size=(len(head.PART_NAMES), spec.feature_channels)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Subject:
    """The random draws of one subject: identity, camera rig, expression trajectory."""

    identity: head.Identity
    K: np.ndarray  # [C, 3, 3]
    world_to_cam: np.ndarray  # [C, 4, 4]
    expressions: np.ndarray  # [F, P]


def sample_subject(spec: SyntheticSpec, subject: int) -> Subject:
    """The subject's draws; each optional variety from its own random stream, drawn only when it is on,
    so the other draws (and datasets made before the variety existed) stay as they were."""
    rng = np.random.default_rng([spec.seed, subject])
    identity = head.sample_identity(rng)

    def stream(tag: int) -> np.random.Generator:
        return np.random.default_rng([spec.seed, subject, tag])

    if spec.beard_prob > 0 or spec.lighting_jitter > 0:
        identity = dataclasses.replace(identity, **head.sample_styling(stream(0x57), spec.beard_prob, spec.lighting_jitter))
    if spec.hair_style_prob > 0 or spec.dyed_hair_prob > 0:
        hair = head.sample_hair_style(stream(0x4A), spec.hair_style_prob, spec.dyed_hair_prob)
        identity = dataclasses.replace(identity, **hair)
    if spec.glasses_prob > 0:
        identity = dataclasses.replace(identity, **head.sample_glasses(stream(0x61), spec.glasses_prob))
    if spec.head_shape_jitter > 0:
        identity = dataclasses.replace(identity, **head.sample_head_shape(stream(0x5E), identity, spec.head_shape_jitter))
    K, world_to_cam = rig.dome_cameras(
        rng, spec.cameras, spec.resolution, distance_jitter=spec.distance_jitter, focal_jitter=spec.focal_jitter
    )
    return Subject(identity, K, world_to_cam, head.sample_expression_trajectory(rng, spec.frames, spec.expression_cycles))


def structured_depth_noise(rng: np.random.Generator, height: int, width: int, std: float) -> np.ndarray:
    """A smooth random field ``[H, W]`` with standard deviation about ``std`` (a few low-frequency waves
    plus a constant offset), standing in for the depth error of a learned point-map predictor."""
    v, u = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
    waves = 4
    frequency = rng.uniform(0.3, 1.5, (waves, 2)) * rng.choice([-1, 1], (waves, 2))
    phase = rng.uniform(0, 2 * np.pi, waves)
    field = sum(np.sin(2 * np.pi * (frequency[k, 0] * u + frequency[k, 1] * v) + phase[k]) for k in range(waves))
    field = field / np.sqrt(waves / 2) * np.sqrt(0.5) + rng.normal() * np.sqrt(0.5)
    return (std * field).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _cell_weights(resolution: int, cells: int) -> np.ndarray:
    return resample.resize_weights(resolution, cells, 0.0, float(resolution))  # [cells, resolution]


def part_fractions(label: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area fraction ``[height, width, parts]`` of each ``head.FEATURE_PART`` in the cells of a square
    ``label [R, R]`` image (``resample.resize``'s filter, its weights computed once per size)."""
    resolution = label.shape[0]
    one_hot = np.eye(len(head.PART_NAMES), dtype=np.float32)[head.FEATURE_PART[label]]  # [R, R, parts]
    rows = _cell_weights(resolution, height) @ one_hot.reshape(resolution, -1)  # [height, R * parts]
    return _cell_weights(resolution, width) @ rows.reshape(height, resolution, -1)  # [height, width, parts]


def view_records(spec: SyntheticSpec, subject: int, frame: int, sample: Subject, views: render.RenderedViews) -> list[schema.ViewRecord]:
    """The records of one rendered frame (all cameras), from host copies of ``views``."""
    code = expression_code(sample.expressions[frame], expression_code_map(spec))
    projection = feature_projection(spec)
    records = []
    for camera in range(spec.cameras):
        alpha = np.asarray(views.alpha[camera])
        position = np.asarray(views.position[camera])
        if spec.posmap_noise > 0:
            rng = np.random.default_rng([spec.seed, subject, frame, camera, 0xD5])
            center = np.linalg.inv(sample.world_to_cam[camera])[:3, 3]
            direction = position - center
            direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
            noise = structured_depth_noise(rng, spec.resolution, spec.resolution, spec.posmap_noise)
            position = np.where(alpha[..., None] > 0, position + noise[..., None] * direction, 0.0)
        parts = part_fractions(np.asarray(views.label[camera]), spec.feature_height, spec.feature_width)
        features = parts if projection is None else parts @ projection
        records.append(
            schema.ViewRecord(
                subject=subject,
                frame=frame,
                camera=camera,
                image=image_codec.encode_raw(image_codec.to_uint8(np.asarray(views.image[camera]))),
                mask=image_codec.encode_raw(image_codec.to_uint8(alpha)),
                K=sample.K[camera],
                world_to_cam=sample.world_to_cam[camera],
                expression=code,
                posmap=position.astype(np.float16),
                posmap_confidence=alpha.astype(np.float16),
                features=features.astype(np.float16),
                subject_name=f"subject{subject:04d}",
                frame_name=f"frame{frame:04d}",
                camera_name=f"cam{camera:02d}",
            )
        )
    return records


def frames_per_call(spec: SyntheticSpec) -> int:
    """How many (subject, frame) renders ``generate`` batches into one device call (``RAYS_PER_CALL``)."""
    rays = spec.cameras * spec.resolution * spec.resolution
    return max(1, min(RAYS_PER_CALL // rays, spec.subjects * spec.frames))


def render_frames(spec: SyntheticSpec, samples: list[Subject], frames: list[int]) -> render.RenderedViews:
    """Renders frame ``frames[i]`` of subject ``samples[i]`` for every ``i`` in one jitted call on the
    default device; returns device arrays with leading ``[len(frames), C]``."""
    identities = jax.tree.map(lambda *fields: np.stack(fields), *(s.identity for s in samples))
    return render.render_batch(
        identities,
        np.stack([s.expressions[f] for s, f in zip(samples, frames, strict=True)]),
        np.stack([s.K for s in samples]),
        np.stack([s.world_to_cam for s in samples]),
        jnp.ones(3),
        height=spec.resolution,
        width=spec.resolution,
        steps=spec.render_steps,
    )


def generate(
    spec: SyntheticSpec, out_dir: str | os.PathLike, *, progress: bool = True, overwrite: bool = False, batch: int | None = None
) -> storage.DatasetInfo:
    """Renders the dataset of ``spec`` into ``out_dir`` (ArrayRecord); deterministic in ``spec.seed``.

    Frames of consecutive subjects are rendered ``batch`` at a time (default ``frames_per_call``) in
    one jitted call on the default device (a GPU when JAX has one); the next batch renders while the
    host encodes and writes the previous one. The last batch is padded to the same shape.
    """
    plan = spec.split_plan()
    batch = batch or frames_per_call(spec)
    items = [(subject, frame) for subject in range(spec.subjects) for frame in range(spec.frames)]

    def dispatch(chunk: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], dict[int, Subject], render.RenderedViews]:
        samples = {subject: sample_subject(spec, subject) for subject in dict.fromkeys(s for s, _ in chunk)}
        padded = chunk + [chunk[-1]] * (batch - len(chunk))
        return chunk, samples, render_frames(spec, [samples[s] for s, _ in padded], [f for _, f in padded])

    with storage.DatasetWriter(out_dir, overwrite=overwrite) as writer:
        bar = tqdm.tqdm(total=len(items), desc="rendering synthetic heads", unit="frame", disable=not progress)

        def write(chunk: list[tuple[int, int]], samples: dict[int, Subject], views: render.RenderedViews) -> None:
            host = jax.device_get(views)
            for i, (subject, frame) in enumerate(chunk):
                one = jax.tree.map(lambda a, i=i: a[i], host)
                for record in view_records(spec, subject, frame, samples[subject], one):
                    writer.write(plan.split_of(subject, frame, spec.frames), record)
            bar.update(len(chunk))

        pending = None
        for start in range(0, len(items), batch):
            rendering = dispatch(items[start : start + batch])  # asynchronous: renders while the host writes
            if pending is not None:
                write(*pending)
            pending = rendering
        write(*pending)
        bar.close()
        return writer.close(
            source="synthetic",
            subject_names=[f"subject{s:04d}" for s in range(spec.subjects)],
            camera_names=[f"cam{c:02d}" for c in range(spec.cameras)],
            parameters=spec.to_json(),
        )


def ensure_dataset(data_config: ml_collections.ConfigDict, data_dir: str | os.PathLike) -> pathlib.Path:
    """Returns ``data_dir`` holding a usable dataset: generated from ``data_config`` if absent, else checked.

    An existing synthetic dataset must have been generated with the same parameters; an existing
    converted dataset must match the configured expression and feature sizes.
    """
    data_dir = pathlib.Path(data_dir)
    spec = SyntheticSpec.from_config(data_config)
    if (data_dir / storage.METADATA_FILE).exists():
        info = storage.load_info(data_dir)
        if info.source == "synthetic":
            wanted = spec.to_json()
            stored = VARIETY_OFF | info.parameters
            differences = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
            if differences:
                listed = ", ".join(f"{k}: dataset {old!r} vs config {new!r}" for k, (old, new) in sorted(differences.items()))
                raise storage.DatasetError(
                    f"the synthetic dataset at {data_dir} was generated with other parameters ({listed}); "
                    "delete it to regenerate, or point data.dir elsewhere"
                )
        elif info.expression_dim != data_config.expression_dim or info.feature_channels not in (0, data_config.feature_channels):
            raise storage.DatasetError(
                f"dataset at {data_dir} has expression dim {info.expression_dim} and {info.feature_channels} feature channels; "
                f"the config asks for {data_config.expression_dim} and {data_config.feature_channels}"
            )
        sources.verify(data_dir)
        log.info("using the dataset at %s (%s)", data_dir, info.source)
        return data_dir
    if data_dir.exists() and any(data_dir.iterdir()):
        raise storage.DatasetError(f"{data_dir} exists but holds no {storage.METADATA_FILE}; it is not a dataset")
    log.info("generating the synthetic dataset into %s", data_dir)
    generate(spec, data_dir)
    return data_dir
