"""``avat3r-data annotate``: DUSt3R position maps and Sapiens feature maps for every record of a dataset.

    avat3r-data annotate --dataset DIR --dust3r CKPT --sapiens CKPT [--out OUT] [--feature_channels C]

Writes a new dataset ``OUT`` (default ``DIR_annotated``): the same records, splits and order, each
with a position map (DUSt3R in known-camera mode over groups of up to 4 neighbouring cameras of its
frame, in the dataset's own frame), its confidence and a reduced feature map: the Sapiens feature map
projected to ``C`` channels by a ``FeatureProjection`` fitted on a sample of training views, stored
float16 (the record schema's feature type), with the projection saved beside the records
(``feature_projection.npz``) for ``avat3r-prepare --feature_projection``. The trainer reads ``OUT``
unchanged.

Work is split into shards of consecutive frames. Every process (``jax.distributed``: the same
flags and ``AVAT3R_*`` variables as ``avat3r-train``) takes shards ``process_index::process_count``
and runs their frames on all its local devices at once (one model copy per device, one frame per
device at a time, so records do not depend on the device count). A finished shard is one
ArrayRecord file in the work directory ``OUT.partial`` (shared by all hosts), written under a
temporary name and renamed when complete; a restart (after a kill) skips finished shards. When all
are done, process 0 writes ``OUT`` (built beside it, renamed into place) and removes the work directory.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import itertools
import json
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import tqdm
from array_record.python import array_record_module

from avat3r_jax.frontend import features
from avat3r_jax.frontend.dust3r import Dust3r
from avat3r_jax.frontend.models import DTYPES, DUST3R_SIZES, SAPIENS_SIZES, load_frontend
from avat3r_jax.frontend.sapiens import Sapiens
from data_pipelines import schema, sources, storage
from launch.annotate_frames import AnnotateError, AnnotateSettings, Annotator, backbone_features, decode

PLAN_FILE = "plan.json"
PROJECTION_FILE = "feature_projection.npz"
SHARDS_DIR = "shards"


# ---- the plan: shards of consecutive frames ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shard:
    """Consecutive frames of one stored split: records ``rows[0]:rows[1]`` in the split's file order."""

    index: int
    split: str
    rows: tuple[int, int]

    @property
    def name(self) -> str:
        return f"{self.index:05d}-{self.split}"


