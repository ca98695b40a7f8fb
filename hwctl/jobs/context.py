"""What every job handler gets: its context (database, station, bookkeeping), the typed
description of a job kind, and the exceptions a handler uses to hand control back.

A handler is `handle(ctx, payload)` with `payload` the job's stored JSON validated into
its kind's pydantic model (the worker does it, so a malformed payload fails the job
with the validation error before any instrument work).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, Engine

from drivers.errors import LinkError, ProtocolError
from hwctl import queue
from hwctl.queue import NewJob
from hwctl.station import Station
from hwctl.vocabulary import JobKind, JobLane

# Devices per readback block: 4 MiB of float32 per round trip and per checkpoint (and per
# stored block). A 43.6 M-device readout is 42 heartbeat commits of ~27 ms on SQLite
# instead of 167 of ~16 ms with 1 MiB blocks: over TCP 4.1 s instead of 6.3–8 s
# (benchmarks/RESULTS.md, scale). The worker holds a block and its addresses (8 MiB); a
# restarted readback redoes at most one block.
READ_BLOCK_DEVICES = 1_048_576
# Values a worker lane keeps between jobs (`JobContext.cached`): an evaluation takes 2–3 (its
# run's evaluator, test and calibration images), an inference 3, so two runs' worth fit.
LANE_CACHE_ENTRIES = 8
# Readbacks outrank evaluation and analysis: a due read must never wait behind them.
PRIORITY_READBACK = 10
PRIORITY_FOLLOW_UP = 0
# A job interrupted by one of these goes back to its last checkpoint while the worker
# re-opens the board: a dead or garbled link says nothing about the job itself.
LINK_FAILURES: tuple[type[Exception], ...] = (LinkError, ProtocolError)


class JobCancelled(Exception):
    """The job's cancel flag was seen at a safe point; nothing after it was done."""


class JobPaused(Exception):
    """The worker is shutting down; the job's last checkpoint is committed, resume later."""


class JobOvertaken(Exception):
    """A later readback fell due while this one was between blocks: let it go first."""


class JobError(RuntimeError):
    """The stored campaign is inconsistent (missing mapping, run not finished...)."""


class JobPayload(BaseModel):
    """Every job belongs to an experiment; each kind adds what it needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    experiment_id: int


Payload = TypeVar("Payload", bound=JobPayload)
T = TypeVar("T")


class Retrying(Protocol):
    """Runs `attempt` until it gets through to the database (`what` names it in the log)."""

    def __call__(self, what: str, attempt: Callable[[], T]) -> T: ...


# heartbeat(progress, message, checkpoint, write): commits progress, the checkpoint and
# whatever `write` stores, in one transaction; False when the job's cancel flag is set.
Heartbeat = Callable[[float, str, dict[str, Any] | None, Callable[[Connection], None] | None], bool]
Complete = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class JobType(Generic[Payload]):
    """One job kind: its payload model, the lane it runs in and its handler."""

    kind: JobKind
    lane: JobLane
    payload: type[Payload]
    handle: Callable[[JobContext, Payload], None]
    fails_experiment: bool = False  # when it gives up, its experiment cannot go on either

    def new_job(
        self, station_id: int, payload: Payload, *, run_at_s: float, key: str, window_s: float | None = None,
        priority: int = PRIORITY_FOLLOW_UP, run_id: int | None = None, scheduled_s: float | None = None,
    ) -> NewJob:  # fmt: skip
        """The queue row of a job of this kind (see `hwctl.queue.enqueue_in`)."""
        return NewJob(
            kind=self.kind, lane=self.lane, station_id=station_id, experiment_id=payload.experiment_id,
            payload=payload.model_dump(), run_at_s=run_at_s, window_s=window_s, priority=priority,
            idempotency_key=key, run_id=run_id, scheduled_s=scheduled_s,
        )  # fmt: skip


class LaneCache:
    """Values a worker lane builds once and reuses across jobs, kept while they are among the
    `entries` used last: a worker serving experiment after experiment for months holds the
    few it is working on, not every run and data set it has seen."""

    def __init__(self, entries: int = LANE_CACHE_ENTRIES) -> None:
        self.entries = entries
        self._values: dict[tuple[Any, ...], Any] = {}  # in order of use, the last used at the end

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: tuple[Any, ...]) -> bool:
        return key in self._values

    def get(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        """The value under `key`, built by `build` when absent; the least recently used go."""
        value = self._values.pop(key) if key in self._values else build()
        self._values[key] = value
        while len(self._values) > self.entries:
            del self._values[next(iter(self._values))]
        return value


@dataclass
class JobContext:
    """What a handler may use: the database, the station and its own job's bookkeeping.

    `heartbeat` commits progress (and a checkpoint with the rows it points at) and says
    whether the job may go on; `complete(result)` marks the job succeeded once the
    handler's final transaction has committed (handlers check what is already stored, so
    a crash between the two never stores anything twice); `stopping()` is the worker's
    shutdown request; `overtaken()` says a later readback of the station is due now.
    `station` is None in the compute lane.
    """

    engine: Engine
    station: Station | None
    station_id: int
    job_id: int
    kind: str
    checkpoint: dict[str, Any] | None
    heartbeat: Heartbeat
    complete: Complete
    stopping: Callable[[], bool]
    overtaken: Callable[[], bool]
    retrying: Retrying
    cache: LaneCache = field(default_factory=LaneCache)
    read_block_devices: int = READ_BLOCK_DEVICES

    @property
    def chip_station(self) -> Station:
        """The station with its chip: only chip-lane jobs have it."""
        if self.station is None:
            raise JobError(f"{self.kind} job {self.job_id} needs the chip but runs in the compute lane")
        return self.station

    def write(self, what: str, body: Callable[[Connection], T]) -> T:
        """`body` in one write transaction (see `hwctl.queue.writing`), retried while the
        database is unreachable: bodies check what is already stored, so a retry after a
        commit whose answer was lost stores nothing twice."""

        def attempt() -> T:
            with queue.writing(self.engine) as conn:
                return body(conn)

        return self.retrying(what, attempt)

    def read(self, what: str, body: Callable[[Connection], T]) -> T:
        """`body` on a connection, retried while the database is unreachable."""

        def attempt() -> T:
            with self.engine.connect() as conn:
                return body(conn)

        return self.retrying(what, attempt)

    def safe_point(
        self,
        progress: float,
        message: str,
        checkpoint: dict[str, Any] | None = None,
        write: Callable[[Connection], None] | None = None,
    ) -> None:
        """Commit progress (with `checkpoint` and `write`); raise if the job was cancelled
        or the worker is stopping."""
        if not self.heartbeat(progress, message, checkpoint, write):
            raise JobCancelled(f"job {self.job_id} cancelled at {message}")
        if self.stopping():
            raise JobPaused(f"job {self.job_id} paused at {message}")

    def cached(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        """A value built once per worker lane (a run's evaluator, a data set): `LaneCache`."""
        return self.cache.get(key, build)
