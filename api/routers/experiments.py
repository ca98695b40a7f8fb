"""Experiments: submit a network for a station (202 + its program job), follow it to results."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Response
from sqlalchemy import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from api.deps import Db, EngineDep, ReadAccess, WriteAccess, WritesDep
from api.pagination import Page, Paging
from api.params import PathId
from api.problems import key_reused, problem_responses
from api.schemas.experiments import Experiment, ExperimentAccepted, ExperimentDetail
from api.views import experiment_detail, experiment_out, job_out, page_of, paging
from hwctl.analog_layers import AnalogLayers
from hwctl.experiment_spec import DATASET_IMAGE_SHAPES, DatasetName, ExperimentRequest, ExperimentSpec
from hwctl.mapping import MappingError
from hwctl.nn.calibration import needs_calibration
from hwctl.nn.models import UnknownModelError
from hwctl.nn.network_spec import NetworkSpec
from hwctl.schedule import duration_label
from hwctl.store import datasets as store_datasets
from hwctl.store import experiments as store_experiments
from hwctl.store import queries, records
from hwctl.store.datasets import DatasetInfo
from hwctl.store.engine import connect
from hwctl.store.errors import NotFoundError
from hwctl.store.networks import derive_network_facts, fit_on_station, stored_network_spec
from hwctl.vocabulary import CompensationMethod, ExperimentStatus

router = APIRouter(prefix="/experiments", tags=["experiments"])
KNOWN_STATIONS_LISTED = 20


def _targets(db: Connection, spec: ExperimentRequest) -> tuple[store_experiments.Station, str, NetworkSpec]:
    """The station, the network's name and spec; 422 if either is unknown."""
    found = store_experiments.targets(db, spec.station, spec.network_id)
    if found.station is None:
        known = queries.station_names(db, KNOWN_STATIONS_LISTED)
        raise HTTPException(
            422, f"unknown station {spec.station!r}; known stations: "
            f"{', '.join(known) or 'none (POST /stations)'}",
        )
    if found.network_name is None or found.architecture is None:
        raise HTTPException(422, f"network {spec.network_id} does not exist; upload it with POST /networks")
    try:
        network = stored_network_spec(db, spec.network_id)
    except UnknownModelError as exc:
        raise HTTPException(422, f"network {spec.network_id}: {exc}") from None
    return found.station, found.network_name, network


@dataclass(frozen=True)
class _EvaluationSets:
    """The test set as stored (its built-in name if it is one, its id) and the calibration
    set's id (None: the built-in's training split, or no calibration)."""

    dataset: DatasetName | None
    test_id: int | None
    calibration_id: int | None


def _evaluation_sets(db: Connection, spec: ExperimentRequest, network: NetworkSpec) -> _EvaluationSets:
    """The test set named by id or built-in name, else the network's own, and the calibration
    set; 422 naming what is unknown, unlabelled or does not fit the network (nothing queued)."""
    evaluation = spec.evaluation
    if evaluation.dataset is not None and evaluation.test_dataset_id is not None:
        raise HTTPException(422, "give the test set once: evaluation.dataset (a built-in's name) or "
                                 "evaluation.test_dataset_id")  # fmt: skip
    if evaluation.test_dataset_id is not None:
        test = _stored_set(db, evaluation.test_dataset_id, "evaluation.test_dataset_id")
    else:
        name = evaluation.dataset or network.dataset
        if name not in DATASET_IMAGE_SHAPES:
            if evaluation.enabled:
                builtins = ", ".join(f"{n}: {_shape(s)}" for n, s in DATASET_IMAGE_SHAPES.items())
                why = (f"whose data set {name!r} is not available here" if name is not None
                       else "an uploaded graph with no data set of its own")  # fmt: skip
                raise HTTPException(
                    422, f"network {spec.network_id} is {why}; give evaluation.dataset ({builtins}) or "
                    "evaluation.test_dataset_id (GET /datasets), or set evaluation.enabled false",
                )  # fmt: skip
            return _EvaluationSets("digits", None, None)  # not evaluated: nothing reads it
        test = store_datasets.get_dataset(db, store_datasets.builtin_dataset_id(db, name))
    field = "evaluation.test_dataset_id" if evaluation.test_dataset_id is not None else "evaluation.dataset"
    _check_fits(spec, network, test, field)
    if test.n_classes is None:
        raise HTTPException(422, f"{field}: data set {test.id} has no labels (y), so it cannot be a "
                                 "test set; upload it with y")  # fmt: skip
    if test.n_classes > network.n_classes:
        raise HTTPException(
            422, f"{field}: data set {test.id} has labels up to {test.n_classes - 1}, and network "
            f"{spec.network_id} gives {network.n_classes} outputs (classes 0–{network.n_classes - 1})",
        )
    builtin = test.builtin if test.builtin in DATASET_IMAGE_SHAPES and test.split == "test" else None
    calibration_id = evaluation.calibration_dataset_id
    if calibration_id is not None:
        calibration = _stored_set(db, calibration_id, "evaluation.calibration_dataset_id")
        _check_fits(spec, network, calibration, "evaluation.calibration_dataset_id")
    methods = [m for m in evaluation.methods if network.has_batchnorm or m != CompensationMethod.ADABS]
    calibrated = evaluation.enabled and needs_calibration(methods, evaluation.gdc_statistic)
    if calibrated and calibration_id is None and builtin is None:
        raise HTTPException(
            422, f"evaluation: AdaBS (and GDC's calibration-batch statistic) take calibration images, and "
            f"test set {test.id} is not a built-in with a training split; give "
            "evaluation.calibration_dataset_id or leave adabs out of evaluation.methods",
        )
    return _EvaluationSets(builtin, test.id, calibration_id)  # type: ignore[arg-type]


