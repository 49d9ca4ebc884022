"""Which reader a dataset directory needs: our ArrayRecord layout (``storage``) or a prepared TFDS
dataset (``tfds_builder``, imported only when used: TFDS is the optional path)."""

from __future__ import annotations

import os
import pathlib

from data_pipelines import storage

TFDS_INFO_FILE = "dataset_info.json"  # what tfds.builder_from_directory reads


def is_tfds_dir(data_dir: str | os.PathLike) -> bool:
    directory = pathlib.Path(data_dir)
    return (directory / TFDS_INFO_FILE).is_file() and not (directory / storage.METADATA_FILE).exists()


def load_info(data_dir: str | os.PathLike) -> storage.DatasetInfo:
    """The ``DatasetInfo`` of our layout or of a TFDS dataset prepared by ``tfds_builder``."""
    if is_tfds_dir(data_dir):
        from data_pipelines import tfds_builder

        return tfds_builder.load_info(data_dir)
    return storage.load_info(data_dir)


def open_source(data_dir: str | os.PathLike, splits: tuple[str, ...]) -> storage.ViewSource:
    """The records of ``splits`` of a dataset directory: our ArrayRecord layout or a prepared TFDS dataset."""
    if is_tfds_dir(data_dir):
        from data_pipelines import tfds_builder

        return tfds_builder.TfdsViewSource(data_dir, splits)
    return storage.open_source(data_dir, splits)


def verify(data_dir: str | os.PathLike, *, read_all: bool = False) -> storage.DatasetInfo:
    """Checks metadata, indexes and record files of either layout; with ``read_all`` reads every record
    and decodes its image and mask in full (a truncated PNG with an intact header fails here, not in training)."""
    info = load_info(data_dir)
    for split in storage.STORED_SPLITS:
        if split not in info.splits:
            raise storage.DatasetError(f"{data_dir}: the dataset lacks split {split!r}")
        source = open_source(data_dir, (split,))
        source.open_files()
        if read_all:
            for i in range(len(source)):
                storage.check_pixels(source[i], f"record {i} of split {split!r} in {data_dir}")
    return info
