"""What a health probe asks the store: does the database answer, and how is each station —
is its worker alive, is its board's link up (as the worker last recorded on the station row,
`hwctl.store.station_link`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import DBAPIError

from hwctl.store.engine import unavailable_reason
from hwctl.store.schema import stations, utc_now
from hwctl.store.station_link import LINK_DOWN, LINK_PAUSED, LINK_UP


def database_problem(engine: Engine) -> str | None:
    """None when the database answers a trivial query; else why it does not."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        return f"the database does not answer: {unavailable_reason(exc)}"
    return None


@dataclass(frozen=True)
class StationHealth:
    name: str
    worker_heartbeat_at: datetime | None
    link_state: str | None  # up | down | paused; None until a worker first opened the board
    link_down_since: datetime | None
    link_attempts: int
    problems: tuple[str, ...]  # empty when the station is healthy


def station_health(
    conn: Connection, worker_stale_after_s: float, name: str | None = None
) -> list[StationHealth]:
    """Each station (or the one named) with what is wrong with it. A worker that has not
    recorded itself alive for `worker_stale_after_s` is wrong, and so is a link that is down;
    a station no worker has opened yet is only unknown."""
    query = select(
        stations.c.name, stations.c.worker_heartbeat_at, stations.c.link_state, stations.c.link_down_since,
        stations.c.link_attempts,
    ).order_by(stations.c.name)  # fmt: skip
    if name is not None:
        query = query.where(stations.c.name == name)
    now = utc_now()
    return [_judged(row, now, timedelta(seconds=worker_stale_after_s)) for row in conn.execute(query)]


def _judged(row: Any, now: datetime, stale_after: timedelta) -> StationHealth:
    heartbeat, down_since = _utc(row.worker_heartbeat_at), _utc(row.link_down_since)
    problems = []
    if heartbeat is not None and now - heartbeat > stale_after:
        problems.append(
            f"station {row.name!r}: its worker was last alive {(now - heartbeat).total_seconds():.0f} s ago"
        )
    if row.link_state in (LINK_DOWN, LINK_PAUSED):
        since = "" if down_since is None else f" since {down_since.isoformat(timespec='seconds')}"
        paused = "; its queue is paused" if row.link_state == LINK_PAUSED else ""
        problems.append(
            f"station {row.name!r}: the board's link is down{since} "
            f"({row.link_attempts} attempts to re-open it){paused}"
        )
    elif row.link_state not in (None, LINK_UP):
        problems.append(f"station {row.name!r}: unknown link state {row.link_state!r}")
    return StationHealth(
        row.name, heartbeat, row.link_state, down_since, int(row.link_attempts or 0), tuple(problems)
    )


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back stored UTC times without their offset."""
    return value if value is None or value.tzinfo is not None else value.replace(tzinfo=utc_now().tzinfo)
