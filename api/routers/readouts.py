"""Readouts: list them, fetch one device's history, download a whole vector as .npy or Parquet.

A readout holds ~10⁶ conductances; it leaves as a binary download, never a JSON list.
"""

from __future__ import annotations

import io
from typing import Annotated, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import APIRouter, Path, Query, Response

from api.deps import Db, ReadAccess
from api.pagination import Page, Paging
from api.params import MAX_ROW_ID, PathId, QueryId
from api.problems import problem_responses
from api.schemas.results import DeviceSeries, Readout
from api.views import page_of, paging, readout_out
from hwctl.store import queries
from hwctl.store import readouts as store_readouts

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
    "/readouts/{readout_id}", response_model=Readout, dependencies=[ReadAccess],
    responses=problem_responses(404),
)
def get_readout(readout_id: PathId, db: Db) -> Readout:
    return readout_out(queries.get_readout(db, readout_id))


def _npy(g_us: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, g_us, allow_pickle=False)
    return buffer.getvalue()


def _parquet(readout: store_readouts.Readout, addresses: np.ndarray) -> bytes:
    """Long format: one row per device, so any dataframe tool can filter and join it."""
    g_us, n = readout.g_us, readout.g_us.size
    table = pa.table({
        "readout_id": pa.array(np.full(n, readout.id, dtype=np.int64)),
        "offset_s": pa.array(np.full(n, readout.offset_s, dtype=np.float64)),
        "device": pa.array(np.arange(n, dtype=np.int64)),
        "address": pa.array(addresses),
        "g_us": pa.array(g_us.astype(np.float32, copy=False)),
    })
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


@router.get(
    "/readouts/{readout_id}/vector",
    response_class=Response,
    dependencies=[ReadAccess],
    responses={
        200: {"description": "the conductances, µS, in canonical device order",
              "content": {NPY: {}, PARQUET: {}}},
        **problem_responses(404),
    },
)
def download_readout(
    readout_id: PathId,
    db: Db,
    format: Annotated[Literal["npy", "parquet"], Query(description="npy vector or long Parquet")] = "npy",
) -> Response:
    readout = store_readouts.load_readout(db, readout_id)
    if format == "npy":
        body, media, suffix = _npy(readout.g_us), NPY, "npy"
    else:
        body, media, suffix = _parquet(readout, queries.run_addresses(db, readout.run_id)), PARQUET, "parquet"
    disposition = f'attachment; filename="readout-{readout_id}.{suffix}"'
    return Response(body, media_type=media, headers={"Content-Disposition": disposition})


@router.get(
    "/runs/{run_id}/devices/{device}/series", response_model=DeviceSeries, dependencies=[ReadAccess],
    responses=problem_responses(404, 422),
)
def get_device_series(
    run_id: PathId, device: Annotated[int, Path(ge=0, le=MAX_ROW_ID)], db: Db
) -> DeviceSeries:
    """One device across every readout of a run: time since it was programmed, and conductance."""
    series = store_readouts.device_series(db, run_id, device)
    return DeviceSeries(run_id=run_id, device=device, t_s=series.t_s.tolist(), g_us=series.g_us.tolist())