def _stored_set(db: Connection, dataset_id: int, field: str) -> DatasetInfo:
    try:
        return store_datasets.get_dataset(db, dataset_id)
    except NotFoundError as exc:
        raise HTTPException(422, f"{field}: {exc}") from None


def _check_fits(spec: ExperimentRequest, network: NetworkSpec, dataset: DatasetInfo, field: str) -> None:
    """422 with both shapes when the data set's images are not what the network takes."""
    if tuple(dataset.image_shape) == tuple(network.input_shape):
        return
    own = network.dataset
    what = (f"a {network.architecture} that takes {_shape(network.input_shape)} {own} images; "
            f"omit {field} to use {own!r}" if own is not None
            else f"an uploaded graph that takes {_shape(network.input_shape)} images")  # fmt: skip
    label = repr(dataset.builtin) if dataset.builtin is not None else f"data set {dataset.id}"
    raise HTTPException(
        422, f"{field} {label} ({_shape(dataset.image_shape)} images) does not fit network "
        f"{spec.network_id}, {what}",
    )


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(n) for n in shape)


def _check_methods(spec: ExperimentRequest, network: NetworkSpec) -> None:
    """422 for AdaBS asked for by name on a network without batch norm."""
    evaluation = spec.evaluation
    asked = "methods" in evaluation.model_fields_set and CompensationMethod.ADABS in evaluation.methods
    if spec.evaluation.enabled and asked and not network.has_batchnorm:
        raise HTTPException(
            422, f"evaluation.methods: AdaBS re-estimates batch-norm statistics and network "
            f"{spec.network_id} has no batch norm; choose none and/or gdc",
        )


def _check_digital_layers(spec: ExperimentSpec, network: NetworkSpec) -> tuple[str, ...]:
    """The layers kept digital; 422 if `mapping.digital_layers` names a layer the network
    does not have (the valid ones listed), or keeps every layer digital."""
    try:
        return AnalogLayers.of(network).kept_digital(spec.mapping)
    except MappingError as exc:
        raise HTTPException(422, f"mapping.digital_layers of network {spec.network_id}: {exc}") from None


def _check_fit(db: Connection, spec: ExperimentSpec, digital_layers: tuple[str, ...]) -> None:
    """422 with devices needed vs available when the network's analog layers (less those kept
    digital) do not fit the station's chip: the program job could not place them."""
    fit = fit_on_station(db, spec.network_id, spec.station, digital_layers)
    if fit.fits:
        return
    kept = (f"with {', '.join(digital_layers)} kept digital" if digital_layers
            else "with every layer analog")  # fmt: skip
    raise HTTPException(
        422, f"network {spec.network_id} does not fit station {spec.station!r} ({kept}): {fit.reason}; "
        "keep layers digital (mapping.digital_layers, e.g. \"first_and_last\") or choose a larger station",
    )


