"""Networks: upload a checkpoint (size-limited, loaded tensors-only), list and inspect them."""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile
from sqlalchemy import Row

from api.deps import Db, ReadAccess, SettingsDep, WriteAccess, WritesDep
from api.pagination import Page, Paging
from api.params import PathId
from api.problems import problem_responses
from api.schemas.networks import AnalogLayer, Network, NetworkDetail, StationFit
from api.uploads import read_bounded
from api.views import network_out, page_of, paging
from hwctl.heap import release_freed_heap
from hwctl.nn.exported import ExportedTooLargeError
from hwctl.nn.models import Checkpoint, load_checkpoint
from hwctl.nn.network_spec import network_spec
from hwctl.store import queries, records
from hwctl.store.networks import AnalogLayer as AnalogLayerShape
from hwctl.store.networks import NetworkNeeds, analog_layers_of, network_needs, stored_network_needs
from hwctl.uploads import ArchiveTooLargeError, check_archive

router = APIRouter(prefix="/networks", tags=["networks"])


def _parse_checkpoint(
    data: bytes, filename: str, max_expanded_bytes: int, architecture: str | None
) -> tuple[Checkpoint, list[AnalogLayerShape], tuple[int, ...]]:
    """Sized before it is opened (a checkpoint or a `.pt2` is a ZIP archive whose members may
    be deflated), then tensors and plain data only (`weights_only=True`) or, for a `.pt2`,
    the graph read as data (`hwctl.nn.exported`: nothing in it runs); it must build its
    architecture (a `.pt2` without one is its own: input shape and classes from the graph).
    With its analog layers, read from that build (the model is built once), and its input shape."""
    try:
        check_archive(data, max_expanded_bytes)
    except ArchiveTooLargeError as exc:
        raise HTTPException(413, f"{filename!r}: {exc}") from None
    try:
        checkpoint = load_checkpoint(data, architecture, max_expanded_bytes)
        if architecture is not None and checkpoint.arch != architecture:  # a .pt names its own
            raise ValueError(f"the checkpoint is a {checkpoint.arch}, not the {architecture!r} given")
        model = checkpoint.build()  # its tensors must fit its architecture (strict state dict)
        layers = analog_layers_of(checkpoint, model)
        del model
        input_shape = network_spec(checkpoint).input_shape  # a graph's: built and run once on it
    except ExportedTooLargeError as exc:  # its weights' copies, past what the entries' sizes said
        raise HTTPException(413, f"{filename!r}: {exc}") from None
    except Exception as exc:  # untrusted bytes: any failure means "not a usable checkpoint"
        raise HTTPException(
            422, f"{filename!r} is not a usable hwctl/PyTorch checkpoint: {type(exc).__name__}: {exc}"
        ) from None
    return checkpoint, layers, input_shape


@router.post(
    "",
    status_code=201,
    response_model=NetworkDetail,
    dependencies=[WriteAccess],
    responses=problem_responses(401, 403, 413, 422),
)
def upload_network(
    writes: WritesDep,
    settings: SettingsDep,
    response: Response,
    file: Annotated[
        UploadFile,
        File(description="checkpoint saved by `hwctl train` (torch.save), or a `.pt2` from `hwctl export`"),
    ],
    name: Annotated[str | None, Form(max_length=128)] = None,
    architecture: Annotated[
        str | None,
        Form(
            max_length=64,
            description="the registered architecture a `.pt2` graph is, e.g. resnet20; "
            "omitted or 'exported': the graph is its own architecture",
        ),
    ] = None,
) -> NetworkDetail:
    """Store a checkpoint. The request body was bounded while it arrived (api.body_limit),
    the file part is read up to the limit, and the archive sized before it is loaded. The
    answer says what the network asks of a chip and which registered stations it fits."""
    try:
        new_id, created, needs = _store_upload(writes, settings, file, name, architecture)
    finally:
        # The checkpoint's bytes, tensors and model (87 MB each for ResNet-34) were freed
        # in the threadpool thread's arena: hand them back, or the API keeps them resident.
        release_freed_heap()
    response.headers["Location"] = f"/networks/{new_id}"
    return _detail(created, needs)


def _store_upload(
    writes: WritesDep, settings: SettingsDep, file: UploadFile, name: str | None, architecture: str | None
) -> tuple[int, Row[Any], NetworkNeeds]:
    """Read, check and store the upload; the checkpoint's tensors are let go before its
    bytes are written (one of them in memory with the write's own copy, not both)."""
    data = read_bounded(file, settings.max_upload_bytes, "checkpoint")
    filename = file.filename or "upload"
    checkpoint, layers, input_shape = _parse_checkpoint(
        data, filename, settings.max_upload_expanded_bytes, architecture
    )
    meta = json.loads(json.dumps(checkpoint.meta, default=str))  # JSON-safe whatever was recorded
    stored_name, arch = name or PurePath(filename).stem or checkpoint.arch, checkpoint.arch
    with writes.transaction() as conn:
        needs = network_needs(conn, input_shape, layers)
        del checkpoint
        new_id = records.add_network(conn, stored_name, architecture=arch, checkpoint=data, meta=meta)
        created = queries.get_network(conn, new_id)
    return new_id, created, needs


def _detail(row: Row[Any], needs: NetworkNeeds) -> NetworkDetail:
    return NetworkDetail(
        **network_out(row).model_dump(), input_shape=list(needs.input_shape),
        analog_layers=[AnalogLayer(name=layer.name, shape=layer.shape, weights=layer.n_weights)
                       for layer in needs.layers],
        analog_weights=needs.n_devices // 2, devices=needs.n_devices,
        stations=[StationFit(station=f.station, devices=f.devices, fits=f.fits, reason=f.reason)
                  for f in needs.stations],
    )  # fmt: skip


@router.get("", response_model=Page[Network], dependencies=[ReadAccess])
def list_networks(db: Db, page: Paging) -> Page[Network]:
    return page_of(queries.list_networks(db, paging(page)), page, network_out)


@router.get(
    "/{network_id}",
    response_model=NetworkDetail,
    dependencies=[ReadAccess],
    responses=problem_responses(404),
)
def get_network(network_id: PathId, db: Db) -> NetworkDetail:
    """The network with its analog layers and which registered stations it fits."""
    row = queries.get_network(db, network_id)
    try:
        needs = stored_network_needs(db, network_id)
    finally:
        release_freed_heap()  # a first view loads and builds the checkpoint once
    return _detail(row, needs)
