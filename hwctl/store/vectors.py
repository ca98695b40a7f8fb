"""Per-device vectors as raw little-endian blobs with their length, dtype and checksum.

A chip readout is ~10⁶ conductances; one row per device would make a readout a
million-row insert. Instead a vector is stored as one blob in a fixed-width
little-endian dtype, so device `i` of any readout sits at byte `i·itemsize` and one
device's history is a substring query. The CRC-32 is checked on every full read.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import BigInteger, Column, Integer, LargeBinary, String

from hwctl.store.errors import CorruptVectorError

# The dtypes a stored vector may have, by their stored name (always little-endian).
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int32": np.dtype("<i4"),
    "uint16": np.dtype("<u2"),
    "uint8": np.dtype("u1"),
    "int8": np.dtype("i1"),
}


@dataclass(frozen=True)
class EncodedVector:
    """A vector ready to bind: the four column values of one vector column group."""

    blob: bytes
    length: int
    dtype: str
    crc32: int

    def columns(self, name: str) -> dict[str, object]:
        """The values keyed by the column names `vector_columns(name)` creates."""
        return {
            f"{name}_blob": self.blob,
            f"{name}_len": self.length,
            f"{name}_dtype": self.dtype,
            f"{name}_crc32": self.crc32,
        }


def vector_columns(name: str, *, nullable: bool = False, chunkable: bool = False) -> list[Column]:
    """The column group that stores one vector: blob, element count, dtype name, CRC-32.

    `chunkable`: blob and checksum may be NULL where the vector is stored in blocks
    elsewhere (each block with its own checksum); length and dtype are always there.
    """
    return [
        Column(f"{name}_blob", LargeBinary, nullable=nullable or chunkable),
        Column(f"{name}_len", Integer, nullable=nullable),
        Column(f"{name}_dtype", String(8), nullable=nullable),
        Column(f"{name}_crc32", BigInteger, nullable=nullable or chunkable),
    ]


def dtype_named(name: str) -> np.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise CorruptVectorError(f"unknown stored vector dtype {name!r}; known: {sorted(DTYPES)}") from None


def encode(values: npt.ArrayLike, dtype: str = "float32") -> EncodedVector:
    """Flatten `values` into a little-endian blob of `dtype` with its checksum."""
    array = np.ascontiguousarray(np.asarray(values).ravel(), dtype=dtype_named(dtype))
    blob = array.tobytes()
    return EncodedVector(blob=blob, length=int(array.size), dtype=dtype, crc32=zlib.crc32(blob))


def decode(blob: bytes, length: int, dtype: str, crc32: int, *, what: str = "vector") -> np.ndarray:
    """The stored vector, after checking its length and CRC-32 (`what` names it in errors)."""
    kind = dtype_named(dtype)
    if len(blob) != length * kind.itemsize:
        raise CorruptVectorError(
            f"{what}: blob holds {len(blob)} bytes, expected {length} × {kind.itemsize} ({dtype})"
        )
    actual = zlib.crc32(blob)
    if actual != crc32:
        raise CorruptVectorError(f"{what}: checksum mismatch (stored {crc32:#010x}, computed {actual:#010x})")
    return np.frombuffer(blob, dtype=kind).astype(kind.newbyteorder("="), copy=False)


def decode_row(row: object, name: str, *, what: str) -> np.ndarray:
    """Decode the column group `name` of a result row (attribute access)."""
    return decode(
        getattr(row, f"{name}_blob"),
        getattr(row, f"{name}_len"),
        getattr(row, f"{name}_dtype"),
        getattr(row, f"{name}_crc32"),
        what=what,
    )
