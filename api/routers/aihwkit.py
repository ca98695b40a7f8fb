"""aihwkit interoperability: an experiment's targets or a readout as aihwkit's Fusion-chip CSV
(streamed, one layer's line at a time), and a Fusion CSV imported as this experiment's
programming targets in canonical device order (`hwctl.interop.aihwkit_fusion`)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, HTTPException, Query, UploadFile
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import Connection
from torch import nn

from api.deps import Db, EngineDep, ReadAccess, SettingsDep, WriteAccess
from api.params import MAX_ROW_ID, PathId
from api.problems import problem_responses
from api.uploads import read_bounded
from hwctl.interop.aihwkit_fusion import (
    FusionLayoutError,
    fusion_layers,
    fusion_values,
    read_csv,
    targets_from_fusion,
    write_csv,
)
from hwctl.mapping import DeviceMap
from hwctl.store import inferences as store
from hwctl.store import readouts as store_readouts
from hwctl.store.networks import load_network

router = APIRouter(prefix="/experiments/{experiment_id}", tags=["aihwkit"])
CSV = "text/csv"
NPY = "application/octet-stream"


def _programmed(db: Connection, experiment_id: int) -> tuple[nn.Module, DeviceMap, int]:
    """The experiment's network, the device map of its last programming run, and that run."""
    target = store.experiment_target(db, experiment_id)  # 404
    run_id = store.latest_run(db, experiment_id)
    if run_id is None:
        raise HTTPException(409, f"experiment {experiment_id} has no finished programming run yet")
    return load_network(db, target.network_id).build(), store_readouts.load_run_device_map(db, run_id), run_id


@router.get(
    "/export/aihwkit-fusion.csv", response_class=StreamingResponse, dependencies=[ReadAccess],
    responses={200: {"description": "Fusion layout: header, layer names, one line of µS per layer",
                     "content": {CSV: {}}}, **problem_responses(404, 409, 422)},
)  # fmt: skip
def export_fusion(
    experiment_id: PathId, engine: EngineDep,
    readout_id: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID, description="omitted: the targets")] = None,
) -> StreamingResponse:
    """The targets (or a readout of this experiment) as aihwkit's `fusion_import` reads them."""
    with engine.connect() as db:
        model, device_map, run_id = _programmed(db, experiment_id)
        if readout_id is None:
            g_us, what = device_map.target_g_us, "targets"
        else:
            found = store.experiment_readout(db, experiment_id, readout_id)  # 404 for another's
            if found.run_id != run_id:
                raise HTTPException(422, f"readout {readout_id} is of an earlier programming run")
            g_us, what = store_readouts.load_readout(db, readout_id).g_us, f"readout-{readout_id}"
    layers = fusion_layers(model)
    values = fusion_values(model, device_map, g_us)

    def chunks() -> Iterator[bytes]:
        for text in write_csv(layers, values):
            yield text.encode()

    name = f"experiment-{experiment_id}-{what}-aihwkit-fusion.csv"
    disposition = {"Content-Disposition": f'attachment; filename="{name}"'}
    return StreamingResponse(chunks(), media_type=CSV, headers=disposition)


@router.post(
    "/import/aihwkit-fusion.csv", response_class=Response, dependencies=[WriteAccess],
    responses={200: {"description": "float32 target conductances (µS) in canonical device order",
                     "content": {NPY: {}}}, **problem_responses(401, 403, 404, 409, 413, 422)},
)  # fmt: skip
def import_fusion(
    experiment_id: PathId, db: Db, settings: SettingsDep,
    file: Annotated[UploadFile, File(description="a CSV written by aihwkit's fusion_export")],
) -> Response:
    """A Fusion CSV of this experiment's network as its target set: each weight's conductance on
    the device of the weight's sign, the other RESET. Refused unless the header is this network's."""
    model, device_map, _ = _programmed(db, experiment_id)
    data = read_bounded(file, settings.max_upload_bytes, "CSV")
    try:
        targets = targets_from_fusion(model, device_map, read_csv(data.decode("utf-8"), fusion_layers(model)))
    except UnicodeDecodeError:
        raise HTTPException(422, "the CSV is not UTF-8 text") from None
    except FusionLayoutError as exc:
        raise HTTPException(
            422, f"not the Fusion layout of experiment {experiment_id}'s network: {exc}"
        ) from None
    buffer = io.BytesIO()
    np.save(buffer, targets, allow_pickle=False)
    disposition = {"Content-Disposition": f'attachment; filename="experiment-{experiment_id}-targets.npy"'}
    return Response(buffer.getvalue(), media_type=NPY, headers=disposition)
