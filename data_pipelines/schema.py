"""The view record: one ``(subject, frame, camera)`` observation, and its byte encoding.

Byte layout (little endian), chosen so nothing is ever unpickled:

    b"AV3RVIEW" | uint32 header length | header (UTF-8 JSON) | payload

The header holds the schema ``version``, the ids, a CRC-32 of the payload, and for every blob
(encoded image, mask) and array (float16 maps, float32 cameras) its offset and size in the
payload (arrays also their dtype and shape). Records written since 2026-12 also carry a CRC-32 per
field (``field_crc32``), so a reader that skips the maps (``deserialize(..., with_maps=False)``, the
training pipeline's target views) checks only the bytes it decodes; older records, without it,
are checked whole. Readers check the version first, so a record written
by a newer schema is rejected with a clear message instead of being misread.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib

import numpy as np

from data_pipelines import image_codec

SCHEMA_VERSION = 1
_MAGIC = b"AV3RVIEW"
_LENGTH = struct.Struct("<I")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


class RecordError(ValueError):
    """A record that cannot be read."""


class SchemaVersionError(RecordError):
    """A record or dataset written with a schema version this reader does not know."""


class CorruptRecordError(RecordError):
    """Bytes that are not a valid view record (truncated, bit-flipped, or something else)."""


def image_format(data: bytes) -> str:
    """``"png"``, ``"jpeg"`` or ``"raw"`` (``image_codec.encode_raw``) from the magic bytes; raises
    ``RecordError`` for anything else."""
    if image_codec.is_raw(data):
        return "raw"
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    raise RecordError(f"encoded image must be PNG or JPEG (or raw uint8), got bytes starting with {data[:8]!r}")


@dataclasses.dataclass(frozen=True)
class ViewRecord:
    """One view. Arrays are numpy; optional fields are ``None`` when the dataset lacks them."""

    subject: int
    frame: int  # index of the frame within the subject's video
    camera: int
    image: bytes  # PNG, JPEG or raw uint8 (image_codec.encode_raw), RGB
    K: np.ndarray  # [3, 3] float32, pixels of `image`, pixel centres at +0.5
    world_to_cam: np.ndarray  # [4, 4] float32, OpenCV
    expression: np.ndarray  # [D] float32, the frame's expression code
    mask: bytes | None = None  # PNG or raw uint8, 8-bit grey alpha (255 = foreground), same size as `image`
    posmap: np.ndarray | None = None  # [h, w, 3] float16 world xyz per pixel (any resolution, same field of view)
    posmap_confidence: np.ndarray | None = None  # [h, w] float16 in [0, 1]; trusted where >= 0.5
    features: np.ndarray | None = None  # [fh, fw, C] float16 feature map over the image's field of view
    subject_name: str = ""
    frame_name: str = ""
    camera_name: str = ""
    version: int = SCHEMA_VERSION

    def __post_init__(self):
        if self.version != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"view record schema version {self.version} is not supported (this reader knows version {SCHEMA_VERSION}); "
                "re-create the dataset with this version of avat3r-jax"
            )
        where = f"record (subject={self.subject}, frame={self.frame}, camera={self.camera})"
        image_format(self.image)
        if self.mask is not None and image_format(self.mask) not in ("png", "raw"):
            raise RecordError(f"{where}: mask must be a PNG or raw uint8")
        _check_array(where, "K", self.K, np.float32, (3, 3))
        _check_array(where, "world_to_cam", self.world_to_cam, np.float32, (4, 4))
        _check_array(where, "expression", self.expression, np.float32, (None,))
        if self.posmap is not None:
            _check_array(where, "posmap", self.posmap, np.float16, (None, None, 3))
        if self.posmap_confidence is not None:
            if self.posmap is None:
                raise RecordError(f"{where}: posmap_confidence given without a posmap")
            _check_array(where, "posmap_confidence", self.posmap_confidence, np.float16, self.posmap.shape[:2])
        if self.features is not None:
            _check_array(where, "features", self.features, np.float16, (None, None, None))


def _check_array(where: str, name: str, value, dtype, shape: tuple) -> None:
    if not isinstance(value, np.ndarray):
        raise RecordError(f"{where}: {name} must be a numpy array, got {type(value).__name__}")
    if value.dtype != dtype:
        raise RecordError(f"{where}: {name} must be {np.dtype(dtype).name}, got {value.dtype}")
    if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape, strict=True)):
        expected = ", ".join("*" if s is None else str(s) for s in shape)
        raise RecordError(f"{where}: {name} must have shape ({expected}), got {value.shape}")


MAP_FIELDS = ("posmap", "posmap_confidence", "features")  # what target views do not need
_SCALARS = ("subject", "frame", "camera", "subject_name", "frame_name", "camera_name")
_BLOBS = ("image", "mask")
_ARRAYS = ("K", "world_to_cam", "expression", "posmap", "posmap_confidence", "features")


def serialize(record: ViewRecord) -> bytes:
    """Record -> bytes (see the module docstring for the layout)."""
    chunks, offset = [], 0
    blobs, arrays, field_crc32 = {}, {}, {}
    for name in _BLOBS:
        value = getattr(record, name)
        if value is not None:
            blobs[name] = [offset, len(value)]
            field_crc32[name] = zlib.crc32(value)
            chunks.append(value)
            offset += len(value)
    for name in _ARRAYS:
        value = getattr(record, name)
        if value is not None:
            data = np.ascontiguousarray(value).tobytes()
            arrays[name] = {"dtype": value.dtype.name, "shape": list(value.shape), "offset": offset, "nbytes": len(data)}
            field_crc32[name] = zlib.crc32(data)
            chunks.append(data)
            offset += len(data)
    payload = b"".join(chunks)
    header = {
        "version": record.version,
        "crc32": zlib.crc32(payload),
        "payload_bytes": len(payload),
        "scalars": {name: getattr(record, name) for name in _SCALARS},
        "blobs": blobs,
        "arrays": arrays,
        "field_crc32": field_crc32,
    }
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    return _MAGIC + _LENGTH.pack(len(header_bytes)) + header_bytes + payload


def deserialize(data: bytes, *, with_maps: bool = True) -> ViewRecord:
    """Bytes -> record. ``with_maps=False`` leaves ``MAP_FIELDS`` out (``None``) and, where the record
    has per-field CRCs, checks only the fields it decodes. Raises ``SchemaVersionError`` or
    ``CorruptRecordError`` with the reason."""
    data = bytes(data)
    prefix = len(_MAGIC) + _LENGTH.size
    if len(data) < prefix or not data.startswith(_MAGIC):
        raise CorruptRecordError(f"not a view record: expected magic {_MAGIC!r}, got {data[: len(_MAGIC)]!r} ({len(data)} bytes)")
    (header_length,) = _LENGTH.unpack_from(data, len(_MAGIC))
    try:
        header = json.loads(data[prefix : prefix + header_length].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptRecordError(f"view record header is unreadable ({e}); the record is truncated or corrupt") from e
    if not isinstance(header, dict) or "version" not in header:
        raise CorruptRecordError("view record header has no schema version")
    if header["version"] != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"view record schema version {header['version']} is not supported (this reader knows version {SCHEMA_VERSION}); "
            "re-create the dataset with this version of avat3r-jax"
        )
    payload = memoryview(data)[prefix + header_length :]
    if len(payload) != header["payload_bytes"]:
        raise CorruptRecordError(f"view record payload has {len(payload)} bytes, header says {header['payload_bytes']}: truncated")
    field_crc32 = header.get("field_crc32") if not with_maps else None
    if field_crc32 is None and zlib.crc32(payload) != header["crc32"]:
        raise CorruptRecordError("view record payload fails its CRC-32 check: the record is corrupt")
    fields = dict(header["scalars"])
    spans = {name: (offset, size) for name, (offset, size) in header["blobs"].items()}
    spans.update({name: (spec["offset"], spec["nbytes"]) for name, spec in header["arrays"].items()})
    for name, (offset, size) in spans.items():
        if not with_maps and name in MAP_FIELDS:
            continue
        raw = payload[offset : offset + size]
        if field_crc32 is not None and zlib.crc32(raw) != field_crc32.get(name):
            raise CorruptRecordError(f"view record field {name!r} fails its CRC-32 check: the record is corrupt")
        if name in header["blobs"]:
            fields[name] = bytes(raw)
        else:
            spec = header["arrays"][name]
            fields[name] = np.frombuffer(raw, dtype=np.dtype(spec["dtype"])).reshape(spec["shape"])
    return ViewRecord(**fields)
