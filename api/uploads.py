"""Reading an uploaded file part with a bound: what every upload route shares.

The request body was already bounded while it arrived (`api.body_limit`); the file part is
then read in chunks and refused once past its own limit, so no more than `limit` bytes are
ever held.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.datastructures import UploadFile

CHUNK_BYTES = 1 << 20


def read_bounded(file: UploadFile, limit: int, what: str) -> bytes:
    """The uploaded file's bytes, read in chunks and refused (413) once past `limit`.

    A plain function for sync handlers (they run in the threadpool, off the event loop)."""
    chunks, size = [], 0
    while chunk := file.file.read(CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the {what} is larger than this server accepts: at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
