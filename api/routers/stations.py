"""Stations: register a chip's resource string, geometry and limits; list them."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response
from sqlalchemy.exc import IntegrityError

from api.deps import Db, ReadAccess, WriteAccess, WritesDep
from api.pagination import Page, Paging
from api.problems import problem_responses
from api.schemas.stations import Station, StationCreate
from api.views import page_of, paging, station_out
from drivers.base import Geometry
from hwctl.store import queries, records

router = APIRouter(prefix="/stations", tags=["stations"])


@router.post(
    "", status_code=201, response_model=Station,
    dependencies=[WriteAccess], responses=problem_responses(401, 403, 409, 422),
)
def create_station(body: StationCreate, writes: WritesDep, response: Response) -> Station:
    conflict = HTTPException(409, f"a station named {body.name!r} already exists")
    try:
        with writes.transaction() as conn:
            if queries.station_by_name(conn, body.name) is not None:
                raise conflict
            records.add_station(
                conn, body.name, resource=body.resource, chip_serial=body.chip_serial,
                geometry=Geometry(**body.geometry.model_dump()), amplitude_limit_ua=body.amplitude_limit_ua,
                clock_kind=body.clock_kind,
            )
            created = queries.get_station(conn, body.name)
    except IntegrityError:  # another process registered the name between our check and insert
        raise conflict from None
    response.headers["Location"] = f"/stations/{body.name}"
    return station_out(created)


@router.get("", response_model=Page[Station], dependencies=[ReadAccess])
def list_stations(db: Db, page: Paging) -> Page[Station]:
    return page_of(queries.list_stations(db, paging(page)), page, station_out)


@router.get(
    "/{name}", response_model=Station, dependencies=[ReadAccess],
    responses=problem_responses(404),
)
def get_station(name: str, db: Db) -> Station:
    return station_out(queries.get_station(db, name))
