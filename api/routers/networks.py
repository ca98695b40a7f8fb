"""Networks: upload a checkpoint (size-limited, loaded tensors-only), list and inspect them."""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Request, Response, UploadFile

from api.deps import Db, ReadAccess, SettingsDep, WriteAccess, WritesDep
from api.pagination import Page, Paging
from api.params import PathId
from api.problems import problem_responses
from api.schemas.networks import Network
from api.views import network_out, page_of, paging
from hwctl.nn.models import Checkpoint, load_checkpoint
from hwctl.store import queries, records

router = APIRouter(prefix="/networks", tags=["networks"])


def _too_large(size: int, limit: int) -> HTTPException:
    return HTTPException(413, f"checkpoint is {size} bytes; this server accepts at most {limit} bytes")


def _parse_checkpoint(data: bytes, filename: str) -> Checkpoint:
    """Tensors and plain data only (`weights_only=True`), and it must build its architecture."""
    try:
        checkpoint = load_checkpoint(data)
        checkpoint.build()
    except Exception as exc:  # untrusted bytes: any failure means "not a usable checkpoint"
        raise HTTPException(
            422, f"{filename!r} is not a usable hwctl/PyTorch checkpoint: {type(exc).__name__}: {exc}"
        ) from None
    return checkpoint


@router.post(
    "", status_code=201, response_model=Network,
    dependencies=[WriteAccess], responses=problem_responses(401, 403, 413, 422),
)
def upload_network(
    request: Request,
    writes: WritesDep,
    settings: SettingsDep,
    response: Response,
    file: Annotated[UploadFile, File(description="checkpoint saved by `hwctl train` (torch.save)")],
    name: Annotated[str | None, Form(max_length=128)] = None,
) -> Network:
    limit = settings.max_upload_bytes
    declared = int(request.headers.get("content-length") or 0)
    if declared > limit + 64 * 1024:  # multipart framing adds a little to the file itself
        raise _too_large(declared, limit)
    data = file.file.read(limit + 1)  # sync handler: runs in the thread pool, not the event loop
    if len(data) > limit:
        raise _too_large(len(data), limit)
    filename = file.filename or "upload"
    checkpoint = _parse_checkpoint(data, filename)
    meta = json.loads(json.dumps(checkpoint.meta, default=str))  # JSON-safe whatever was recorded
    with writes.transaction() as conn:
        new_id = records.add_network(
            conn, name or PurePath(filename).stem or checkpoint.arch, architecture=checkpoint.arch,
            checkpoint=data, meta=meta,
        )
        created = queries.get_network(conn, new_id)
    response.headers["Location"] = f"/networks/{new_id}"
    return network_out(created)


@router.get("", response_model=Page[Network], dependencies=[ReadAccess])
def list_networks(db: Db, page: Paging) -> Page[Network]:
    return page_of(queries.list_networks(db, paging(page)), page, network_out)


@router.get(
    "/{network_id}", response_model=Network, dependencies=[ReadAccess],
    responses=problem_responses(404),
)
def get_network(network_id: PathId, db: Db) -> Network:
    return network_out(queries.get_network(db, network_id))
