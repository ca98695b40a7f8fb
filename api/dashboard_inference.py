"""Dashboard pages for bring-your-own data and networks: data sets, networks (analog layers,
devices, which stations each fits) and inference results (accuracy, confusion matrix, a
few inputs drawn with what the chip predicted). Read-only, through the same store
functions as the JSON routes."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from matplotlib import image as mpimg

from api.dashboard import _render
from api.deps import Db, ReadAccess, SettingsDep
from api.params import PathId
from hwctl.heap import release_freed_heap
from hwctl.inference.inputs import Inputs
from hwctl.store import datasets as store_datasets
from hwctl.store import inferences as store_inferences
from hwctl.store import queries
from hwctl.store.networks import stored_network_needs

router = APIRouter(include_in_schema=False, dependencies=[ReadAccess])

LISTED = 200  # rows a listing page shows
SHOWN_INPUTS = 12  # inputs drawn on an inference's page


@dataclass(frozen=True)
class ShownInput:
    index: int
    png_data_uri: str
    predicted: int
    label: int | None


def image_data_uri(inputs: Inputs, index: int) -> str:
    """One input as an inline PNG (its own range stretched to 0–1: float sets are normalised)."""
    x = np.asarray(inputs.x[index], np.float32)
    hwc = x if inputs.layout == "NHWC" else np.moveaxis(x, 0, -1)
    low, high = float(hwc.min()), float(hwc.max())
    hwc = (hwc - low) / (high - low) if high > low else np.zeros_like(hwc)
    buffer = io.BytesIO()
    if hwc.shape[-1] == 3:
        mpimg.imsave(buffer, hwc, format="png")
    else:
        mpimg.imsave(buffer, hwc[..., 0], format="png", cmap="gray", vmin=0.0, vmax=1.0)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@router.get("/dashboard/datasets", response_class=HTMLResponse)
def dashboard_datasets(request: Request, db: Db) -> HTMLResponse:
    listed, total = store_datasets.list_datasets(db, LISTED, 0)
    return _render(request, "datasets.html", datasets=listed, total=total, refresh_s=None)


@router.get("/dashboard/networks", response_class=HTMLResponse)
def dashboard_networks(request: Request, db: Db) -> HTMLResponse:
    listing = queries.list_networks(db, queries.Paging(LISTED, 0))
    return _render(request, "networks.html", networks=listing.items, total=listing.total, refresh_s=None)


@router.get("/dashboard/networks/{network_id}", response_class=HTMLResponse)
def dashboard_network(network_id: PathId, request: Request, db: Db) -> HTMLResponse:
    row = queries.get_network(db, network_id)
    try:
        needs = stored_network_needs(db, network_id)
    finally:
        release_freed_heap()  # a first view loads and builds the checkpoint once
    return _render(request, "network.html", network=row, needs=needs, refresh_s=None)


@router.get("/dashboard/experiments/{experiment_id}/inferences", response_class=HTMLResponse)
def dashboard_inferences(experiment_id: PathId, request: Request, db: Db) -> HTMLResponse:
    queries.get_experiment(db, experiment_id)  # 404 for an unknown one
    listed, total = store_inferences.list_inferences(db, experiment_id, LISTED, 0)
    statuses = {r.id: store_inferences.job_status(db, r.job_id) or "unknown" for r in listed}
    return _render(request, "inferences.html", experiment_id=experiment_id, inferences=listed,
                   statuses=statuses, total=total, refresh_s=None)  # fmt: skip


@router.get("/dashboard/inferences/{inference_id}", response_class=HTMLResponse)
def dashboard_inference(
    inference_id: PathId, request: Request, db: Db, settings: SettingsDep
) -> HTMLResponse:
    """Accuracy per method and repeat, confusion matrices, and the first inputs drawn with the
    prediction of the first method."""
    record = store_inferences.get_inference(db, inference_id)
    status = store_inferences.job_status(db, record.job_id) or "unknown"
    summary = record.summary or {}
    shown: list[ShownInput] = []
    logits = store_inferences.load_logits(db, inference_id) if record.summary else None
    if logits is not None:
        inputs = store_datasets.load_inputs(db, record.dataset_id, settings.max_upload_expanded_bytes)
        predicted, labels = logits[0, 0].argmax(-1), inputs.y
        shown = [
            ShownInput(i, image_data_uri(inputs, i), int(predicted[i]),
                       None if labels is None else int(labels[i]))
            for i in range(min(SHOWN_INPUTS, len(inputs)))
        ]
    return _render(request, "inference.html", inference=record, status=status, summary=summary, shown=shown,
                   refresh_s=30 if status in ("queued", "running") else None)  # fmt: skip
