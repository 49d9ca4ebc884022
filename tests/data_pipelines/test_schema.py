"""View records: byte round trip and clear errors for corrupt bytes and unknown schema versions."""

import dataclasses

import numpy as np
import pytest

from data_pipelines import image_codec, schema


def random_record(rng: np.random.Generator, *, optional: bool = True) -> schema.ViewRecord:
    image = image_codec.encode_png(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    return schema.ViewRecord(
        subject=int(rng.integers(100)),
        frame=int(rng.integers(100)),
        camera=int(rng.integers(100)),
        image=image,
        K=rng.normal(size=(3, 3)).astype(np.float32),
        world_to_cam=rng.normal(size=(4, 4)).astype(np.float32),
        expression=rng.normal(size=7).astype(np.float32),
        mask=image_codec.encode_png(rng.integers(0, 256, (6, 5), dtype=np.uint8)) if optional else None,
        posmap=rng.normal(size=(3, 4, 3)).astype(np.float16) if optional else None,
        posmap_confidence=rng.uniform(size=(3, 4)).astype(np.float16) if optional else None,
        features=rng.normal(size=(2, 2, 9)).astype(np.float16) if optional else None,
        subject_name="sübject" if optional else "",
        frame_name="EXP-1/frame_00003",
        camera_name="cam400940",
    )


def assert_records_equal(a: schema.ViewRecord, b: schema.ViewRecord) -> None:
    for field in dataclasses.fields(schema.ViewRecord):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), field.name
        else:
            assert x == y, field.name


@pytest.mark.parametrize("optional", [True, False])
def test_round_trip(rng, optional):
    record = random_record(rng, optional=optional)
    data = schema.serialize(record)
    assert_records_equal(schema.deserialize(data), record)
    assert schema.serialize(schema.deserialize(data)) == data


def test_jpeg_images_are_accepted(rng):
    record = dataclasses.replace(random_record(rng), image=image_codec.encode_jpeg(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    assert schema.image_format(schema.deserialize(schema.serialize(record)).image) == "jpeg"


def test_flipped_payload_byte_fails_crc(rng):
    data = bytearray(schema.serialize(random_record(rng)))
    data[-10] ^= 0xFF
    with pytest.raises(schema.CorruptRecordError, match="CRC-32"):
        schema.deserialize(bytes(data))


@pytest.mark.parametrize("keep", [4, 20, -1])
def test_truncated_bytes(rng, keep):
    data = schema.serialize(random_record(rng))
    with pytest.raises(schema.CorruptRecordError, match=r"magic|header|truncated"):
        schema.deserialize(data[:keep])


def test_not_a_record():
    with pytest.raises(schema.CorruptRecordError, match="expected magic"):
        schema.deserialize(b"\x89PNG\r\n\x1a\n and more bytes")


def test_unknown_schema_version_is_rejected_before_anything_else(rng):
    data = schema.serialize(random_record(rng))
    newer = data.replace(b'"version":1', b'"version":9', 1)
    assert newer != data
    with pytest.raises(schema.SchemaVersionError, match="version 9 is not supported"):
        schema.deserialize(newer)
    with pytest.raises(schema.SchemaVersionError):
        dataclasses.replace(random_record(rng), version=2)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("K", np.eye(3, dtype=np.float64), "K must be float32"),
        ("world_to_cam", np.eye(3, dtype=np.float32), r"world_to_cam must have shape \(4, 4\)"),
        ("posmap", np.zeros((3, 4, 2), np.float16), r"posmap must have shape \(\*, \*, 3\)"),
        ("posmap_confidence", np.zeros((2, 4), np.float16), "posmap_confidence must have shape"),
        ("image", b"GIF89a....", "PNG or JPEG"),
    ],
)
def test_invalid_fields_are_named(rng, field, value, message):
    with pytest.raises(schema.RecordError, match=message):
        dataclasses.replace(random_record(rng), **{field: value})
