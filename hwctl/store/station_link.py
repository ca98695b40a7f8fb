"""What a station's worker knows of its board, kept on the station row for the API and
health probes: the link ("up"; "down" since when and after how many attempts to re-open
it; "paused" once it has been down longer than the worker's `link_pause_after_s`, its
chip queue held until the board answers again) and when the worker last said it was
alive."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, update

from hwctl.store.schema import stations, utc_now

LINK_UP = "up"
LINK_DOWN = "down"
LINK_PAUSED = "paused"  # down for long: the station's chip queue waits for the board


def link_up(conn: Connection, station_id: int) -> None:
    conn.execute(
        update(stations)
        .where(stations.c.id == station_id)
        .values(link_state=LINK_UP, link_down_since=None, link_attempts=0, worker_heartbeat_at=utc_now())
    )


def link_down(
    conn: Connection, station_id: int, since: datetime, attempts: int, paused: bool = False
) -> None:
    """The link failed at `since`; `attempts` re-opens have failed since (`paused`: for so
    long that the station's queue is paused)."""
    conn.execute(
        update(stations)
        .where(stations.c.id == station_id)
        .values(
            link_state=LINK_PAUSED if paused else LINK_DOWN,
            link_down_since=since,
            link_attempts=attempts,
            worker_heartbeat_at=utc_now(),
        )
    )


def worker_alive(conn: Connection, station_id: int) -> None:
    conn.execute(update(stations).where(stations.c.id == station_id).values(worker_heartbeat_at=utc_now()))
