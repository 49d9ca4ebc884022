"""From view records to training batches with Grain.

An example is a (subject, target frame) of the split. Its V input views come, with probability
``data.different_frame_prob``, from frames other than the target (a different expression per
view: the robustness trick of AVAT3R), else from the target frame itself; the T target views are
any cameras of the target frame (seen or unseen by the inputs). Each view is decoded, centre-cropped
to the output aspect ratio, resized (intrinsics follow), and converted to float32. Batches are the
dict of docs/INTERFACES.md with static shapes.

Determinism: the order comes from ``grain``'s index shuffle and every example's view choice from a
``random_map`` generator keyed by (seed, shard, position), so a run is reproducible from its seed and
its iterator state (``get_state()/set_state()``, or ``grain.checkpoint`` inside Orbax) resumes it
exactly, with or without worker processes.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import grain
import ml_collections
import numpy as np
from absl import flags

from data_pipelines import image_codec, resample, schema, sources, storage

log = logging.getLogger(__name__)

# split -> (stored split holding the target frames, stored splits the input views may come from).
SPLITS = {
    "train": ("train", ("train",)),
    "val_subjects": ("val_subjects", ("val_subjects",)),
    "val_expressions": ("val_expressions", ("train", "val_expressions")),
    "test": ("test", ("test",)),
}
_FRAME_RETRIES = 8  # Draws of another frame before an input view falls back to the target frame.


@dataclasses.dataclass(frozen=True)
class ExampleConfig:
    """The part of ``config.data`` that shapes one example (plain values: cheap to pickle)."""

    image_height: int
    image_width: int
    num_input_views: int
    num_target_views: int
    different_frame_prob: float
    feature_height: int
    feature_width: int
    feature_channels: int
    expression_dim: int

    @classmethod
    def from_config(cls, data: ml_collections.ConfigDict) -> ExampleConfig:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


class ViewCatalog:
    """Lookups over the record index ``[N, 3]`` (subject, frame, camera) by sorted int64 keys."""

    def __init__(self, index: np.ndarray):
        index = index.astype(np.int64)
        self.frame_radix = int(index[:, 1].max()) + 1
        self.camera_radix = int(index[:, 2].max()) + 1
        keys = (index[:, 0] * self.frame_radix + index[:, 1]) * self.camera_radix + index[:, 2]
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]
        if np.any(np.diff(self.keys) == 0):
            raise storage.DatasetError("the dataset lists some (subject, frame, camera) more than once")
        self.frame_keys = np.unique(self.keys // self.camera_radix)  # sorted subject * frame_radix + frame

    def frame_views(self, subject: int, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Cameras ``[n]`` and record indices ``[n]`` of one frame."""
        base = (subject * self.frame_radix + frame) * self.camera_radix
        lo, hi = np.searchsorted(self.keys, [base, base + self.camera_radix])
        return self.keys[lo:hi] - base, self.order[lo:hi]

    def subject_frames(self, subject: int) -> np.ndarray:
        lo, hi = np.searchsorted(self.frame_keys, [subject * self.frame_radix, (subject + 1) * self.frame_radix])
        return self.frame_keys[lo:hi] - subject * self.frame_radix

    def lookup(self, subject: int, frame: int, camera: int) -> int:
        """Record index of a view, or -1 if the dataset lacks it."""
        key = (subject * self.frame_radix + frame) * self.camera_radix + camera
        i = int(np.searchsorted(self.keys, key))
        return int(self.order[i]) if i < len(self.keys) and self.keys[i] == key else -1


def _choose(rng: np.random.Generator, values: np.ndarray, count: int) -> np.ndarray:
    """``count`` distinct values when there are enough, else with repetition."""
    return rng.choice(values, size=count, replace=len(values) < count)