def _refuse_if_busy(db: Connection, station_id: int) -> None:
    """409 while another experiment holds the station's devices (see ACTIVE_EXPERIMENT_STATUSES)."""
    holder = store_experiments.station_holder(db, station_id)
    if holder.experiment_id is None:
        return
    detail = str(holder.status)
    if holder.next_readback_offset_s is not None:
        detail += f", next readback at {duration_label(holder.next_readback_offset_s)} after programming"
    raise HTTPException(
        409, f"station {holder.station!r} is busy with experiment {holder.experiment_id} ({detail}); wait "
        f"for it to finish or cancel it (POST /experiments/{holder.experiment_id}/cancel)",
    )


def _with_experiment(db: Connection, job: Row[Any]) -> tuple[Row[Any], Row[Any]]:
    """The job's experiment as stored (server defaults included), and the job."""
    return store_experiments.experiment(db, job.experiment_id), job


def _resolved(db: Connection, request: ExperimentRequest, network: NetworkSpec) -> ExperimentSpec:
    sets = _evaluation_sets(db, request, network)
    return request.resolved(sets.dataset, sets.test_id, batchnorm=network.has_batchnorm)


def _check_same_submission(db: Connection, request: ExperimentRequest, job: Row[Any], key: str) -> None:
    stored = store_experiments.experiment(db, job.experiment_id).settings
    if _resolved(db, request, _targets(db, request)[2]).model_dump(mode="json") != stored:
        raise key_reused(key, f"experiment {job.experiment_id}")


def _store_submission(db: Connection, request: ExperimentRequest, idempotency_key: str | None) -> Row[Any]:
    """The experiment row (its spec resolved) and its program job; returns the job as stored."""
    station, network_name, network = _targets(db, request)  # checked even when a name is given
    try:
        request.check_station(station.clock_kind, station.amplitude_limit_ua)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    _check_methods(request, network)
    spec = _resolved(db, request, network)
    _check_fit(db, spec, _check_digital_layers(spec, network))
    _refuse_if_busy(db, station.id)
    return store_experiments.add_with_program_job(
        db, spec.name or f"{network_name} on {spec.station}", network_id=spec.network_id,
        station_id=station.id, settings=spec.model_dump(mode="json"), idempotency_key=idempotency_key,
    )


@router.post(
    "", status_code=202, response_model=ExperimentAccepted, dependencies=[WriteAccess],
    responses=problem_responses(401, 403, 409, 422),
)
async def submit_experiment(
    spec: ExperimentRequest,
    engine: EngineDep,
    writes: WritesDep,
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(max_length=128, description="resubmitting with it returns the same experiment")
    ] = None,
) -> ExperimentAccepted:
    """Store the experiment and enqueue its program job in one transaction, which
    concurrent submissions share (api.group_commit); answered once it is committed.

    A station runs one experiment at a time: 409 while another on it is not finished or
    cancelled (checked in the same transaction, so two racing submissions cannot both pass).
    The test set is named by id (`evaluation.test_dataset_id`) or built-in name
    (`evaluation.dataset`); neither is the network architecture's own, stored resolved.

    A resubmitted `Idempotency-Key` finds its job. Two racing from two API processes collide
    on a unique index (the key's, or one active experiment per station); the loser's savepoint
    leaves nothing behind and it answers with the winner's job (422 if its body is another),
    or the station's 409.
    """

    def store(db: Connection) -> tuple[Row[Any], Row[Any]]:
        job = None if idempotency_key is None else store_experiments.job_by_key(db, idempotency_key)
        if job is None:
            job = _store_submission(db, spec, idempotency_key)
        else:
            _check_same_submission(db, spec, job, str(idempotency_key))
        return _with_experiment(db, job)

    await run_in_threadpool(_derive_network_facts, engine, spec.network_id)
    try:
        experiment, job = await asyncio.wrap_future(writes.group.submit(store))
    except IntegrityError as exc:
        experiment, job = await run_in_threadpool(
            _after_collision, engine, exc, spec, idempotency_key
        )
    response.headers["Location"] = f"/experiments/{experiment.id}"
    return ExperimentAccepted(experiment=experiment_out(experiment), program_job=job_out(job))


