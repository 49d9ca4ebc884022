"""The ArrayRecord dataset layout: writing, reading back, and clear errors for damaged datasets."""

import dataclasses
import json

import numpy as np
import pytest
from array_record.python import array_record_module

from data_pipelines import schema, sources, storage
from tests.data_pipelines.test_schema import assert_records_equal, random_record


def write_records(out_dir, records_by_split, **kwargs):
    with storage.DatasetWriter(out_dir, **kwargs) as writer:
        for split, records in records_by_split.items():
            for record in records:
                writer.write(split, record)
        return writer.close(source="test", subject_names=["a", "b"], camera_names=["c0", "c1", "c2"], parameters={"x": 1})


def sorted_records(rng, ids):
    return [dataclasses.replace(random_record(rng), subject=s, frame=f, camera=c) for s, f, c in ids]


def test_write_and_read_back_with_rolling_files(tmp_path, rng):
    train = sorted_records(rng, [(0, f, c) for f in range(3) for c in range(3)])
    test = sorted_records(rng, [(1, 0, 0), (1, 0, 2)])
    info = write_records(tmp_path / "ds", {"train": train, "test": test}, records_per_file=4)
    files = ["train-00000.array_record", "train-00001.array_record", "train-00002.array_record"]
    assert info.splits["train"] == {"files": files, "num_records": 9}
    assert info.splits["val_subjects"]["num_records"] == 0
    assert storage.load_info(tmp_path / "ds") == info
    source = storage.open_source(tmp_path / "ds", ("train", "test"))
    assert len(source) == 11 and source.split_rows("test") == slice(9, 11)
    np.testing.assert_array_equal(source.index[9:], [[1, 0, 0], [1, 0, 2]])
    for i, record in enumerate(train + test):
        assert_records_equal(source[i], record)
    sources.verify(tmp_path / "ds", read_all=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left behind


def test_writer_rejects_unsorted_records_and_leaves_nothing(tmp_path, rng):
    records = sorted_records(rng, [(0, 1, 0), (0, 0, 5)])
    with pytest.raises(ValueError, match="strictly increasing"):
        write_records(tmp_path / "ds", {"train": records})
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_inconsistent_sizes(tmp_path, rng):
    a, b = sorted_records(rng, [(0, 0, 0), (0, 0, 1)])
    b = dataclasses.replace(b, expression=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="expression dim 3"):
        write_records(tmp_path / "ds", {"train": [a, b]})


def test_writer_refuses_a_non_empty_directory(tmp_path, rng):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "keep.txt").write_text("mine")
    with pytest.raises(storage.DatasetError, match="not empty"):
        storage.DatasetWriter(tmp_path / "ds")


@pytest.fixture
def small_dataset(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(storage, "WRITER_OPTIONS", "group_size:1,uncompressed")  # record bytes findable in the file
    write_records(tmp_path / "ds", {"train": sorted_records(rng, [(0, 0, c) for c in range(6)])})
    return tmp_path / "ds"


def test_truncated_record_file_names_the_file(small_dataset):
    path = small_dataset / "train-00000.array_record"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    source = storage.open_source(small_dataset, ("train",))
    with pytest.raises(schema.CorruptRecordError, match=r"train-00000\.array_record .*truncated or not an ArrayRecord file"):
        source[0]
    with pytest.raises(schema.CorruptRecordError):
        sources.verify(small_dataset)


def test_bit_flip_in_a_record_file_is_reported_with_the_record(small_dataset):
    path = small_dataset / "train-00000.array_record"
    data = bytearray(path.read_bytes())
    source = storage.open_source(small_dataset, ("train",))
    source.open_files()
    target = bytes(source._source[3])  # flip a byte inside record 3's payload
    offset = bytes(data).index(target[-200:])
    data[offset + 100] ^= 0x5A
    path.write_bytes(bytes(data))
    fresh = storage.open_source(small_dataset, ("train",))
    with pytest.raises(schema.CorruptRecordError, match=r"record 3 \(subject, frame, camera = \(0, 0, 3\)\)"):
        fresh[3]
    fresh[0]  # other records still read


def test_wrong_record_schema_version_inside_a_file(tmp_path, rng):
    record = sorted_records(rng, [(0, 0, 0)])[0]
    write_records(tmp_path / "ds", {"train": [record]})
    newer = schema.serialize(record).replace(b'"version":1', b'"version":2', 1)
    path = tmp_path / "ds" / "train-00000.array_record"
    writer = array_record_module.ArrayRecordWriter(str(path), storage.WRITER_OPTIONS)
    writer.write(newer)
    writer.close()
    with pytest.raises(schema.SchemaVersionError, match="schema version 2 is not supported"):
        storage.open_source(tmp_path / "ds", ("train",))[0]


def test_wrong_dataset_version_and_missing_pieces(small_dataset, tmp_path):
    meta_path = small_dataset / storage.METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "version": 7}))
    with pytest.raises(schema.SchemaVersionError, match="dataset version 7"):
        storage.load_info(small_dataset)
    meta_path.write_text(json.dumps(meta))
    (small_dataset / "train.index.npy").unlink()
    with pytest.raises(storage.DatasetError, match=r"index file .* is missing"):
        storage.open_source(small_dataset, ("train",))
    with pytest.raises(storage.DatasetError, match=r"dataset\.json is missing"):
        storage.load_info(tmp_path / "nothing")
