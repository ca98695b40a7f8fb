"""Health for probes: the database answers, each station's worker is alive and its board's
link is up. 200 when all is well, 503 with the reasons otherwise.

Probes send no API key: the answer names stations and states, nothing else. The API's
container is judged by `/health/database` (its own dependency), a worker's by
`/health/stations/{name}` (its own station), a lab's monitoring by `/health` (everything).
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from api.deps import EngineDep, SettingsDep
from api.problems import problem_responses
from api.schemas.health import Health, StationHealth
from hwctl.store import health as store_health
from hwctl.store import queries
from hwctl.store.engine import unavailable_reason

router = APIRouter(prefix="/health", tags=["health"])
_RESPONSES: dict[int | str, dict[str, object]] = {
    503: {"model": Health, "description": "unhealthy, with reasons"}
}


def _station_out(station: store_health.StationHealth) -> StationHealth:
    return StationHealth(
        name=station.name, healthy=not station.problems, worker_heartbeat_at=station.worker_heartbeat_at,
        link=station.link_state, link_down_since=station.link_down_since,
        link_attempts=station.link_attempts,
    )  # fmt: skip


def _health(
    engine: Engine, worker_stale_after_s: float, station: str | None, stations: bool = True
) -> Health:
    problem = store_health.database_problem(engine)
    if problem is not None:
        return Health(status="unhealthy", database="unavailable", stations=[], reasons=[problem])
    if not stations:
        return Health(status="ok", database="ok", stations=[], reasons=[])
    try:
        with engine.connect() as conn:
            if station is not None:
                queries.get_station(conn, station)  # 404 for a station that does not exist
            judged = store_health.station_health(conn, worker_stale_after_s, station)
    except DBAPIError as exc:  # went away between the two
        reason = f"the database does not answer: {unavailable_reason(exc)}"
        return Health(status="unhealthy", database="unavailable", stations=[], reasons=[reason])
    reasons = [p for s in judged for p in s.problems]
    return Health(
        status="unhealthy" if reasons else "ok", database="ok", stations=[_station_out(s) for s in judged],
        reasons=reasons,
    )  # fmt: skip


def _answer(health: Health, response: Response) -> Health:
    response.status_code = 200 if health.status == "ok" else 503
    response.headers["Cache-Control"] = "no-store"
    return health


@router.get("", response_model=Health, responses=_RESPONSES)
async def get_health(engine: EngineDep, settings: SettingsDep, response: Response) -> Health:
    """The database, and each station's worker heartbeat and board link."""
    health = await run_in_threadpool(_health, engine, settings.job_stale_after_s, None)
    return _answer(health, response)


@router.get("/database", response_model=Health, responses=_RESPONSES)
async def get_database_health(engine: EngineDep, settings: SettingsDep, response: Response) -> Health:
    """The database alone: the API's own probe (a station's trouble is not the API's)."""
    health = await run_in_threadpool(_health, engine, settings.job_stale_after_s, None, False)
    return _answer(health, response)


@router.get("/stations/{name}", response_model=Health, responses={**_RESPONSES, **problem_responses(404)})
async def get_station_health(
    name: str, engine: EngineDep, settings: SettingsDep, response: Response
) -> Health:
    """The database, and this one station's worker and link (a worker container's probe)."""
    health = await run_in_threadpool(_health, engine, settings.job_stale_after_s, name)
    return _answer(health, response)