def frame_ranges(index: np.ndarray) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` of the frames of a split's index ``[N, 3]`` (sorted by subject, frame, camera)."""
    if len(index) == 0:
        return []
    change = np.flatnonzero(np.any(np.diff(index[:, :2], axis=0) != 0, axis=1)) + 1
    bounds = [0, *change.tolist(), len(index)]
    return list(itertools.pairwise(bounds))


def plan_shards(indices: dict[str, np.ndarray], frames_per_shard: int) -> list[Shard]:
    """Shards over the stored splits in order, ``frames_per_shard`` frames each (fewer at a split's end)."""
    if frames_per_shard < 1:
        raise AnnotateError(f"--frames_per_shard must be >= 1, got {frames_per_shard}")
    shards = []
    for split in storage.STORED_SPLITS:
        frames = frame_ranges(indices[split])
        for start in range(0, len(frames), frames_per_shard):
            chunk = frames[start : start + frames_per_shard]
            shards.append(Shard(len(shards), split, (chunk[0][0], chunk[-1][1])))
    return shards


# ---- shard files ------------------------------------------------------------------------------------


def shard_path(work_dir: pathlib.Path, shard: Shard) -> pathlib.Path:
    return work_dir / SHARDS_DIR / f"{shard.name}.array_record"


def write_shard(path: pathlib.Path, records: Sequence[schema.ViewRecord]) -> None:
    """Writes a finished shard: a temporary file renamed into place, so a shard file is always whole."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = array_record_module.ArrayRecordWriter(str(temporary), storage.WRITER_OPTIONS)
    for record in records:
        writer.write(schema.serialize(record))
    writer.close()
    os.replace(temporary, path)


def read_shard(path: pathlib.Path) -> list[schema.ViewRecord]:
    reader = array_record_module.ArrayRecordReader(str(path))
    try:
        return [schema.deserialize(data) for data in reader.read_all()]
    finally:
        reader.close()


# ---- the work -------------------------------------------------------------------------------------

# Records of one frame -> the same records with posmap, posmap_confidence and features, on device ``slot``.
FrameAnnotator = Callable[[list[schema.ViewRecord], int], list[schema.ViewRecord]]


@dataclasses.dataclass(frozen=True)
class Progress:
    views: int
    seconds: float

    @property
    def views_per_second(self) -> float:
        return self.views / self.seconds if self.seconds > 0 else float("nan")


def run_shards(
    source: storage.ViewSource,
    split_offsets: dict[str, int],
    shards: Sequence[Shard],
    work_dir: pathlib.Path,
    annotate_frame: FrameAnnotator,
    num_slots: int,
    *,
    progress: bool = True,
) -> Progress:
    """Annotates the shards not yet finished, ``num_slots`` frames at a time (frame k of a batch on slot k).

    Frames are taken in order across shard boundaries; a shard is written as soon as its last frame is done.
    """
    todo = [shard for shard in shards if not shard_path(work_dir, shard).exists()]
    total = sum(shard.rows[1] - shard.rows[0] for shard in shards)
    done = total - sum(shard.rows[1] - shard.rows[0] for shard in todo)
    frames = []  # (position in todo, first row in source, stop row)
    for position, shard in enumerate(todo):
        first = split_offsets[shard.split] + shard.rows[0]
        frames.extend(
            (position, first + a, first + b) for a, b in frame_ranges(source.index[first : first + shard.rows[1] - shard.rows[0]])
        )
    left = {position: sum(1 for f in frames if f[0] == position) for position in range(len(todo))}
    finished: dict[int, list[schema.ViewRecord]] = {position: [] for position in range(len(todo))}
    views, start = 0, time.perf_counter()
    bar = tqdm.tqdm(total=total, initial=done, desc="annotating", unit="view", disable=not progress, smoothing=0.1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_slots) as pool:
        for batch in range(0, len(frames), num_slots):
            chunk = frames[batch : batch + num_slots]
            futures = [pool.submit(annotate_frame, [source[row] for row in range(a, b)], slot) for slot, (_, a, b) in enumerate(chunk)]
            for future, (position, a, b) in zip(futures, chunk, strict=True):
                finished[position].extend(future.result())
                left[position] -= 1
                if left[position] == 0:
                    write_shard(shard_path(work_dir, todo[position]), finished.pop(position))
                bar.update(b - a)
                views += b - a
    bar.close()
    return Progress(views, time.perf_counter() - start)


def assemble(
    work_dir: pathlib.Path, shards: Sequence[Shard], out: pathlib.Path, info: storage.DatasetInfo, parameters: dict[str, Any]
) -> storage.DatasetInfo:
    """Writes the dataset ``out`` from the finished shards (atomically), with the projection beside it."""
    missing = [shard.name for shard in shards if not shard_path(work_dir, shard).exists()]
    if missing:
        raise AnnotateError(f"{len(missing)} shards are not finished ({', '.join(missing[:4])}, ...): run annotate again")
    with storage.DatasetWriter(out) as writer:
        for shard in shards:
            for record in read_shard(shard_path(work_dir, shard)):
                writer.write(shard.split, record)
        result = writer.close(
            source=info.source,
            subject_names=info.subject_names,
            camera_names=info.camera_names,
            parameters={**info.parameters, "annotate": parameters},
        )
    shutil.copyfile(work_dir / PROJECTION_FILE, out / PROJECTION_FILE)
    return result


def open_dataset(dataset: pathlib.Path) -> tuple[storage.ViewSource, dict[str, int], dict[str, np.ndarray]]:
    """All stored splits of ``dataset`` as one source, each split's first row in it, and each split's index."""
    info = sources.load_info(dataset)
    splits = tuple(split for split in storage.STORED_SPLITS if split in info.splits)
    source = sources.open_source(dataset, splits)
    offsets = {split: source.split_rows(split).start for split in splits}
    indices = {split: source.index[source.split_rows(split)] for split in splits}
    for split in storage.STORED_SPLITS:
        indices.setdefault(split, np.zeros((0, 3), np.int32))
    return source, offsets, indices


def check_plan(work_dir: pathlib.Path, plan: dict[str, Any]) -> None:
    """Starts the work directory with ``plan``, or checks that an existing one was started with the same."""
    path = work_dir / PLAN_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != plan:
            changed = sorted(key for key in set(previous) | set(plan) if previous.get(key) != plan.get(key))
            raise AnnotateError(
                f"{work_dir} holds unfinished work started with other settings ({', '.join(changed)}); "
                "run with the same arguments to resume, or delete it to start over"
            )
        return
    (work_dir / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{PLAN_FILE}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(plan, indent=1, sort_keys=True))
    os.replace(temporary, path)


def fit_projection(
    source: storage.ViewSource, train_rows: slice, sapiens: Sapiens, settings: AnnotateSettings, dataset: str
) -> features.FeatureProjection:
    """PCA of Sapiens features over ``settings.projection_views`` training views spread evenly over the split."""
    count = train_rows.stop - train_rows.start
    if count == 0:
        raise AnnotateError("the dataset has no training views to fit the feature projection on")
    rows = np.unique(np.linspace(train_rows.start, train_rows.stop - 1, min(settings.projection_views, count)).round().astype(int))
    images = [decode(source[int(row)]) for row in rows]
    by_size: dict[tuple[int, int], list[np.ndarray]] = {}
    for image in images:
        by_size.setdefault(image.shape[:2], []).append(image)
    maps = [
        backbone_features(sapiens, group[start : start + 8], settings.sapiens_long_side)
        for group in by_size.values()
        for start in range(0, len(group), 8)
    ]
    vectors = np.concatenate([m.reshape(-1, m.shape[-1]) for m in maps])
    provenance = {"dataset": dataset, "views": len(rows), "sapiens_width": sapiens.settings.width, "sapiens_depth": sapiens.settings.depth}
    return features.FeatureProjection.fit(vectors, settings.feature_channels, provenance=provenance)


# ---- the command ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = AnnotateSettings()
    parser.add_argument("--dataset", required=True, type=pathlib.Path, help="a converted dataset (avat3r-data convert/synthetic)")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="the annotated dataset (default: DATASET_annotated)")
    parser.add_argument("--dust3r", required=True, type=pathlib.Path, help="DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth (or .safetensors)")
    parser.add_argument("--sapiens", required=True, type=pathlib.Path, help="a Sapiens pretrain checkpoint (.pth or .safetensors)")
    parser.add_argument("--feature-channels", type=int, default=d.feature_channels, help="stored channels (data.feature_channels)")
    parser.add_argument("--feature-size", type=int, nargs=2, default=(d.feature_height, d.feature_width), metavar=("H", "W"))
    parser.add_argument("--posmap-long-side", type=int, default=d.posmap_long_side)
    parser.add_argument("--dust3r-long-side", type=int, default=d.dust3r_long_side)
    parser.add_argument("--sapiens-long-side", type=int, default=d.sapiens_long_side)
    parser.add_argument("--alignment-iterations", type=int, default=d.alignment_iterations)
    parser.add_argument("--frames-per-shard", type=int, default=d.frames_per_shard)
    parser.add_argument("--projection-views", type=int, default=d.projection_views, help="training views the PCA is fitted on")
    parser.add_argument("--dust3r-settings", choices=DUST3R_SIZES, default="checkpoint")
    parser.add_argument("--sapiens-size", choices=SAPIENS_SIZES, default="checkpoint")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="network compute dtype")
    parser.add_argument("--devices", type=int, default=None, help="local devices to use (default: all)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--coordinator-address", default=None, help="multi-host: as avat3r-train (or AVAT3R_COORDINATOR)")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)


def settings_from_args(args: argparse.Namespace) -> AnnotateSettings:
    return AnnotateSettings(
        feature_channels=args.feature_channels,
        feature_height=args.feature_size[0],
        feature_width=args.feature_size[1],
        posmap_long_side=args.posmap_long_side,
        dust3r_long_side=args.dust3r_long_side,
        sapiens_long_side=args.sapiens_long_side,
        alignment_iterations=args.alignment_iterations,
        frames_per_shard=args.frames_per_shard,
        projection_views=args.projection_views,
    )


def load_models(args: argparse.Namespace) -> tuple[Dust3r, Sapiens]:
    return load_frontend(args.dust3r, args.sapiens, dust3r_size=args.dust3r_settings, sapiens_size=args.sapiens_size, dtype=args.dtype)


def storage_report(record: schema.ViewRecord, views: int) -> str:
    """Bytes per view of the added maps and what ``views`` views would take."""
    added = record.posmap.nbytes + record.posmap_confidence.nbytes + record.features.nbytes
    total = len(schema.serialize(record))
    return (
        f"per view: {added / 1e3:.1f} kB of maps (posmap {record.posmap.shape}, features {record.features.shape} float16), "
        f"{total / 1e3:.1f} kB with the image; {views / 1e6:.1f}M views (256 subjects x 1000 frames x 80 cameras, "
        f"Ava-256-sized) would add {added * views / 1e12:.2f} TB"
    )


def annotate(args: argparse.Namespace) -> None:
    """``avat3r-data annotate`` (see the module docstring)."""
    from avat3r_jax.train.distributed import barrier, maybe_initialize

    maybe_initialize(args.coordinator_address, args.num_processes, args.process_id)
    dataset = args.dataset.resolve()
    out = (args.out or dataset.with_name(f"{dataset.name}_annotated")).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AnnotateError(f"--out {out} exists and is not empty; choose another directory")
    work_dir = out.with_name(f"{out.name}.partial")
    settings = settings_from_args(args)
    source, offsets, indices = open_dataset(dataset)
    shards = plan_shards(indices, settings.frames_per_shard)
    plan = {
        "dataset": str(dataset),
        "records": len(source),
        "shards": len(shards),
        "dust3r": str(args.dust3r.resolve()),
        "sapiens": str(args.sapiens.resolve()),
        "dust3r_settings": args.dust3r_settings,
        "sapiens_size": args.sapiens_size,
        "dtype": args.dtype,
        "settings": dataclasses.asdict(settings),
    }
    lead = jax.process_index() == 0
    if lead:
        check_plan(work_dir, plan)
    barrier("annotate-plan")
    if not lead:
        check_plan(work_dir, plan)
    dust3r_model, sapiens_model = load_models(args)
    projection_path = work_dir / PROJECTION_FILE
    if lead and not projection_path.exists():
        print(f"fitting the feature projection ({sapiens_model.settings.width} -> {settings.feature_channels} channels) on training views")
        projection = fit_projection(source, source.split_rows("train"), sapiens_model, settings, str(dataset))
        temporary = projection_path.with_name(f".{PROJECTION_FILE}.tmp-{os.getpid()}.npz")
        projection.save(temporary)
        os.replace(temporary, projection_path)
    barrier("annotate-projection")
    projection = features.FeatureProjection.load(projection_path)
    print(f"feature projection: relative reconstruction error {projection.fit_error:.3f} on its {projection.provenance['views']} fit views")
    devices = jax.local_devices()[: args.devices] if args.devices else jax.local_devices()
    annotator = Annotator(dust3r_model, sapiens_model, projection, settings, devices)
    mine = shards[jax.process_index() :: jax.process_count()]
    print(f"process {jax.process_index()} of {jax.process_count()}: {len(mine)} of {len(shards)} shards on {len(devices)} devices")
    progress = run_shards(source, offsets, mine, work_dir, annotator, len(devices), progress=not args.no_progress)
    if progress.views:
        print(f"annotated {progress.views} views in {progress.seconds:.1f} s: {progress.views_per_second:.2f} views/s")
    barrier("annotate-shards")
    if lead:
        parameters = {**plan, "projection_file": PROJECTION_FILE, "projection_fit_error": projection.fit_error}
        info = assemble(work_dir, shards, out, source.info, parameters)
        shutil.rmtree(work_dir)
        first = sources.open_source(out, ("train",))[0]
        print(f"wrote {out}: {sum(s['num_records'] for s in info.splits.values())} records with position and feature maps")
        print(storage_report(first, 256 * 1000 * 80))


def run_command(args: argparse.Namespace) -> None:
    """``annotate`` with every expected failure as one ``error:`` line (exit code 1)."""
    from avat3r_jax.frontend.checkpoints import CheckpointError

    try:
        annotate(args)
    except (AnnotateError, CheckpointError, storage.DatasetError, schema.RecordError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
