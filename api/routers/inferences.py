"""Inference jobs: run a data set (or an uploaded batch) through an experiment's network as
its chip holds it, at a stored readout (compute lane) or now (a fresh read, chip lane).

Everything that could fail is checked before anything is queued: the data set exists and
fits the network's input shape, the readout is the experiment's, AdaBS has batch norm to
re-estimate, the chip still holds the experiment for `now`. Then the inference row and its
job are stored in one transaction (202). The job's progress streams from
/jobs/{id}/events; results are read here.
"""

from __future__ import annotations

import io
from pathlib import PurePath
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.dataset_uploads import ingest
from api.deps import Db, EngineDep, ReadAccess, SettingsDep, WriteAccess, Writes, WritesDep
from api.pagination import Page, Paging
from api.params import PathId
from api.problems import key_reused, problem_responses
from api.schemas.inferences import (
    AccuracyPointOut,
    Inference,
    InferenceAccepted,
    InferenceRequest,
    Predictions,
    ReevaluationAccepted,
    SeriesPointOut,
)
from api.schemas.jobs import Job
from api.uploads import read_bounded
from hwctl import queue
from hwctl.analysis.stored import measured_accuracy
from hwctl.inference.inputs import InputError
from hwctl.inference.results import top_k
from hwctl.inference.run import (
    InferenceError,
    check_fits,
    check_methods,
    check_size,
)
from hwctl.inference.spec import (
    EVALUATION_SERIES,
    MAX_REEVALUATED_READOUTS,
    InferenceSpec,
    ReevaluationSpec,
)
from hwctl.jobs.infer import FRESH_READ_SCHEDULED_S, InferPayload
from hwctl.nn.calibration import needs_calibration
from hwctl.settings import Settings
from hwctl.store import datasets as store_datasets
from hwctl.store import inferences as store
from hwctl.store import queries
from hwctl.store.campaign import load_spec
from hwctl.store.errors import NotFoundError
from hwctl.store.networks import stored_network_spec
from hwctl.vocabulary import JobKind, JobLane

router = APIRouter(tags=["inferences"])
NPY = "application/octet-stream"
INLINE_INPUTS_MAX_BYTES = 1 << 20  # an uploaded batch; larger sets go through POST /datasets first
_SUBMIT_BODY = {
    "requestBody": {"content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
        "multipart/form-data": {"schema": {"type": "object", "required": ["spec", "inputs"], "properties": {
            "spec": {"type": "string", "description": "InferenceRequest as JSON, without dataset_id"},
            "inputs": {"type": "string", "format": "binary", "description": ".npy or .npz batch"},
        }}},
    }, "required": True},
}  # fmt: skip


def inference_out(db: Connection, record: store.InferenceRecord) -> Inference:
    summary = record.summary
    readouts = (summary or {}).get("readouts") or []
    return Inference(
        id=record.id, experiment_id=record.experiment_id, dataset_id=record.dataset_id,
        readout_id=record.readout_id, job_id=record.job_id,
        status=store.job_status(db, record.job_id) or "unknown",
        spec=InferenceSpec.model_validate(record.settings),
        t_since_program_s=readouts[0]["t_since_program_s"] if readouts else None,
        summary=summary, created_at=record.created_at,
    )  # fmt: skip


def _checked(
    db: Connection, experiment_id: int, request: InferenceSpec
) -> tuple[store.ExperimentTarget, int, bool]:
    """(target, run id, at now) once everything that would fail the job has been checked."""
    target = store.experiment_target(db, experiment_id)  # 404
    try:
        dataset = store_datasets.get_dataset(db, request.dataset_id)
    except NotFoundError as exc:
        raise HTTPException(422, str(exc)) from None
    try:
        network = stored_network_spec(db, target.network_id)
        check_fits(network, dataset.image_shape)
        check_methods(request.methods, batchnorm=network.has_batchnorm)
        if needs_calibration(request.methods, request.gdc_statistic):
            evaluation = load_spec(db, experiment_id).evaluation
            if store_datasets.inference_calibration_ref(evaluation, network.dataset) is None:
                raise InferenceError(
                    f"AdaBS (and calibration-batch GDC) need calibration images, and experiment "
                    f"{experiment_id} names no calibration set (evaluation.calibration_dataset_id) and its "
                    "network has no built-in data set"
                )
        settings = request.settings()  # the compute core's own checks (a method given twice…)
        check_size(dataset.n_images, network.n_classes, settings)
    except (InputError, InferenceError) as exc:
        raise HTTPException(422, f"data set {dataset.id} and network {target.network_id}: {exc}") from None
    if request.at == "now":
        try:
            return target, store.run_held_on_chip(db, experiment_id), True
        except store.ChipNotHeldError as exc:
            raise HTTPException(409, str(exc)) from None
    if request.repeats > 1 and request.periphery.output_noise_rel == 0:
        raise HTTPException(422, "repeats > 1 at a stored readout would repeat the same numbers (a stored "
                                 "readout has no fresh read noise): give periphery.output_noise_rel, "
                                 'or at "now"')  # fmt: skip
    try:
        found = store.experiment_readout(db, experiment_id, request.at)
    except NotFoundError as exc:
        raise HTTPException(422, str(exc)) from None
    return target, found.run_id, False


