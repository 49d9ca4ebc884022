"""The on-disk dataset: ArrayRecord files of view records per stored split, an index, a metadata file.

Layout of a dataset directory::

    dataset.json                     format, version, counts, names, generator/converter parameters
    <split>-00000.array_record ...   serialized ViewRecords, sorted by (subject, frame, camera)
    <split>.index.npy                int32 [N, 3] (subject, frame, camera) of each record, in file order

Stored splits: ``train``, ``val_subjects`` (held-out identities), ``val_expressions`` (training
subjects, held-out frames) and ``test`` (held-out identities). The writer builds the directory
next to its destination and renames it into place when complete, so a dataset directory is
either whole or absent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import uuid
from typing import Any

import numpy as np
from array_record.python import array_record_module
from grain import sources as grain_sources

from data_pipelines import image_codec, schema

DATASET_FORMAT = "avat3r-views"
DATASET_VERSION = 1
METADATA_FILE = "dataset.json"
STORED_SPLITS = ("train", "val_subjects", "val_expressions", "test")
# group_size:1 makes every record its own chunk: the cheapest random access.
WRITER_OPTIONS = "group_size:1"


class DatasetError(ValueError):
    """A dataset directory that is missing, incomplete, or of an unknown format/version."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset.json`` says about a dataset."""

    source: str  # "synthetic", "ava256", "nersemble", ...
    subject_names: list[str]
    camera_names: list[str]
    expression_dim: int
    feature_channels: int  # 0 when the records carry no feature maps
    splits: dict[str, dict[str, Any]]  # split -> {"files": [...], "num_records": n}
    parameters: dict[str, Any]  # how the dataset was made (generator config, converter options)
    version: int = DATASET_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"format": DATASET_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> DatasetInfo:
        if data.get("format") != DATASET_FORMAT:
            raise DatasetError(f"{where} is not an avat3r dataset (format {data.get('format')!r}, expected {DATASET_FORMAT!r})")
        if data.get("version") != DATASET_VERSION:
            raise schema.SchemaVersionError(
                f"{where} has dataset version {data.get('version')}; this reader knows version {DATASET_VERSION}. "
                "Re-create the dataset with this version of avat3r-jax."
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def load_info(data_dir: str | os.PathLike) -> DatasetInfo:
    """The ``DatasetInfo`` of a dataset directory in this layout (``data_pipelines.sources`` reads TFDS ones too)."""
    path = pathlib.Path(data_dir) / METADATA_FILE
    if not path.is_file():
        raise DatasetError(f"no dataset at {data_dir}: {METADATA_FILE} is missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from e
    return DatasetInfo.from_json(data, str(path))


class DatasetWriter:
    """Writes view records into stored splits; ``close()`` publishes the directory atomically.

    Records must arrive sorted by (subject, frame, camera) within each split.
    """

    def __init__(self, out_dir: str | os.PathLike, *, records_per_file: int = 50_000, overwrite: bool = False):
        self.out_dir = pathlib.Path(out_dir)
        if self.out_dir.exists() and any(self.out_dir.iterdir()) and not overwrite:
            raise DatasetError(f"{self.out_dir} exists and is not empty; choose another directory or pass overwrite")
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_dir = self.out_dir.parent / f".{self.out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        self._tmp_dir.mkdir()
        self._records_per_file = records_per_file
        self._writers: dict[str, array_record_module.ArrayRecordWriter] = {}
        self._files: dict[str, list[str]] = {split: [] for split in STORED_SPLITS}
        self._index: dict[str, list[tuple[int, int, int]]] = {split: [] for split in STORED_SPLITS}
        self.expression_dim: int | None = None
        self.feature_channels: int | None = None

    def write(self, split: str, record: schema.ViewRecord) -> None:
        if split not in STORED_SPLITS:
            raise ValueError(f"unknown split {split!r}; stored splits are {STORED_SPLITS}")
        ids = (record.subject, record.frame, record.camera)
        if self._index[split] and ids <= self._index[split][-1]:
            raise ValueError(
                f"records of split {split!r} must be strictly increasing in (subject, frame, camera): {ids} after {self._index[split][-1]}"
            )
        self._check_consistent(record)
        if split not in self._writers or len(self._index[split]) % self._records_per_file == 0:
            self._roll_file(split)
        self._writers[split].write(schema.serialize(record))
        self._index[split].append(ids)

    def _check_consistent(self, record: schema.ViewRecord) -> None:
        channels = 0 if record.features is None else record.features.shape[-1]
        if self.expression_dim is None:
            self.expression_dim, self.feature_channels = record.expression.shape[0], channels
        if record.expression.shape[0] != self.expression_dim or channels != self.feature_channels:
            raise ValueError(
                f"record {(record.subject, record.frame, record.camera)} has expression dim {record.expression.shape[0]} and "
                f"{channels} feature channels; earlier records had {self.expression_dim} and {self.feature_channels}"
            )

    def _roll_file(self, split: str) -> None:
        if split in self._writers:
            self._writers[split].close()
        name = f"{split}-{len(self._files[split]):05d}.array_record"
        self._writers[split] = array_record_module.ArrayRecordWriter(str(self._tmp_dir / name), WRITER_OPTIONS)
        self._files[split].append(name)

    def close(self, *, source: str, subject_names: list[str], camera_names: list[str], parameters: dict[str, Any]) -> DatasetInfo:
        """Finishes the files, writes index and metadata, and moves the directory into place."""
        for writer in self._writers.values():
            writer.close()
        if not any(self._index.values()):
            raise DatasetError("no records were written")
        splits = {}
        for split in STORED_SPLITS:
            index = np.asarray(self._index[split], np.int32).reshape(-1, 3)
            np.save(self._tmp_dir / f"{split}.index.npy", index)
            splits[split] = {"files": self._files[split], "num_records": len(index)}
        info = DatasetInfo(
            source=source,
            subject_names=list(subject_names),
            camera_names=list(camera_names),
            expression_dim=int(self.expression_dim),
            feature_channels=int(self.feature_channels),
            splits=splits,
            parameters=parameters,
        )
        (self._tmp_dir / METADATA_FILE).write_text(json.dumps(info.to_json(), indent=1))
        if self.out_dir.exists():
            shutil.rmtree(self.out_dir)
        os.replace(self._tmp_dir, self.out_dir)
        return info

    def add_file(self, name: str, data: bytes) -> None:
        """Writes ``data`` as file ``name`` of the dataset directory (published with it by ``close()``)."""
        if name == METADATA_FILE or "/" in name or name.endswith((".array_record", ".index.npy")):
            raise ValueError(f"{name!r} is not a free file name in a dataset directory")
        (self._tmp_dir / name).write_bytes(data)

    def abort(self) -> None:
        for writer in self._writers.values():
            writer.close()
        shutil.rmtree(self._tmp_dir, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self._tmp_dir.exists():
            self.abort()


class ViewSource:
    """Random access to the records of one or more stored splits, in order (picklable for Grain workers).

    ``index [N, 3]`` gives each record's (subject, frame, camera); ``[i]`` (or ``read(i, with_maps=False)``,
    without ``schema.MAP_FIELDS``) reads record ``i`` and checks that it is the one the index promises.
    Subclasses implement ``open_files`` and ``_read``.
    """

    def __init__(self, data_dir: str | os.PathLike, splits: tuple[str, ...], info: DatasetInfo, index: np.ndarray):
        self.data_dir = pathlib.Path(data_dir)
        self.splits = splits
        self.info = info
        self.index = index

    def open_files(self) -> None:
        """Opens (and so checks) the record files now instead of at the first read."""
        raise NotImplementedError

    def _read(self, i: int, with_maps: bool) -> schema.ViewRecord:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.index)

    def split_rows(self, split: str) -> slice:
        """The rows of ``index`` (and record indices) that belong to stored split ``split``."""
        start = sum(self.info.splits[s]["num_records"] for s in self.splits[: self.splits.index(split)])
        return slice(start, start + self.info.splits[split]["num_records"])

    def __getitem__(self, i: int) -> schema.ViewRecord:
        return self.read(i)

    def read(self, i: int, *, with_maps: bool = True) -> schema.ViewRecord:
        ids = tuple(int(v) for v in self.index[i])
        where = f"record {i} (subject, frame, camera = {ids}) of {self.splits} in {self.data_dir}"
        try:
            record = self._read(int(i), with_maps)
        except schema.RecordError as e:
            raise type(e)(f"{where}: {e}") from e
        except RuntimeError as e:  # ArrayRecord reports corrupt chunks as bare RuntimeErrors.
            raise schema.CorruptRecordError(f"{where} cannot be read: {e}") from e
        if (record.subject, record.frame, record.camera) != ids:
            raise schema.CorruptRecordError(f"{where} holds {(record.subject, record.frame, record.camera)} instead")
        return record


class ArrayRecordViewSource(ViewSource):
    """Records of our own layout (``dataset.json``, ``<split>-NNNNN.array_record``, ``<split>.index.npy``)."""

    def __init__(self, data_dir: str | os.PathLike, splits: tuple[str, ...]):
        data_dir = pathlib.Path(data_dir)
        info = load_info(data_dir)
        self._paths: list[str] = []
        indices = []
        for split in splits:
            if split not in info.splits:
                raise DatasetError(f"{data_dir} has no split {split!r} (it has {sorted(info.splits)})")
            for name in info.splits[split]["files"]:
                path = data_dir / name
                if not path.is_file():
                    raise DatasetError(f"record file {path} is missing")
                self._paths.append(str(path))
            index = _load_index(data_dir / f"{split}.index.npy")
            if len(index) != info.splits[split]["num_records"]:
                raise DatasetError(
                    f"{split}.index.npy lists {len(index)} records, {METADATA_FILE} says {info.splits[split]['num_records']}"
                )
            indices.append(index)
        super().__init__(data_dir, splits, info, np.concatenate(indices) if indices else np.zeros((0, 3), np.int32))
        self._source: grain_sources.ArrayRecordDataSource | None = None

    def open_files(self) -> None:
        if self._source is not None or not self._paths:
            return
        for path in self._paths:
            _check_record_file(path)
        try:
            source = grain_sources.ArrayRecordDataSource(self._paths)
        except RuntimeError as e:
            raise schema.CorruptRecordError(f"cannot open the record files of {self.splits} in {self.data_dir}: {e}") from e
        if len(source) != len(self.index):
            raise schema.CorruptRecordError(
                f"record files of {self.splits} in {self.data_dir} hold {len(source)} records, the index lists {len(self.index)}: "
                "files are truncated or do not belong to this dataset"
            )
        self._source = source

    def _read(self, i: int, with_maps: bool) -> schema.ViewRecord:
        self.open_files()
        return schema.deserialize(self._source[i], with_maps=with_maps)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}  # Readers reopen in each worker process.


def open_source(data_dir: str | os.PathLike, splits: tuple[str, ...]) -> ViewSource:
    """The records of ``splits`` of a dataset directory in this layout (``data_pipelines.sources`` opens TFDS ones too)."""
    return ArrayRecordViewSource(data_dir, splits)


def _load_index(path: pathlib.Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"index file {path} is missing")
    index = np.load(path, allow_pickle=False)
    if index.dtype != np.int32 or index.ndim != 2 or index.shape[1] != 3:
        raise DatasetError(f"index file {path} must hold int32 [N, 3], got {index.dtype} {index.shape}")
    return index


def _check_record_file(path: str) -> None:
    """Opens one ArrayRecord file to turn the reader's bare errors into a message naming the file."""
    try:
        reader = array_record_module.ArrayRecordReader(path)
        reader.close()
    except RuntimeError as e:
        size = os.path.getsize(path)
        raise schema.CorruptRecordError(
            f"record file {path} ({size} bytes) cannot be opened: it is truncated or not an ArrayRecord file ({e or 'no reason given'})"
        ) from e


def check_pixels(record: schema.ViewRecord, where: str) -> None:
    """Decodes ``record``'s image and mask in full; raises ``CorruptRecordError`` naming the view if they fail or disagree in size."""
    where = f"{where} (view {record.subject_name}/{record.frame_name}/{record.camera_name})"
    try:
        size = image_codec.decode_rgb(record.image, what="image").shape[:2]
        mask_size = size if record.mask is None else image_codec.decode_grey(record.mask, what="mask").shape
    except ValueError as e:
        raise schema.CorruptRecordError(f"{where}: {str(e).splitlines()[0]}") from e
    if mask_size != size:
        raise schema.CorruptRecordError(f"{where}: mask is {mask_size}, image {size} (height, width)")
