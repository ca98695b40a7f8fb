"""Uploaded archives are sized before they are opened: a few megabytes must never become
gigabytes in memory.

PyTorch checkpoints (`torch.save`), `.pt2` exports and NumPy `.npz` files are ZIP archives.
A ZIP member may be deflated, so a 4 MB upload can hold a member that inflates to 1 GB,
and the loader allocates each member's declared size before it inflates it. The central
directory at the end of the archive declares every member's uncompressed size without
inflating anything, so `check_archive` walks only that directory, entry by entry (never
more than its member bound), and sums the declared sizes against the caller's bound. A
member whose data inflates past its declared size is refused by the readers the loaders
use (torch checks each record against the size its tensor needs), so the declared sum
bounds what loading can allocate.

Bytes that are not a ZIP archive are left to the loader: they cannot expand.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_EOCD = b"PK\x05\x06"  # end of central directory record
_EOCD_BYTES = 22
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_LOCATOR_BYTES = 20
_ZIP64_EOCD = b"PK\x06\x06"
_ZIP64_EOCD_BYTES = 56
_ENTRY = b"PK\x01\x02"  # central directory file header
_ENTRY_BYTES = 46
_ZIP64_SIZE = 0xFFFFFFFF
_ZIP64_EXTRA = 0x0001
_MAX_COMMENT_BYTES = 0xFFFF
MAX_MEMBERS = 10_000  # a ResNet checkpoint has one member per tensor: ~100


class ArchiveTooLargeError(ValueError):
    """The archive would expand beyond what this service accepts."""


@dataclass(frozen=True)
class ArchiveSize:
    members: int
    compressed_bytes: int
    expanded_bytes: int  # the sum of the members' declared uncompressed sizes


def check_archive(data: bytes, max_expanded_bytes: int, max_members: int = MAX_MEMBERS) -> ArchiveSize | None:
    """The archive's declared size if `data` is a ZIP archive within the bounds (None if it
    is not an archive); raises ArchiveTooLargeError, naming the bound, otherwise."""
    directory = _directory(data)
    if directory is None:
        return None
    count, offset = directory
    if count > max_members:
        raise ArchiveTooLargeError(f"the archive has {count} members; at most {max_members} are accepted")
    compressed = expanded = 0
    for _ in range(count):
        entry_compressed, entry_expanded, offset = _entry(data, offset)
        compressed += entry_compressed
        expanded += entry_expanded
        if expanded > max_expanded_bytes:
            raise ArchiveTooLargeError(
                f"the archive would expand to at least {expanded} bytes; "
                f"at most {max_expanded_bytes} are accepted"
            )
    return ArchiveSize(count, compressed, expanded)


class _UnreadableError(ArchiveTooLargeError):
    def __init__(self, what: str) -> None:
        super().__init__(f"the archive's central directory is unreadable: {what}")


def _directory(data: bytes) -> tuple[int, int] | None:
    """(member count, central directory offset) from the end record, ZIP64's where present;
    None without an end record (not a ZIP archive)."""
    at = data.rfind(_EOCD, max(0, len(data) - _EOCD_BYTES - _MAX_COMMENT_BYTES))
    if at < 0 or len(data) - at < _EOCD_BYTES:
        return None
    count, _, offset = struct.unpack_from("<HII", data, at + 10)
    locator_at = at - _ZIP64_LOCATOR_BYTES
    if locator_at >= 0 and data[locator_at : locator_at + 4] == _ZIP64_LOCATOR:
        (record_at,) = struct.unpack_from("<Q", data, locator_at + 8)
        if record_at + _ZIP64_EOCD_BYTES > len(data) or data[record_at : record_at + 4] != _ZIP64_EOCD:
            raise _UnreadableError("its ZIP64 end record is missing")
        count, _, offset = struct.unpack_from("<QQQ", data, record_at + 32)
    return count, offset


def _entry(data: bytes, at: int) -> tuple[int, int, int]:
    """One central directory entry: (compressed, uncompressed size, offset of the next)."""
    if at + _ENTRY_BYTES > len(data) or data[at : at + 4] != _ENTRY:
        raise _UnreadableError(f"no directory entry at byte {at}")
    compressed, expanded, name_len, extra_len, comment_len = struct.unpack_from("<IIHHH", data, at + 20)
    extra_at = at + _ENTRY_BYTES + name_len
    end = extra_at + extra_len + comment_len
    if end > len(data):
        raise _UnreadableError(f"the entry at byte {at} runs past the end")
    if _ZIP64_SIZE in (compressed, expanded):  # the real sizes are in the ZIP64 extra field
        expanded, compressed = _zip64_sizes(data[extra_at : extra_at + extra_len], expanded, compressed)
    return compressed, expanded, end


def _zip64_sizes(extra: bytes, expanded: int, compressed: int) -> tuple[int, int]:
    """Sizes from the ZIP64 extra field, which holds (in this order) only those at 0xFFFFFFFF."""
    at = 0
    while at + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, at)
        if tag == _ZIP64_EXTRA:
            values = list(struct.unpack_from(f"<{min(size, 16) // 8}Q", extra, at + 4))
            if expanded == _ZIP64_SIZE and values:
                expanded = values.pop(0)
            if compressed == _ZIP64_SIZE and values:
                compressed = values.pop(0)
            return expanded, compressed
        at += 4 + size
    raise _UnreadableError("a ZIP64 size without its extra field")
