"""The optional TFDS path: build (array_record, no TensorFlow) and read back identical records and batches."""

import numpy as np
import pytest

from data_pipelines import grain_pipeline, sources, storage, tfds_builder
from tests.data_pipelines.test_grain_pipeline import assert_batches_equal
from tests.data_pipelines.test_schema import assert_records_equal, random_record


@pytest.fixture(scope="module")
def tfds_dataset(tiny_dataset, tmp_path_factory):
    return tfds_builder.build(tiny_dataset, tmp_path_factory.mktemp("tfds"))


def test_tfds_dataset_holds_the_same_records(tiny_dataset, tfds_dataset):
    assert (tfds_dataset / "features.json").is_file() and list(tfds_dataset.glob("*.array_record*"))
    assert sources.load_info(tfds_dataset) == sources.load_info(tiny_dataset)
    ours = sources.open_source(tiny_dataset, storage.STORED_SPLITS)
    theirs = sources.open_source(tfds_dataset, storage.STORED_SPLITS)
    np.testing.assert_array_equal(theirs.index, ours.index)
    for i in range(len(ours)):
        assert_records_equal(theirs[i], ours[i])


def test_pipeline_reads_tfds_datasets(tiny_dataset, tfds_dataset, tiny_config):
    for split in ("train", "val_expressions"):
        ours = grain_pipeline.make_dataset(tiny_config.data, tiny_dataset, split=split, seed=4, num_epochs=1)
        theirs = grain_pipeline.make_dataset(tiny_config.data, tfds_dataset, split=split, seed=4, num_epochs=1)
        assert_batches_equal(list(theirs), list(ours))


def test_optional_fields_round_trip_through_tfds_examples(rng):
    for optional in (True, False):
        record = random_record(rng, optional=optional)
        example = tfds_builder.record_to_example(record)
        decoded = {k: (v.encode() if isinstance(v, str) else v) for k, v in example.items()}  # TFDS returns text as bytes
        assert_records_equal(tfds_builder.example_to_record(decoded), record)


def test_verify_reads_every_record_of_a_tfds_dataset(tfds_dataset, tiny_dataset):
    assert sources.verify(tfds_dataset, read_all=True) == sources.verify(tiny_dataset, read_all=True)
