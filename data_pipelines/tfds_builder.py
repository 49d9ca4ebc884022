"""Optional TFDS path: a ``GeneratorBasedBuilder`` (``file_format='array_record'``) over view records.

``build(src_dir, tfds_dir)`` turns one of our datasets (synthetic or converted) into a prepared
TFDS dataset; the Grain pipeline reads either kind of directory. Neither building nor reading
needs TensorFlow: every feature is a ``tfds.features.Tensor`` (encoded images as byte strings,
decoded later in the pipeline), never ``tfds.features.Image``. Optional record fields are stored
empty (``b""`` or a zero-size array) and read back as ``None``. The record index and our dataset
metadata ride along in the TFDS metadata (``metadata.json``).
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any

import numpy as np

from data_pipelines import schema, storage

BUILDER_NAME = "avat3r_views"
BUILDER_VERSION = "1.0.0"


def record_to_example(record: schema.ViewRecord) -> dict[str, Any]:
    """A record as the TFDS feature dict (optional fields empty)."""
    return {
        "version": record.version,
        "subject": record.subject,
        "frame": record.frame,
        "camera": record.camera,
        "subject_name": record.subject_name,
        "frame_name": record.frame_name,
        "camera_name": record.camera_name,
        "image": record.image,
        "mask": record.mask or b"",
        "K": record.K,
        "world_to_cam": record.world_to_cam,
        "expression": record.expression,
        "posmap": record.posmap if record.posmap is not None else np.zeros((0, 0, 3), np.float16),
        "posmap_confidence": record.posmap_confidence if record.posmap_confidence is not None else np.zeros((0, 0), np.float16),
        "features": record.features if record.features is not None else np.zeros((0, 0, 0), np.float16),
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def example_to_record(example: dict[str, Any]) -> schema.ViewRecord:
    """A decoded TFDS example (numpy values, text as bytes) back to a record; checks the schema version."""
    return schema.ViewRecord(
        version=int(example["version"]),
        subject=int(example["subject"]),
        frame=int(example["frame"]),
        camera=int(example["camera"]),
        subject_name=_text(example["subject_name"]),
        frame_name=_text(example["frame_name"]),
        camera_name=_text(example["camera_name"]),
        image=bytes(example["image"]),
        mask=bytes(example["mask"]) or None,
        K=np.asarray(example["K"], np.float32),
        world_to_cam=np.asarray(example["world_to_cam"], np.float32),
        expression=np.asarray(example["expression"], np.float32),
        posmap=example["posmap"] if example["posmap"].size else None,
        posmap_confidence=example["posmap_confidence"] if example["posmap_confidence"].size else None,
        features=example["features"] if example["features"].size else None,
    )


@functools.cache
def _builder_class():
    import tensorflow_datasets as tfds  # optional dependency path.

    class Avat3rViews(tfds.core.GeneratorBasedBuilder):
        """View records of an avat3r dataset directory, one TFDS example per (subject, frame, camera)."""

        name = BUILDER_NAME
        VERSION = tfds.core.Version(BUILDER_VERSION)
        # No checksums or docs next to this module. (TFDS 4.9.10's code_path lookup of a packaged
        # builder also needs the importlib_resources package, which TFDS does not install.)
        code_path = None

        def __init__(self, *, source_dir: str | os.PathLike | None = None, **kwargs):
            self._source_dir = source_dir
            super().__init__(**kwargs)

        def _info(self) -> tfds.core.DatasetInfo:
            metadata = tfds.core.MetadataDict()
            if self._source_dir is not None:
                info = storage.load_info(self._source_dir)
                metadata["avat3r"] = info.to_json()
                metadata["index"] = {
                    split: storage.open_source(self._source_dir, (split,)).index.tolist() for split in storage.STORED_SPLITS
                }
            tensor = tfds.features.Tensor
            features = tfds.features.FeaturesDict(
                {
                    "version": tfds.features.Scalar(dtype=np.int32),
                    "subject": tfds.features.Scalar(dtype=np.int32),
                    "frame": tfds.features.Scalar(dtype=np.int32),
                    "camera": tfds.features.Scalar(dtype=np.int32),
                    "subject_name": tfds.features.Text(),
                    "frame_name": tfds.features.Text(),
                    "camera_name": tfds.features.Text(),
                    "image": tensor(shape=(), dtype=np.object_),
                    "mask": tensor(shape=(), dtype=np.object_),
                    "K": tensor(shape=(3, 3), dtype=np.float32),
                    "world_to_cam": tensor(shape=(4, 4), dtype=np.float32),
                    "expression": tensor(shape=(None,), dtype=np.float32),
                    "posmap": tensor(shape=(None, None, 3), dtype=np.float16, encoding="zlib"),
                    "posmap_confidence": tensor(shape=(None, None), dtype=np.float16, encoding="zlib"),
                    "features": tensor(shape=(None, None, None), dtype=np.float16, encoding="zlib"),
                }
            )
            return tfds.core.DatasetInfo(builder=self, features=features, metadata=metadata, disable_shuffling=True)

        def _split_generators(self, dl_manager):
            del dl_manager
            info = storage.load_info(self._source_dir)
            return {split: self._generate_examples(split) for split in storage.STORED_SPLITS if info.splits[split]["num_records"]}

        def _generate_examples(self, split: str):
            source = storage.open_source(self._source_dir, (split,))
            for i in range(len(source)):
                yield i, record_to_example(source[i])

    return Avat3rViews


def build(src_dir: str | os.PathLike, tfds_dir: str | os.PathLike) -> pathlib.Path:
    """Prepares the TFDS dataset of the records in ``src_dir`` under ``tfds_dir``; returns its directory."""
    builder = _builder_class()(source_dir=src_dir, data_dir=str(tfds_dir), file_format="array_record")
    builder.download_and_prepare()
    return pathlib.Path(builder.data_dir)


def load_info(data_dir: str | os.PathLike) -> storage.DatasetInfo:
    """Our ``DatasetInfo`` from a prepared TFDS dataset directory."""
    import tensorflow_datasets as tfds  # optional dependency path.

    builder = tfds.builder_from_directory(str(data_dir))
    if "avat3r" not in builder.info.metadata:
        raise storage.DatasetError(f"{data_dir} is a TFDS dataset but not one built by data_pipelines.tfds_builder")
    return storage.DatasetInfo.from_json(builder.info.metadata["avat3r"], str(data_dir))


class TfdsViewSource(storage.ViewSource):
    """Records of stored splits of a prepared TFDS dataset (``builder.as_data_source``, no TensorFlow)."""

    def __init__(self, data_dir: str | os.PathLike, splits: tuple[str, ...]):
        import tensorflow_datasets as tfds  # optional dependency path.

        builder = tfds.builder_from_directory(str(data_dir))
        info = load_info(data_dir)
        index_by_split = builder.info.metadata["index"]
        indices = [np.asarray(index_by_split[split], np.int32).reshape(-1, 3) for split in splits]
        super().__init__(data_dir, splits, info, np.concatenate(indices))
        self._sources: list[Any] | None = None

    def open_files(self) -> None:
        if self._sources is not None:
            return
        import tensorflow_datasets as tfds  # optional dependency path.

        builder = tfds.builder_from_directory(str(self.data_dir))
        self._sources = [builder.as_data_source(split) if self.info.splits[split]["num_records"] else [] for split in self.splits]
        for split, source in zip(self.splits, self._sources, strict=True):
            if len(source) != self.info.splits[split]["num_records"]:
                expected = self.info.splits[split]["num_records"]
                raise schema.CorruptRecordError(
                    f"TFDS split {split!r} in {self.data_dir} holds {len(source)} records, its index lists {expected}"
                )

    def _read(self, i: int, with_maps: bool) -> schema.ViewRecord:
        del with_maps  # TFDS examples are decoded whole
        self.open_files()
        for source in self._sources:
            if i < len(source):
                return example_to_record(source[i])
            i -= len(source)
        raise IndexError(f"record {i} is out of range")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sources": None}
