"""Vertex positions of a PLY mesh (ascii or binary), numpy only: Ava-256's tracked meshes."""

from __future__ import annotations

import numpy as np

_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2", "ushort": "u2",
    "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4", "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}  # fmt: skip
_ENDIAN = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": "<"}


def read_vertices(data: bytes, what: str) -> np.ndarray:
    """``float64 [V, 3]``: x, y, z of the ``vertex`` element, which must come first in the file."""
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise ValueError(f"{what} is not a PLY file (no 'ply' ... 'end_header' header)")
    header = data[:end].decode("ascii", errors="replace").splitlines()
    body = data[data.index(b"\n", end) + 1 :]
    fmt = next((line.split()[1] for line in header if line.startswith("format")), None)
    if fmt not in _ENDIAN:
        raise ValueError(f"{what}: unknown PLY format {fmt!r}")
    elements = [line.split() for line in header if line.startswith(("element", "property"))]
    if not elements or elements[0][:2] != ["element", "vertex"]:
        raise ValueError(f"{what}: the first PLY element must be 'vertex'")
    count = int(elements[0][2])
    properties = []
    for line in elements[1:]:
        if line[0] == "element":
            break
        if line[1] == "list" or line[1] not in _TYPES:
            raise ValueError(f"{what}: unsupported vertex property {' '.join(line)!r}")
        properties.append((line[2], _ENDIAN[fmt] + _TYPES[line[1]]))
    names = [name for name, _ in properties]
    if not {"x", "y", "z"} <= set(names):
        raise ValueError(f"{what}: vertices lack x, y, z (they have {names})")
    if fmt == "ascii":
        rows = body.decode("ascii").split("\n")[:count]
        table = np.array([row.split()[: len(names)] for row in rows], np.float64)
        if table.shape != (count, len(names)):
            raise ValueError(f"{what}: expected {count} vertex rows of {len(names)} values")
        return table[:, [names.index(a) for a in "xyz"]]
    dtype = np.dtype(properties)
    if len(body) < count * dtype.itemsize:
        raise ValueError(f"{what}: truncated ({len(body)} bytes of vertex data, {count * dtype.itemsize} expected)")
    vertices = np.frombuffer(body, dtype, count)
    return np.stack([vertices[a].astype(np.float64) for a in "xyz"], -1)