def _submit(writes: Writes, experiment_id: int, spec: InferenceSpec, key: str | None) -> tuple[int, Any]:
    """Store the inference and queue its job in one transaction; (inference id, job row)."""
    job_key = None if key is None else f"inference:{experiment_id}:{key}"
    with writes.transaction() as db:
        if job_key is not None and (job_id := queue.job_id_for_key(db, job_key)) is not None:
            inference_id = store.inference_for_job(db, job_id)
            if inference_id is not None:
                if store.get_inference(db, inference_id).settings != spec.model_dump(mode="json"):
                    raise key_reused(str(key), f"inference {inference_id}")
                return inference_id, store.job_row(db, job_id)
        return _queue_one(db, experiment_id, spec, job_key)


def _queue_one(
    db: Connection, experiment_id: int, spec: InferenceSpec, job_key: str | None
) -> tuple[int, Any]:
    """Check, store and queue one inference in the caller's transaction; (inference id, job row)."""
    target, run_id, now = _checked(db, experiment_id, spec)
    inference_id = store.add_inference(
        db, experiment_id, spec.dataset_id, None if now else int(spec.at), spec.model_dump(mode="json")
    )
    payload = InferPayload(experiment_id=experiment_id, inference_id=inference_id, run_id=run_id)
    job = queue.enqueue_in(
        db, kind=JobKind.INFER, lane=JobLane.CHIP if now else JobLane.COMPUTE,
        station_id=target.station_id, experiment_id=experiment_id, payload=payload.model_dump(),
        run_at_s=0.0, idempotency_key=job_key,
        scheduled_s=FRESH_READ_SCHEDULED_S if now else None,
    )  # fmt: skip  # due at once: run_at_s 0 is before any station clock
    store.set_job(db, inference_id, int(job.id))
    return inference_id, job


async def _request_spec(request: Request, writes: Writes, settings: Settings) -> InferenceSpec:
    """The submitted spec: a JSON body, or multipart `spec` + an `inputs` batch stored as a data set."""
    content_type = request.headers.get("content-type", "")
    upload: UploadFile | None = None
    if content_type.startswith("multipart/form-data"):
        shape = "a multipart submission has a `spec` field (JSON) and an `inputs` file"
        try:
            form = await request.form(max_files=1, max_fields=2)
        except StarletteHTTPException as exc:  # Starlette's 400 for a malformed or overfull body
            if exc.status_code != 400:
                raise  # a body over its limit stays 413
            raise HTTPException(422, f"{shape}: {exc.detail}") from None
        raw, part = form.get("spec"), form.get("inputs")
        if not isinstance(raw, str) or not isinstance(part, UploadFile):
            raise HTTPException(422, shape)
        upload = part
    elif content_type.startswith("application/json"):
        raw = (await request.body()).decode("utf-8", errors="replace")
    else:
        raise HTTPException(415, "send application/json, or multipart/form-data with spec and inputs")
    try:
        submitted = InferenceRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None
    if (upload is None) == (submitted.dataset_id is None):
        raise HTTPException(422, "give exactly one of dataset_id and an uploaded `inputs` batch")
    dataset_id = submitted.dataset_id
    if upload is not None:
        data = await run_in_threadpool(read_bounded, upload, INLINE_INPUTS_MAX_BYTES, "inputs batch")
        name = PurePath(upload.filename or "inputs").stem or "inputs"
        dataset_id, _ = await run_in_threadpool(ingest, writes, settings, data, name)
    return InferenceSpec.model_validate({**submitted.model_dump(), "dataset_id": dataset_id})


