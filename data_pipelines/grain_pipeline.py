"""From view records to training batches with Grain.

An example is a (subject, target frame) of the split. Its V input views come, with probability
``data.different_frame_prob``, from frames other than the target (a different expression per
view: the robustness trick of AVAT3R), else from the target frame itself; the T target views are
any cameras of the target frame (seen or unseen by the inputs). Each view is decoded, centre-cropped
to the output aspect ratio, resized (intrinsics follow), and written straight into the example's
preallocated arrays in the batch's dtypes (``avat3r_jax.spec.batch_shapes``: uint8 images and masks,
float16 maps, which the train step turns into float32 values on the device); target views are read
without their maps (``schema.MAP_FIELDS``). Batches are the dict of docs/INTERFACES.md with static
shapes.

Determinism: the order comes from ``grain``'s index shuffle and every example's view choice from a
``random_map`` generator keyed by (seed, shard, position), so a run is reproducible from its seed and
its iterator state (``get_state()/set_state()``, or ``grain.checkpoint`` inside Orbax) resumes it
exactly, with or without worker processes.

Worker processes (``data.num_workers > 0``) are spawned: each re-imports the main program and then
runs only this module's numpy data path (decode, crop/resize, maps, example assembly). Nothing a
worker imports may initialise a JAX backend at import time, and as a second guard the workers are
started with ``WORKER_ENVIRONMENT`` (``JAX_PLATFORMS=cpu``), set in this process only while Grain
spawns them: a worker never opens the accelerator its parent holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator

import grain
import ml_collections
import numpy as np
from absl import flags

from avat3r_jax import spec
from data_pipelines import image_codec, resample, schema, sources, storage
from data_pipelines.input_variation import NO_VARIATION, InputVariation

log = logging.getLogger(__name__)

# split -> (stored split holding the target frames, stored splits the input views may come from).
SPLITS = {
    "train": ("train", ("train",)),
    "val_subjects": ("val_subjects", ("val_subjects",)),
    "val_expressions": ("val_expressions", ("train", "val_expressions")),
    "test": ("test", ("test",)),
}
_FRAME_RETRIES = 8  # Draws of another frame before an input view falls back to the target frame.
# The environment Grain's worker processes start with: JAX, if a worker imports it, sees only the CPU.
WORKER_ENVIRONMENT = {"JAX_PLATFORMS": "cpu"}
_WORKER_START_TIMEOUT_S = 120.0


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

    def __init__(self, source: storage.ViewSource, targets: np.ndarray, config: ExampleConfig, variation: InputVariation = NO_VARIATION):
        self.source = source
        self.targets = targets  # [E, 2] (subject, frame)
        self.config = config
        self.catalog = ViewCatalog(source.index)
        self.variation = variation  # view count, corruption, random features (input_variation.py)

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
        present, view_rng = self.variation.draw(rng, self.config.num_input_views)
        input_ids = input_ids[:present]
        out = self.empty_example()
        for slot, i in enumerate(input_ids):
            self.load_view(self.source[i], out, slot, prefix="")
            self.variation.vary_view(out, slot, view_rng)
        self.variation.finish(out, present)
        expression = None
        for slot, i in enumerate(target_ids):
            record = self.source.read(i, with_maps=False)
            self.load_view(record, out, slot, prefix="target_")
            expression = record.expression if expression is None else expression
        if expression.shape != (self.config.expression_dim,):
            raise schema.RecordError(
                f"records carry expression codes of size {expression.shape[0]}; the config expects {self.config.expression_dim}"
            )
        out["expression"] = expression.astype(np.float32)
        out["subject"] = np.int32(subject)
        out["frame"] = np.int32(frame)
        return out

    def empty_example(self) -> dict[str, np.ndarray]:
        """The example's arrays in their batch dtypes, allocated once and filled view by view (no per-view
        copies, no stacking)."""
        c = self.config
        h, w = c.image_height, c.image_width
        views = {
            "images": (h, w, 3),
            "masks": (h, w, 1),
            "K": (3, 3),
            "world_to_cam": (4, 4),
        }
        shapes = {key: (c.num_input_views, *shape) for key, shape in views.items()}
        shapes.update({f"target_{key}": (c.num_target_views, *shape) for key, shape in views.items()})
        shapes["posmaps"] = (c.num_input_views, h, w, 3)
        shapes["posmap_valid"] = (c.num_input_views, h, w, 1)
        shapes["features"] = (c.num_input_views, c.feature_height, c.feature_width, c.feature_channels)
        return {key: np.empty(shape, spec.batch_dtype(key)) for key, shape in shapes.items()}

    def load_view(self, record: schema.ViewRecord, out: dict[str, np.ndarray], slot: int, *, prefix: str) -> None:
        """Decodes, crops and resizes one view into slot ``slot`` of ``out``: images, masks and cameras
        under ``prefix``, and for input views (``prefix=""``) also posmaps, validity and features."""
        c = self.config
        where = f"record (subject={record.subject}, frame={record.frame}, camera={record.camera})"
        rgb = image_codec.decode_rgb(record.image, what=f"image of {where}")
        height, width = rgb.shape[:2]
        box = resample.center_crop_box(height, width, c.image_height, c.image_width)
        resample.resize_into(rgb, box, out[f"{prefix}images"][slot])
        out[f"{prefix}K"][slot] = resample.crop_resize_intrinsics(record.K, box, c.image_height, c.image_width)
        out[f"{prefix}world_to_cam"][slot] = record.world_to_cam
        masks = out[f"{prefix}masks"][slot]
        if record.mask is None:
            masks.fill(spec.to_stored("masks", 1.0))
        else:
            alpha = image_codec.decode_grey(record.mask, what=f"mask of {where}")
            if alpha.shape != (height, width):
                raise schema.RecordError(f"{where}: mask is {alpha.shape}, image is {(height, width)}")
            resample.resize_into(alpha[..., None], box, masks)
        if not prefix:
            self._posmap(record, box, (height, width), out["posmaps"][slot], out["posmap_valid"][slot])
            self._features(record, box, (height, width), out["features"][slot])

    def _posmap(
        self, record: schema.ViewRecord, box: resample.Box, image_size: tuple[int, int], xyz: np.ndarray, valid: np.ndarray
    ) -> None:
        """Fills ``xyz [H, W, 3]`` (float16, zero where untrusted) and ``valid [H, W, 1]`` (1 where trusted)."""
        c = self.config
        if record.posmap is None:
            xyz.fill(0.0)
            valid.fill(0.0)
            return
        h, w = record.posmap.shape[:2]
        map_box = resample.scale_box(box, w / image_size[1], h / image_size[0])
        points = resample.resample_nearest(record.posmap, map_box, c.image_height, c.image_width)  # float16 [H, W, 3]
        confidence = record.posmap_confidence
        if confidence is not None:
            confidence = resample.resample_nearest(confidence, map_box, c.image_height, c.image_width)
        trusted = float16_trusted(points, confidence)
        np.multiply(points.view(np.uint16), trusted[..., None], out=xyz.view(np.uint16))  # the points, +0.0 where untrusted
        np.copyto(valid[..., 0], trusted)

    def _features(self, record: schema.ViewRecord, box: resample.Box, image_size: tuple[int, int], out: np.ndarray) -> None:
        c = self.config
        if record.features is None:
            out.fill(0.0)
            return
        h, w, channels = record.features.shape
        if channels != c.feature_channels:
            raise schema.RecordError(f"records carry {channels} feature channels; the config expects {c.feature_channels}")
        map_box = resample.scale_box(box, w / image_size[1], h / image_size[0])
        resample.resize_into(record.features, map_box, out)


_FLOAT16_EXPONENT = 0x7C00  # float16 exponent bits; all set: inf or NaN
_FLOAT16_HALF = 0x3800  # the bits of float16 0.5


def float16_trusted(points: np.ndarray, confidence: np.ndarray | None) -> np.ndarray:
    """Bool ``[H, W]``: all three coordinates of float16 ``points [H, W, 3]`` finite and float16
    ``confidence [H, W]`` (when given) at least 0.5.

    Read from the bits with integer operations (numpy's float16 arithmetic converts every element):
    finite means the exponent bits are not all set, and non-negative float16 values order like their
    bits, so ``0.5 <= c <= inf`` is ``0x3800 <= bits <= 0x7C00`` (negative values and NaN fall outside).
    """
    exponent = points.view(np.uint16) & _FLOAT16_EXPONENT
    trusted = np.maximum(np.maximum(exponent[..., 0], exponent[..., 1]), exponent[..., 2]) < _FLOAT16_EXPONENT
    if confidence is not None:
        bits = confidence.view(np.uint16)
        trusted &= (bits >= _FLOAT16_HALF) & (bits <= _FLOAT16_EXPONENT)
    return trusted


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
    examples = examples.repeat(num_epochs).random_map(
        AssembleExample(source, targets, config, InputVariation.from_config(data_config)), seed=_example_seed(seed, shard_index)
    )
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
        batches = _WorkersStartHidden(batches, data_config.num_workers)
    return batches


@contextlib.contextmanager
def worker_environment(overrides: dict[str, str] = WORKER_ENVIRONMENT) -> Iterator[None]:
    """Sets ``overrides`` in ``os.environ`` (which spawned processes inherit) and restores it after."""
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _child_pids() -> set[int]:
    return {p.pid for p in multiprocessing.active_children()}


class _WorkersStartHidden(grain.IterDataset):
    """An ``mp_prefetch`` dataset whose iterators start their worker processes under ``worker_environment``."""

    def __init__(self, parent: grain.IterDataset, num_workers: int):
        super().__init__(parent)
        self._num_workers = num_workers

    def __iter__(self) -> grain.DatasetIterator:
        return _WorkersStartHiddenIterator(self._parent.__iter__(), self._num_workers)

    def __str__(self) -> str:
        return f"_WorkersStartHidden(num_workers={self._num_workers})"


class _WorkersStartHiddenIterator(grain.DatasetIterator):
    """Grain spawns the workers from its own threads, the first when the first batch is asked for and
    some only when their turn comes (after ``set_state``): ``worker_environment`` holds from the first
    ``next`` until all workers exist (at most ``_WORKER_START_TIMEOUT_S``), then this process's
    environment is restored. This process's JAX, imported by then (Grain imports it), reads
    ``JAX_PLATFORMS`` only at import, so it keeps its accelerator."""

    def __init__(self, parent: grain.DatasetIterator, num_workers: int):
        super().__init__(parent)
        self._num_workers = num_workers
        self._environment: contextlib.ExitStack | None = None
        self._children_before: set[int] = set()
        self._started: set[int] = set()
        self._deadline = 0.0
        self._starting_done = num_workers == 0

    def __next__(self):
        if not self._starting_done and self._environment is None:
            self._environment = contextlib.ExitStack()
            self._environment.enter_context(worker_environment())
            self._children_before = _child_pids()
            self._deadline = time.monotonic() + _WORKER_START_TIMEOUT_S
        try:
            return next(self._parent)
        except BaseException:
            self._end_environment()
            raise
        finally:
            if self._environment is not None:
                self._started |= _child_pids() - self._children_before
                if len(self._started) >= self._num_workers or time.monotonic() > self._deadline:
                    self._end_environment()

    def _end_environment(self) -> None:
        if self._environment is not None:
            self._environment.close()
            self._environment = None
        self._starting_done = True  # workers start once per iterator

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state) -> None:
        self._parent.set_state(state)

    def close(self) -> None:
        self._end_environment()
        self._parent.close()