def _derive_network_facts(engine: Engine, network_id: int) -> None:
    """The network's checks derived outside the group's write transaction (`derive_network_facts`)."""
    # An unknown network is left to the submission's own checks, in the transaction.
    with connect(engine) as db, contextlib.suppress(NotFoundError):
        derive_network_facts(db, network_id)


def _after_collision(
    engine: Engine, exc: IntegrityError, request: ExperimentRequest, idempotency_key: str | None
) -> tuple[Row[Any], Row[Any]]:
    """A unique index caught a submission the checks passed (a racing API process):
    the key's winner if there is one (and the same body), else the busy station's 409."""
    station = request.station
    with connect(engine) as db:
        job = None if idempotency_key is None else store_experiments.job_by_key(db, idempotency_key)
        if job is not None:
            _check_same_submission(db, request, job, str(idempotency_key))
            return _with_experiment(db, job)
        if store_experiments.holds_busy_station(exc):
            _refuse_if_busy(db, records.station_id(db, station))  # the 409 naming the holder
            raise HTTPException(409, f"station {station!r} was busy with another submission; retry")
        if idempotency_key is not None:
            raise HTTPException(409, "a concurrent submission with this Idempotency-Key failed; retry")
    raise exc


@router.get("", response_model=Page[Experiment], dependencies=[ReadAccess])
def list_experiments(
    db: Db, page: Paging, station: str | None = None, status: ExperimentStatus | None = None
) -> Page[Experiment]:
    listing = queries.list_experiments(db, paging(page), station=station, status=status)
    return page_of(listing, page, experiment_out)


@router.get(
    "/{experiment_id}", response_model=ExperimentDetail, dependencies=[ReadAccess],
    responses=problem_responses(404),
)
def get_experiment(experiment_id: PathId, db: Db) -> ExperimentDetail:
    """The experiment with its progress and every result so far (readouts, accuracies per method)."""
    return experiment_detail(db, experiment_id)


@router.post(
    "/{experiment_id}/cancel", response_model=Experiment, dependencies=[WriteAccess],
    responses=problem_responses(401, 403, 404, 409),
)
async def cancel_experiment(experiment_id: PathId, writes: WritesDep) -> Experiment:
    """Free the station: the experiment's waiting jobs are cancelled, a running one is asked to
    stop at its next block, and the experiment is `cancelled` at once."""
    cancel = writes.group.submit(lambda db: store_experiments.cancel(db, experiment_id))
    return experiment_out(await asyncio.wrap_future(cancel))


@router.post(
    "/{experiment_id}/resume", response_model=Experiment, dependencies=[WriteAccess],
    responses=problem_responses(401, 403, 404, 409),
)  # fmt: skip
async def resume_experiment(experiment_id: PathId, writes: WritesDep) -> Experiment:
    """An experiment whose board lost its state (`board_state_lost`, the evidence in
    `status_reason`) reads on, as the operator judged the board fit: readbacks from now are
    not flagged; those taken while it waited stay flagged."""
    resume = writes.group.submit(lambda db: store_experiments.resume(db, experiment_id))
    return experiment_out(await asyncio.wrap_future(resume))


@router.post(
    "/{experiment_id}/reprogram", status_code=202, response_model=ExperimentAccepted,
    dependencies=[WriteAccess], responses=problem_responses(401, 403, 404, 409),
)  # fmt: skip
async def reprogram_experiment(experiment_id: PathId, writes: WritesDep) -> ExperimentAccepted:
    """An experiment whose board lost its state is programmed again from scratch: its
    pending readbacks stop, a new program job is queued, and a new programming run with its
    own readback schedule follows. The old run's readouts stay, flagged."""

    def reprogram(db: Connection) -> tuple[Row[Any], Row[Any]]:
        job = store_experiments.reprogram(db, experiment_id)
        return store_experiments.experiment(db, experiment_id), job

    experiment, job = await asyncio.wrap_future(writes.group.submit(reprogram))
    return ExperimentAccepted(experiment=experiment_out(experiment), program_job=job_out(job))