@router.post(
    "/experiments/{experiment_id}/inferences", status_code=202, response_model=InferenceAccepted,
    dependencies=[WriteAccess], responses=problem_responses(401, 403, 404, 409, 413, 415, 422),
    openapi_extra=_SUBMIT_BODY,
)  # fmt: skip
async def submit_inference(
    experiment_id: PathId, request: Request, writes: WritesDep, settings: SettingsDep, engine: EngineDep,
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(max_length=100, description="resubmitting with it returns the same inference")
    ] = None,
) -> InferenceAccepted:
    """Queue an inference: `at` a stored readout of this experiment (compute lane), or `"now"`
    (a fresh read of the chip, chip lane, behind any due readback). 202 with the job."""
    spec = await _request_spec(request, writes, settings)
    try:
        inference_id, job = await run_in_threadpool(_submit, writes, experiment_id, spec, idempotency_key)
    except IntegrityError:  # a racing submission with the same key won
        key = f"inference:{experiment_id}:{idempotency_key}"
        found = None if idempotency_key is None else queue.job_id_for_key(engine, key)
        if found is None:
            raise
        with engine.connect() as db:
            inference_id, job = int(store.inference_for_job(db, found) or 0), store.job_row(db, found)
    response.headers["Location"] = f"/inferences/{inference_id}"
    with engine.connect() as db:
        record = store.get_inference(db, inference_id)
        return InferenceAccepted(inference=inference_out(db, record),
                                 job=Job.model_validate(job, from_attributes=True))  # fmt: skip


@router.get(
    "/experiments/{experiment_id}/inferences", response_model=Page[Inference], dependencies=[ReadAccess],
    responses=problem_responses(404),
)
def list_inferences(experiment_id: PathId, db: Db, page: Paging) -> Page[Inference]:
    store.experiment_target(db, experiment_id)  # 404 for an unknown experiment
    records, total = store.list_inferences(db, experiment_id, page.limit, page.offset)
    return Page(items=[inference_out(db, r) for r in records], total=total, limit=page.limit,
                offset=page.offset)  # fmt: skip


@router.get("/inferences/{inference_id}", response_model=Inference, dependencies=[ReadAccess],
            responses=problem_responses(404))  # fmt: skip
def get_inference(inference_id: PathId, db: Db) -> Inference:
    return inference_out(db, store.get_inference(db, inference_id))


@router.post("/inferences/{inference_id}/cancel", response_model=Inference, dependencies=[WriteAccess],
             responses=problem_responses(401, 403, 404, 409))  # fmt: skip
def cancel_inference(inference_id: PathId, engine: EngineDep) -> Inference:
    """A queued inference is cancelled at once; a running one stops at its next progress point."""
    with engine.connect() as db:
        record = store.get_inference(db, inference_id)
    if record.job_id is None:
        raise HTTPException(409, f"inference {inference_id} has no job left to cancel")
    queue.cancel(engine, record.job_id)
    with engine.connect() as db:
        return inference_out(db, store.get_inference(db, inference_id))


def _logits(db: Connection, inference_id: int) -> np.ndarray:
    logits = store.load_logits(db, inference_id)
    if logits is None:
        status = store.job_status(db, store.get_inference(db, inference_id).job_id)
        raise HTTPException(409, f"inference {inference_id} has no results yet (its job is {status})")
    return logits


def _npy(array: np.ndarray, name: str) -> Response:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return Response(buffer.getvalue(), media_type=NPY,
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})  # fmt: skip


@router.get(
    "/inferences/{inference_id}/logits.npy", response_class=Response, dependencies=[ReadAccess],
    responses={200: {"description": "float32 (methods, repeats, images, classes), methods in the "
                                    "order of summary.methods", "content": {NPY: {}}},
               **problem_responses(404, 409)},
)  # fmt: skip
def download_logits(inference_id: PathId, db: Db) -> Response:
    return _npy(_logits(db, inference_id), f"inference-{inference_id}-logits.npy")


@router.get(
    "/inferences/{inference_id}/predictions.npy", response_class=Response, dependencies=[ReadAccess],
    responses={200: {"description": "int64 (methods, repeats, images, top_k), most likely first",
                     "content": {NPY: {}}}, **problem_responses(404, 409)},
)  # fmt: skip
def download_predictions(inference_id: PathId, db: Db) -> Response:
    logits = _logits(db, inference_id)
    k = InferenceSpec.model_validate(store.get_inference(db, inference_id).settings).top_k
    top = top_k(logits, k)
    return _npy(top, f"inference-{inference_id}-predictions.npy")


@router.get("/inferences/{inference_id}/predictions", response_model=Predictions, dependencies=[ReadAccess],
            responses=problem_responses(404, 409, 422))  # fmt: skip
