"""The application factory: settings in, a FastAPI app over a migrated database out.

`create_app` refuses to build an app on a database that is not at the head migration,
so a service never writes rows a newer or older schema would misread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, PendingRollbackError
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

import hwctl
from api import dashboard, dashboard_inference
from api.body_limit import MAX_JSON_BODY_BYTES, MULTIPART_FRAMING_BYTES, BodyLimit
from api.deps import Writes
from api.problems import install_problem_handlers
from api.routers import (
    aihwkit,
    datasets,
    evaluations,
    experiments,
    fits,
    health,
    inferences,
    jobs,
    networks,
    plots,
    readouts,
    stations,
)
from hwctl.mapping import MappingError
from hwctl.nn.models import UnknownModelError
from hwctl.queue import JobStateError
from hwctl.settings import Settings
from hwctl.station import StationError
from hwctl.store import experiments as store_experiments
from hwctl.store.engine import make_engine, unavailable_reason
from hwctl.store.errors import CorruptVectorError, DatabaseUnavailableError, NotFoundError, StoreError
from hwctl.store.experiments import ExperimentStateError
from hwctl.store.migrate import ensure_migrated

# Domain exceptions and the status each maps to, in one place.
DOMAIN_STATUSES: dict[type[Exception], int] = {
    NotFoundError: 404,
    JobStateError: 409,
    ExperimentStateError: 409,
    StationError: 422,
    MappingError: 422,
    UnknownModelError: 422,
    CorruptVectorError: 500,  # stored data failed its checksum: the server's problem, not the request's
    StoreError: 422,  # e.g. a device index outside the run, a run that has not finished
}


def _database_down(exc: Exception) -> str:
    reason = unavailable_reason(exc) if isinstance(exc, DBAPIError) else str(exc)
    return f"the database is unavailable ({reason}); retry shortly"


# The database is down or restarting: the same request may succeed in a moment.
UNAVAILABLE: dict[type[Exception], Callable[[Exception], str]] = {
    DatabaseUnavailableError: _database_down,
    OperationalError: _database_down,  # includes SQLite's "database is locked" past the busy timeout
    InterfaceError: _database_down,
    PendingRollbackError: _database_down,  # a statement on a connection an outage invalidated
}

TAGS = [
    {"name": "stations", "description": "Chips and how to reach them."},
    {"name": "networks", "description": "Uploaded network checkpoints."},
    {"name": "experiments", "description": "Program a network on a station and read it back over time."},
    {"name": "jobs", "description": "The durable work queue the station workers run."},
    {"name": "readouts", "description": "Per-device conductance vectors, as downloads."},
    {"name": "evaluations", "description": "Accuracy of each readout, per drift-compensation method."},
    {"name": "fits", "description": "Per-device drift fits and their per-bin statistics."},
    {"name": "health", "description": "The database, each station's worker and board link, for probes."},
]


def _operation_id(route: APIRoute) -> str:
    return route.name  # handler names are the operation ids a generated client exposes


def _warm_up(engine: Engine, writes: Writes) -> None:
    """What the first requests would otherwise pay: the writer thread, a pooled connection,
    the submission's compiled statements (and, run in it, the threadpool's first thread)."""
    writes.group.start()
    with engine.connect() as db:
        store_experiments.warm_up(db)


def _body_limit(scope: Scope, settings: Settings) -> int:
    """Uploads (a checkpoint, a data set, an aihwkit CSV) take a file; an inference may carry a
    batch of at most a JSON body's size beside its spec; every other body is JSON."""
    path = scope["path"].removeprefix(scope.get("root_path", ""))
    uploads = path in ("/networks", "/datasets") or path.endswith("/import/aihwkit-fusion.csv")
    if scope["method"] == "POST" and uploads:
        return settings.max_upload_bytes + MULTIPART_FRAMING_BYTES
    if scope["method"] == "POST" and path.endswith("/inferences"):
        return MAX_JSON_BODY_BYTES + MULTIPART_FRAMING_BYTES
    return MAX_JSON_BODY_BYTES


def create_app(settings: Settings) -> FastAPI:
    """An app bound to `settings.database_url`; raises NotMigratedError if the schema is behind."""
    engine = make_engine(settings.database_url, sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    try:
        ensure_migrated(engine)
    except BaseException:
        engine.dispose()
        raise

    writes = Writes(engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(_warm_up, engine, writes)
        yield
        writes.group.stop()
        engine.dispose()

    app = FastAPI(
        title="hwctl", version=hwctl.__version__, lifespan=lifespan, openapi_tags=TAGS,
        description="Program neural networks onto PCM test chips, read them back over 24 h, "
        "and measure inference accuracy from the read-back conductances.",
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.writes = writes
    install_problem_handlers(app, DOMAIN_STATUSES, UNAVAILABLE)
    app.add_middleware(BodyLimit, limit_for=lambda scope: _body_limit(scope, settings))
    for module in (stations, networks, experiments, plots, jobs, readouts, evaluations, fits,
                   datasets, inferences, health, aihwkit):  # fmt: skip
        app.include_router(module.router)
    app.include_router(dashboard.router)
    app.include_router(dashboard_inference.router)
    return app