class AssembleExample:
    """``(example index, rng) -> example dict`` (unbatched); a picklable Grain ``random_map`` callable."""

    def __init__(self, source: storage.ViewSource, targets: np.ndarray, config: ExampleConfig):
        self.source = source
        self.targets = targets  # [E, 2] (subject, frame)
        self.config = config
        self.catalog = ViewCatalog(source.index)

    def choose_views(self, subject: int, frame: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """Record indices of the input views and of the target views."""
        c = self.config
        cameras, records = self.catalog.frame_views(subject, frame)
        targets = [int(records[i]) for i in _choose(rng, np.arange(len(cameras)), c.num_target_views)]
        input_slots = _choose(rng, np.arange(len(cameras)), c.num_input_views)
        other_frames = self.catalog.subject_frames(subject)
        other_frames = other_frames[other_frames != frame]
        if len(other_frames) == 0 or rng.random() >= c.different_frame_prob:
            return [int(records[i]) for i in input_slots], targets
        inputs = []
        for slot in input_slots:
            record = int(records[slot])  # fallback: the target frame's view of this camera
            for other in rng.choice(other_frames, size=_FRAME_RETRIES):
                found = self.catalog.lookup(subject, int(other), int(cameras[slot]))
                if found >= 0:
                    record = found
                    break
            inputs.append(record)
        return inputs, targets

    def __call__(self, example: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        subject, frame = (int(v) for v in self.targets[example])
        input_ids, target_ids = self.choose_views(subject, frame, rng)
        inputs = [self.load_view(self.source[i], with_maps=True) for i in input_ids]
        target_records = [self.source[i] for i in target_ids]
        targets = [self.load_view(r, with_maps=False) for r in target_records]
        expression = target_records[0].expression
        if expression.shape != (self.config.expression_dim,):
            raise schema.RecordError(
                f"records carry expression codes of size {expression.shape[0]}; the config expects {self.config.expression_dim}"
            )
        example_dict = {key: np.stack([view[key] for view in inputs]) for key in inputs[0]}
        example_dict.update({f"target_{key}": np.stack([view[key] for view in targets]) for key in targets[0]})
        example_dict["expression"] = expression.astype(np.float32)
        example_dict["subject"] = np.int32(subject)
        example_dict["frame"] = np.int32(frame)
        return example_dict

    def load_view(self, record: schema.ViewRecord, *, with_maps: bool) -> dict[str, np.ndarray]:
        """Decoded, cropped, resized view: images/masks (and for inputs posmaps/validity/features)."""
        c = self.config
        where = f"record (subject={record.subject}, frame={record.frame}, camera={record.camera})"
        rgb = image_codec.decode_rgb(record.image, what=f"image of {where}")
        height, width = rgb.shape[:2]
        box = resample.center_crop_box(height, width, c.image_height, c.image_width)
        view = {
            "images": resample.resize(rgb / np.float32(255.0), box, c.image_height, c.image_width),
            "K": resample.crop_resize_intrinsics(record.K, box, c.image_height, c.image_width),
            "world_to_cam": record.world_to_cam.astype(np.float32),
        }
        if record.mask is None:
            view["masks"] = np.ones((c.image_height, c.image_width, 1), np.float32)
        else:
            alpha = image_codec.decode_grey(record.mask, what=f"mask of {where}")
            if alpha.shape != (height, width):
                raise schema.RecordError(f"{where}: mask is {alpha.shape}, image is {(height, width)}")
            view["masks"] = resample.resize(alpha[..., None] / np.float32(255.0), box, c.image_height, c.image_width)
        if with_maps:
            view["posmaps"], view["posmap_valid"] = self._posmap(record, box, (height, width))
            view["features"] = self._features(record, box, (height, width))
        return view

    def _posmap(self, record: schema.ViewRecord, box: resample.Box, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        if record.posmap is None:
            return np.zeros((c.image_height, c.image_width, 3), np.float32), np.zeros((c.image_height, c.image_width, 1), np.float32)
        h, w = record.posmap.shape[:2]
        map_box = resample.scale_box(box, w / image_size[1], h / image_size[0])
        xyz = resample.resample_nearest(record.posmap, map_box, c.image_height, c.image_width).astype(np.float32)
        valid = np.all(np.isfinite(xyz), axis=-1)
        if record.posmap_confidence is not None:
            valid &= resample.resample_nearest(record.posmap_confidence, map_box, c.image_height, c.image_width) >= 0.5
        return np.where(valid[..., None], xyz, 0.0), valid[..., None].astype(np.float32)

    def _features(self, record: schema.ViewRecord, box: resample.Box, image_size: tuple[int, int]) -> np.ndarray:
        c = self.config
        if record.features is None:
            return np.zeros((c.feature_height, c.feature_width, c.feature_channels), np.float32)
        h, w, channels = record.features.shape
        if channels != c.feature_channels:
            raise schema.RecordError(f"records carry {channels} feature channels; the config expects {c.feature_channels}")
        map_box = resample.scale_box(box, w / image_size[1], h / image_size[0])
        return resample.resize(record.features, map_box, c.feature_height, c.feature_width)


def per_process_batch_size(batch_size: int, shard_count: int) -> int:
    if batch_size % shard_count:
        raise ValueError(f"data.batch_size={batch_size} is not divisible by the {shard_count} data-loading processes")
    return batch_size // shard_count


def _example_seed(seed: int, shard_index: int) -> int:
    return int(np.random.SeedSequence([seed, shard_index, 0x5EED]).generate_state(1)[0])


def make_dataset(
    data_config: ml_collections.ConfigDict,
    data_dir: str | os.PathLike,
    *,
    split: str = "train",
    seed: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
    shuffle: bool | None = None,
) -> grain.IterDataset:
    """Batches of ``split`` for one data-loading process (shard), as a Grain ``IterDataset``.

    ``num_epochs=None`` repeats forever (training); a finite epoch count gives every shard the same
    number of examples (up to ``shard_count - 1`` examples of the split are left out) so that all
    processes yield equally many batches. ``shuffle`` defaults to ``split == "train"``.
    ``data_config.num_workers > 0`` runs the example assembly in that many worker processes; the
    calling program must then have parsed absl flags (as ``absl.app.run`` does).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is outside [0, {shard_count})")
    batch_size = per_process_batch_size(data_config.batch_size, shard_count)
    config = ExampleConfig.from_config(data_config)
    target_split, pool_splits = SPLITS[split]
    source = sources.open_source(data_dir, pool_splits)
    info = source.info
    if info.expression_dim != config.expression_dim:
        raise ValueError(
            f"dataset {data_dir} has expression codes of size {info.expression_dim}; data.expression_dim is {config.expression_dim}"
        )
    if info.feature_channels not in (0, config.feature_channels):
        raise ValueError(
            f"dataset {data_dir} has {info.feature_channels} feature channels; data.feature_channels is {config.feature_channels}"
        )
    if info.feature_channels == 0:
        log.warning("dataset %s has no feature maps: the batches carry zeros", data_dir)

    targets = np.unique(source.index[source.split_rows(target_split), :2], axis=0).astype(np.int32)  # [E, 2]
    if len(targets) == 0:
        raise ValueError(f"split {split!r} of {data_dir} has no examples")
    examples = grain.MapDataset.range(len(targets))
    if num_epochs is not None:
        examples = examples[: len(targets) // shard_count * shard_count]
    examples = examples[shard_index::shard_count]
    if len(examples) < batch_size and num_epochs is not None:
        raise ValueError(f"shard {shard_index} of split {split!r} has {len(examples)} examples, fewer than one batch of {batch_size}")
    if len(examples) == 0:
        raise ValueError(f"shard {shard_index} of {shard_count} of split {split!r} has no examples ({len(targets)} in the split)")
    if (split == "train") if shuffle is None else shuffle:
        examples = examples.shuffle(seed=seed)
    examples = examples.repeat(num_epochs).random_map(AssembleExample(source, targets, config), seed=_example_seed(seed, shard_index))
    # Batching before the iterator makes a batch one element: workers then split batches, not examples,
    # so the sequence of batches is the same for every num_workers.
    read_options = grain.ReadOptions(num_threads=data_config.num_threads, prefetch_buffer_size=data_config.prefetch_batches)
    batches = examples.batch(batch_size, drop_remainder=True).to_iter_dataset(read_options)
    if data_config.num_workers > 0:
        if not flags.FLAGS.is_parsed():
            raise RuntimeError(
                "data.num_workers > 0 starts Grain worker processes, which read absl flags: run the program under "
                "absl.app.run (or parse flags first), or set data.num_workers=0"
            )
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.num_workers))
    return batches