def get_predictions(
    inference_id: PathId, db: Db, settings: SettingsDep,
    method: Annotated[str | None, Query(description="default: the first method run")] = None,
    repeat: Annotated[int, Query(ge=0, le=1000)] = 0,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Predictions:
    """Top-k classes of a page of images (with their labels when the data set has them)."""
    record = store.get_inference(db, inference_id)
    logits = _logits(db, inference_id)
    summary = record.summary or {}
    methods: list[str] = summary.get("methods", [])
    chosen = method or methods[0]
    if chosen not in methods or repeat >= logits.shape[1]:
        raise HTTPException(422, f"inference {inference_id} ran methods {methods} × "
                                 f"{logits.shape[1]} repeat(s); no {chosen!r} repeat {repeat}")  # fmt: skip
    k = InferenceSpec.model_validate(record.settings).top_k
    rows = logits[methods.index(chosen), repeat, offset : offset + limit]
    top = top_k(rows, k)
    labels = None
    if summary.get("labelled"):
        inputs = store_datasets.load_inputs(db, record.dataset_id, settings.max_upload_expanded_bytes)
        labels = None if inputs.y is None else inputs.y[offset : offset + limit].tolist()
    return Predictions(inference_id=inference_id, method=chosen, repeat=repeat, offset=offset,
                       top_k=top.tolist(), labels=labels, total=int(logits.shape[2]))  # fmt: skip


@router.post(
    "/experiments/{experiment_id}/evaluations", status_code=202, response_model=ReevaluationAccepted,
    dependencies=[WriteAccess], responses=problem_responses(401, 403, 404, 409, 422),
)  # fmt: skip
def submit_reevaluation(
    experiment_id: PathId, spec: ReevaluationSpec, writes: WritesDep
) -> ReevaluationAccepted:
    """Evaluate a range of stored readouts again with other settings (data set, methods, analog
    periphery) as the series `spec.series` of the accuracy-vs-time table: one inference job
    per readout in the compute lane, all checked and queued in one transaction, or none."""
    with writes.transaction() as db:
        store.experiment_target(db, experiment_id)  # 404
        readout_ids = store.experiment_readouts_between(
            db, experiment_id, spec.first_readout_id, spec.last_readout_id
        )
        if not readout_ids:
            raise HTTPException(422, f"experiment {experiment_id} has no readout with an id in "
                                     f"{spec.first_readout_id}..{spec.last_readout_id}")  # fmt: skip
        if len(readout_ids) > MAX_REEVALUATED_READOUTS:
            raise HTTPException(422, f"{len(readout_ids)} readouts in the range; at most "
                                     f"{MAX_REEVALUATED_READOUTS} per re-evaluation")  # fmt: skip
        if spec.series == EVALUATION_SERIES or spec.series in store.series_names(db, experiment_id):
            raise HTTPException(409, f"experiment {experiment_id} already has a series {spec.series!r}")
        queued = [_queue_one(db, experiment_id, spec.at(readout_id), None) for readout_id in readout_ids]
    return ReevaluationAccepted(series=spec.series, readout_ids=readout_ids,
                                inference_ids=[i for i, _ in queued], job_ids=[int(j.id) for _, j in queued])


@router.get(
    "/experiments/{experiment_id}/accuracy-series", response_model=list[SeriesPointOut],
    dependencies=[ReadAccess], responses=problem_responses(404),
)  # fmt: skip
def accuracy_series(experiment_id: PathId, db: Db) -> list[SeriesPointOut]:
    """Accuracy vs time since programming, every series side by side: the experiment's own
    evaluations (series "evaluation") and each finished re-evaluation."""
    store.experiment_target(db, experiment_id)  # 404
    own = [SeriesPointOut(series=EVALUATION_SERIES, readout_id=r.readout_id, t_since_program_s=r.offset_s,
                          method=r.method, accuracy_pct=r.accuracy)
           for r in queries.experiment_evaluations(db, experiment_id)]  # fmt: skip
    again = [SeriesPointOut(series=p.series, readout_id=p.readout_id, t_since_program_s=p.t_since_program_s,
                            method=p.method, accuracy_pct=p.accuracy_pct, inference_id=p.inference_id)
             for p in store.series_points(db, experiment_id)]  # fmt: skip
    return sorted(own + again, key=lambda p: (p.series, p.method, p.t_since_program_s))


@router.get(
    "/experiments/{experiment_id}/accuracy", response_model=list[AccuracyPointOut],
    dependencies=[ReadAccess], responses=problem_responses(404),
)  # fmt: skip
def accuracy(experiment_id: PathId, db: Db) -> list[AccuracyPointOut]:
    """Accuracy vs time since programming per method: the mean over read draws
    (`schedule.reads_per_point`) and programmings (re-programmed runs), each spread with
    how many there were; a spread is null where there is only one."""
    store.experiment_target(db, experiment_id)  # 404
    return [
        AccuracyPointOut(
            offset_s=r.point, t_since_program_s=r.t_s, method=r.method, accuracy_pct=r.accuracy,
            ci_low_pct=r.ci_low, ci_high_pct=r.ci_high, n_images=r.n_images, n_draws=r.n_draws,
            draw_std_pct=r.draw_std,
            n_programmings=r.n_programmings, programming_std_pct=r.programming_std,
        )
        for r in measured_accuracy(db, experiment_id)
    ]  # fmt: skip
