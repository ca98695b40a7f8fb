"""Stations: register a chip's resource string, geometry and limits; list them."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response
from sqlalchemy import Connection, Row, select
from sqlalchemy.exc import IntegrityError

from api.deps import Db, ReadAccess, WriteAccess, WritesDep
from api.lookup import count
from api.pagination import Page, Paging
from api.problems import problem_responses
from api.schemas.stations import GeometryModel, Station, StationCreate
from drivers.base import Geometry
from hwctl.store import records
from hwctl.store.schema import stations

router = APIRouter(prefix="/stations", tags=["stations"])


def station_out(row: Row) -> Station:
    return Station(
        id=row.id, name=row.name, resource=row.resource, chip_serial=row.chip_serial,
        geometry=GeometryModel(tiles=row.tiles, rows=row.rows, cols=row.cols),
        amplitude_limit_ua=row.amplitude_limit_ua, clock_kind=row.clock_kind, created_at=row.created_at,
    )


def station_by_name(db: Connection, name: str) -> Row | None:
    return db.execute(select(stations).where(stations.c.name == name)).first()


@router.post(
    "", status_code=201, response_model=Station,
    dependencies=[WriteAccess], responses=problem_responses(401, 403, 409, 422),
)
def create_station(body: StationCreate, db: Db, writes: WritesDep, response: Response) -> Station:
    conflict = HTTPException(409, f"a station named {body.name!r} already exists")
    try:
        with writes.transaction() as conn:
            if station_by_name(conn, body.name) is not None:
                raise conflict
            new_id = records.add_station(
                conn, body.name, resource=body.resource, chip_serial=body.chip_serial,
                geometry=Geometry(**body.geometry.model_dump()), amplitude_limit_ua=body.amplitude_limit_ua,
                clock_kind=body.clock_kind,
            )
    except IntegrityError:  # another process registered the name between our check and insert
        raise conflict from None
    response.headers["Location"] = f"/stations/{body.name}"
    return station_out(db.execute(select(stations).where(stations.c.id == new_id)).one())


@router.get("", response_model=Page[Station], dependencies=[ReadAccess])
def list_stations(db: Db, page: Paging) -> Page[Station]:
    query = select(stations).order_by(stations.c.id)
    rows = db.execute(query.limit(page.limit).offset(page.offset)).all()
    return Page(items=[station_out(r) for r in rows], total=count(db, query), limit=page.limit,
                offset=page.offset)


@router.get(
    "/{name}", response_model=Station, dependencies=[ReadAccess],
    responses=problem_responses(404),
)
def get_station(name: str, db: Db) -> Station:
    row = station_by_name(db, name)
    if row is None:
        raise HTTPException(404, f"station {name!r} does not exist")
    return station_out(row)
