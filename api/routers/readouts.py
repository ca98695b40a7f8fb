"""Readouts: list them, fetch one device's history, download a whole vector as .npy or Parquet.

A readout holds 10⁶–10⁸ conductances; it leaves as a binary download streamed block by
block from the store (memory: one block), never a JSON list nor a body built in memory.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import APIRouter, Depends, Header, Path, Query, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import Engine

from api.byte_ranges import ByteRange, UnsatisfiableRange, requested_range
from api.deps import Db, ReadAccess, get_engine
from api.pagination import Page, Paging
from api.params import MAX_ROW_ID, PathId, QueryId
from api.problems import problem_response, problem_responses
from api.schemas.results import DeviceSeries, Readout
from api.views import page_of, paging, readout_out
from hwctl.store import queries
from hwctl.store import readouts as store_readouts
from hwctl.store.readouts import G_BYTES, ReadoutInfo
from hwctl.store.scans import scanning

router = APIRouter(tags=["readouts"])

NPY = "application/octet-stream"
PARQUET = "application/vnd.apache.parquet"


@router.get("/readouts", response_model=Page[Readout], dependencies=[ReadAccess])
def list_readouts(
    db: Db, page: Paging, experiment_id: QueryId = None, run_id: QueryId = None
) -> Page[Readout]:
    """Readout metadata (no vectors), oldest offset first."""
    listing = queries.list_readouts(db, paging(page), experiment_id=experiment_id, run_id=run_id)
    return page_of(listing, page, readout_out)


@router.get(
    "/readouts/{readout_id}",
    response_model=Readout,
    dependencies=[ReadAccess],
    responses=problem_responses(404),
)
def get_readout(readout_id: PathId, db: Db) -> Readout:
    return readout_out(queries.get_readout(db, readout_id))


def _npy_header(n_devices: int) -> bytes:
    """What `np.save` writes before the data of a float32 vector of `n_devices`."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": (n_devices,)}
    )
    return buffer.getvalue()


def _npy_chunks(engine: Engine, readout_id: int, header: bytes, wanted: ByteRange) -> Iterator[bytes]:
    """Bytes `wanted` of the .npy file: the header, then the stored blocks that hold the
    wanted devices, one at a time (memory: one block, whatever the readout's size)."""
    if wanted.start < len(header):
        yield header[wanted.start : min(wanted.stop, len(header))]
    data_start, data_stop = max(wanted.start - len(header), 0), wanted.stop - len(header)
    if data_stop <= data_start:
        return
    first_device, stop_device = data_start // G_BYTES, -(-data_stop // G_BYTES)
    with engine.connect() as conn, scanning(conn):  # on SQLite, the pages read are not kept resident
        for first, g_us in store_readouts.iter_readout_blocks(conn, readout_id, first_device, stop_device):
            block_bytes = np.ascontiguousarray(g_us, "<f4").view(np.uint8)
            offset = first * G_BYTES
            yield block_bytes[
                max(data_start - offset, 0) : min(data_stop - offset, block_bytes.size)
            ].tobytes()


def _parquet_chunks(engine: Engine, readout: ReadoutInfo, addresses: np.ndarray) -> Iterator[bytes]:
    """Long format, one row per device (any dataframe tool can filter and join it), one
    row group per stored block, each handed on as soon as it is written."""
    sink = _Drain()
    schema = pa.schema([("readout_id", pa.int64()), ("offset_s", pa.float64()), ("device", pa.int64()),
                        ("address", pa.uint32()), ("g_us", pa.float32())])  # fmt: skip
    with (
        engine.connect() as conn,
        scanning(conn),
        pq.ParquetWriter(sink, schema, compression="zstd") as writer,
    ):
        for first, g_us in store_readouts.iter_readout_blocks(conn, readout.id):
            n = g_us.size
            writer.write_table(pa.table({
                "readout_id": pa.array(np.full(n, readout.id, dtype=np.int64)),
                "offset_s": pa.array(np.full(n, readout.offset_s, dtype=np.float64)),
                "device": pa.array(np.arange(first, first + n, dtype=np.int64)),
                "address": pa.array(addresses[first : first + n]),
                "g_us": pa.array(g_us),
            }, schema=schema))  # fmt: skip
            yield sink.take()
    yield sink.take()


class _Drain(io.RawIOBase):
    """A write-only file whose bytes are taken out as they come (the Parquet writer's sink)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        taken, self._parts = b"".join(self._parts), []
        return taken


@router.get(
    "/readouts/{readout_id}/vector",
    response_class=StreamingResponse,
    dependencies=[ReadAccess],
    responses={
        200: {"description": "the conductances, µS, in canonical device order",
              "content": {NPY: {}, PARQUET: {}}},
        206: {"description": "the bytes a `Range` header asked for (npy only)", "content": {NPY: {}}},
        **problem_responses(404),
        416: problem_responses(416)[416] | {"description": "the range starts past the end of the .npy file"},
    },
)  # fmt: skip
def download_readout(
    readout_id: PathId,
    db: Db,
    engine: Annotated[Engine, Depends(get_engine)],
    format: Annotated[Literal["npy", "parquet"], Query(description="npy vector or long Parquet")] = "npy",
    range_header: Annotated[str | None, Header(alias="Range")] = None,
) -> Response:
    """The readout streamed block by block. The .npy download honours a single `Range`
    (206 with `Content-Range`, 416 past the end); Parquet is written as it streams, so its
    length is not known up front and it has no ranges."""
    readout = store_readouts.readout_info(db, readout_id)
    if format == "parquet":
        addresses = queries.run_addresses(db, readout.run_id)
        disposition = f'attachment; filename="readout-{readout_id}.parquet"'
        return StreamingResponse(_parquet_chunks(engine, readout, addresses), media_type=PARQUET,
                                 headers={"Content-Disposition": disposition})  # fmt: skip
    header = _npy_header(readout.n_devices)
    size = len(header) + readout.n_devices * G_BYTES
    headers = {
        "Content-Disposition": f'attachment; filename="readout-{readout_id}.npy"',
        "Accept-Ranges": "bytes",
    }
    try:
        wanted = requested_range(range_header, size)
    except UnsatisfiableRange:
        return problem_response(
            416, f"the range {range_header!r} starts past the end of the {size}-byte .npy file",
            headers={**headers, "Content-Range": f"bytes */{size}"},
        )
    status = 200 if wanted is None else 206
    wanted = wanted or ByteRange(0, size, size)
    if status == 206:
        headers["Content-Range"] = wanted.content_range
    headers["Content-Length"] = str(wanted.length)
    body = _npy_chunks(engine, readout_id, header, wanted)
    return StreamingResponse(body, status_code=status, media_type=NPY, headers=headers)


@router.get(
    "/runs/{run_id}/devices/{device}/series",
    response_model=DeviceSeries,
    dependencies=[ReadAccess],
    responses=problem_responses(404, 422),
)
def get_device_series(
    run_id: PathId, device: Annotated[int, Path(ge=0, le=MAX_ROW_ID)], db: Db
) -> DeviceSeries:
    """One device across every readout of a run: time since it was programmed, and conductance."""
    series = store_readouts.device_series(db, run_id, device)
    return DeviceSeries(run_id=run_id, device=device, t_s=series.t_s.tolist(), g_us=series.g_us.tolist())
