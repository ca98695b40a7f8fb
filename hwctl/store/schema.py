"""The database schema (SQLAlchemy Core), identical on SQLite and PostgreSQL.

Per-device data never gets a row per device: a programming run, a readout and a drift
fit each hold their vectors as blobs (see `hwctl.store.vectors`). Times that drift is
measured against are *board* seconds (`*_s`, the station clock, possibly virtual or
accelerated); wall-clock timestamps (`*_at`) are for people.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from hwctl.store.vectors import vector_columns
from hwctl.vocabulary import ACTIVE_EXPERIMENT_STATUSES, CompensationMethod, JobLane, JobStatus

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

Json = JSON().with_variant(JSONB(), "postgresql")


def utc_now() -> datetime:
    return datetime.now(UTC)


def _created() -> Column:
    return Column("created_at", DateTime(timezone=True), nullable=False, default=utc_now)


def _one_of(column: str, values: Iterable[str]) -> CheckConstraint:
    """`column IN (...)` over a vocabulary enum's values, so the table never lists them twice."""
    listed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({listed})", name=f"{column}_known")


def _id() -> Column:
    return Column("id", Integer, primary_key=True)


def _fk(name: str, target: str, *, nullable: bool = False) -> Column:
    return Column(name, ForeignKey(f"{target}.id", ondelete="CASCADE"), nullable=nullable, index=True)


stations = Table(
    "stations",
    metadata,
    _id(),
    Column("name", String(64), nullable=False, unique=True),
    Column("resource", String(256), nullable=False, doc="e.g. TCPIP::host::5025::SOCKET"),
    Column("chip_serial", String(64), nullable=False),
    Column("tiles", Integer, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("cols", Integer, nullable=False),
    Column("amplitude_limit_ua", Float, nullable=False),
    Column("clock_kind", String(16), nullable=False, doc="real | accelerated | virtual"),
    _created(),
    # The worker's view of its board (hwctl.station.LinkState), for the API and health probes.
    Column("link_state", String(16), nullable=True, doc="up | down; NULL: no worker has opened it yet"),
    Column("link_down_since", DateTime(timezone=True), nullable=True),
    Column("link_attempts", Integer, nullable=False, server_default="0"),
    Column("worker_heartbeat_at", DateTime(timezone=True), nullable=True),
)

networks = Table(
    "networks",
    metadata,
    _id(),
    Column("name", String(128), nullable=False),
    Column("architecture", String(64), nullable=False),
    Column("checkpoint", LargeBinary, nullable=True),
    Column("checkpoint_path", String(1024), nullable=True),
    Column("sha256", String(64), nullable=False),
    Column("meta", Json, nullable=False, default=dict),
    _created(),
    CheckConstraint("checkpoint IS NOT NULL OR checkpoint_path IS NOT NULL", name="has_checkpoint"),
)

# An experiment in one of these holds its station's devices (every mapping starts at tile 0),
# so a station has at most one: the API checks first, the unique index below makes it certain.
_ACTIVE_EXPERIMENT = text(f"status IN ({', '.join(repr(str(s)) for s in ACTIVE_EXPERIMENT_STATUSES)})")

experiments = Table(
    "experiments",
    metadata,
    _id(),
    Column("name", String(128), nullable=False),
    _fk("network_id", "networks"),
    _fk("station_id", "stations"),
    Column("settings", Json, nullable=False, default=dict),
    Column("status", String(16), nullable=False, default="created"),
    Column("status_reason", Text, nullable=True, doc="why the status is what it is, with the evidence"),
    _created(),
    Index(
        "uq_experiments_one_active_per_station",
        "station_id",
        unique=True,
        sqlite_where=_ACTIVE_EXPERIMENT,
        postgresql_where=_ACTIVE_EXPERIMENT,
    ),
)

mappings = Table(
    "mappings",
    metadata,
    _id(),
    _fk("network_id", "networks"),
    _fk("station_id", "stations"),
    _fk("experiment_id", "experiments", nullable=True),
    Column("device_map", LargeBinary, nullable=False, doc="hwctl.mapping.DeviceMap.to_bytes()"),
    Column("n_devices", Integer, nullable=False),
    Column("utilisation", Float, nullable=False),
    _created(),
)

programming_runs = Table(
    "programming_runs",
    metadata,
    _id(),
    _fk("mapping_id", "mappings"),
    _fk("experiment_id", "experiments", nullable=True),
    Column("settings", Json, nullable=False, default=dict),
    Column("started_at", DateTime(timezone=True), nullable=False, default=utc_now),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    # Per-device results, filled when programming ends (float32 µS, int32, uint8, float64 board s).
    *vector_columns("g_final", nullable=True),
    *vector_columns("iterations", nullable=True),
    *vector_columns("status", nullable=True),
    *vector_columns("programmed_s", nullable=True),
)

readouts = Table(
    "readouts",
    metadata,
    _id(),
    _fk("run_id", "programming_runs"),
    Column("offset_s", Float, nullable=False, doc="scheduled offset after programming"),
    Column("scheduled_s", Float, nullable=False, doc="scheduled board time"),
    Column("board_time_s", Float, nullable=False, doc="board time when the read started"),
    Column("read_at", DateTime(timezone=True), nullable=False, default=utc_now),
    Column("temperature_c", Float, nullable=True),
    # g_blob and g_crc32 NULL: the vector is in `readout_blocks` (0008); g_len counts the devices.
    *vector_columns("g", chunkable=True),
    Column(
        "block_starts",
        Json,
        nullable=True,
        doc="[[first device, board s], …] per read block; NULL before 0003 (board_time_s for all)",
    ),
    Column("suspect", Text, nullable=True, doc="why this readout must not be trusted (board state lost…)"),
    # Reads of the same programmed chip at one scheduled offset, 0 first (0009).
    Column("draw", Integer, nullable=False, default=0, server_default="0", doc="read draw at this offset"),
    UniqueConstraint("run_id", "offset_s", "draw"),
)

evaluations = Table(
    "evaluations",
    metadata,
    _id(),
    _fk("readout_id", "readouts"),
    Column("method", String(8), nullable=False),
    Column("accuracy", Float, nullable=False),
    Column("ci_low", Float, nullable=True),
    Column("ci_high", Float, nullable=True),
    Column("n_images", Integer, nullable=False),
    Column("settings", Json, nullable=False, default=dict),
    _created(),
    _one_of("method", CompensationMethod),
)

device_fits = Table(
    "device_fits",
    metadata,
    _id(),
    _fk("run_id", "programming_runs"),
    # Per-device fit of ln G = ln G(t0) − ν·ln(t/t0) (float32; status int8 FitStatus).
    *vector_columns("nu"),
    *vector_columns("g_t0"),
    *vector_columns("r2"),
    *vector_columns("status", nullable=True),  # added in 0002: NULL on older fits
    Column("t0_s", Float, nullable=True, doc="reference time of g_t0, s since programming"),
    Column("summary", Json, nullable=False, default=dict),
    Column("statistics", Json, nullable=True, doc="per-bin statistics and outliers"),
    _created(),
)

# A readout's conductances in blocks. While its readback runs a block belongs to the job (its
# checkpoint; the job's JSON checkpoint holds only where to continue), written with the
# job's heartbeat; the readout row's insert re-keys the job's blocks to the readout (0008).
readout_blocks = Table(
    "readout_blocks",
    metadata,
    _id(),
    _fk("job_id", "jobs", nullable=True),
    _fk("readout_id", "readouts", nullable=True),
    Column("first_device", Integer, nullable=False),
    Column("read_s", Float, nullable=False, doc="board time when the block was read"),
    *vector_columns("g"),
    UniqueConstraint("job_id", "first_device"),
    UniqueConstraint("readout_id", "first_device"),
)

calibrations = Table(
    "calibrations",
    metadata,
    _id(),
    _fk("station_id", "stations"),
    Column("kind", String(64), nullable=False),
    Column("payload", Json, nullable=False),
    _created(),
)

jobs = Table(
    "jobs",
    metadata,
    _id(),
    Column("kind", String(32), nullable=False),
    Column("lane", String(8), nullable=False, default="chip", server_default="chip"),
    _fk("station_id", "stations"),
    _fk("experiment_id", "experiments", nullable=True),
    Column("payload", Json, nullable=False, default=dict),
    Column("status", String(16), nullable=False, default="queued"),
    Column("run_at_s", Float, nullable=False, doc="station-clock seconds: due time"),
    Column("window_s", Float, nullable=True, doc="after run_at_s + window_s an unstarted job is missed"),
    Column("priority", Integer, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("heartbeat_s", Float, nullable=True),
    Column("progress", Float, nullable=False, default=0.0),
    Column("progress_message", Text, nullable=False, default=""),
    Column("checkpoint", Json, nullable=True, doc="last committed block, for resuming"),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("error", Text, nullable=True),
    Column("idempotency_key", String(128), nullable=True, unique=True),
    Column("result", Json, nullable=True),
    _created(),
    Column("started_s", Float, nullable=True),
    Column("finished_s", Float, nullable=True),
    # Readback jobs: their run and scheduled board time, so the queue finds a run's pending
    # readbacks and a later due one in SQL (the payload holds them too, for the handler).
    _fk("run_id", "programming_runs", nullable=True),
    Column("scheduled_s", Float, nullable=True, doc="readback: scheduled board time"),
    _one_of("status", JobStatus),
    _one_of("lane", JobLane),
    CheckConstraint("progress >= 0 AND progress <= 1", name="progress_fraction"),
    Index("ix_jobs_due", "station_id", "lane", "status", "priority", "run_at_s"),
    # At most one running job per station and lane, enforced by the database itself.
    Index(
        "uq_jobs_one_running_per_lane",
        "station_id",
        "lane",
        unique=True,
        sqlite_where=text("status = 'running'"),
        postgresql_where=text("status = 'running'"),
    ),
)

# Image sets for inference: uploaded .npz/.npy bytes stored once per content hash, or a
# built-in set (no bytes) that `hwctl.nn.data.load_dataset` resolves by name and split.
datasets = Table(
    "datasets",
    metadata,
    _id(),
    Column("name", String(128), nullable=False),
    Column("sha256", String(80), nullable=False, unique=True, doc="of the bytes; builtin:NAME:SPLIT"),
    Column("builtin", String(16), nullable=True, doc="digits | cifar10 (no bytes stored)"),
    Column("split", String(8), nullable=True, doc="train | test, for a built-in set"),
    Column("content", LargeBinary, nullable=True, doc="the .npz or .npy as uploaded"),
    Column("size_bytes", Integer, nullable=False, default=0),
    Column("n_images", Integer, nullable=False),
    Column("channels", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("width", Integer, nullable=False),
    Column("dtype", String(8), nullable=False, doc="uint8 | float32"),
    Column("layout", String(4), nullable=False, doc="NCHW | NHWC"),
    Column("n_classes", Integer, nullable=True, doc="max label + 1; NULL: no labels"),
    Column("normalisation", Json, nullable=True, doc='{"mean": [...], "std": [...]} per channel'),
    _created(),
    CheckConstraint("content IS NOT NULL OR builtin IS NOT NULL", name="has_images"),
)

# Inference jobs and their results: logits of every (method, repeat, image, class) as one
# float32 vector, the accuracy/confusion summary as JSON once the job is done.
inferences = Table(
    "inferences",
    metadata,
    _id(),
    _fk("experiment_id", "experiments"),
    _fk("dataset_id", "datasets"),
    _fk("readout_id", "readouts", nullable=True),
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True, index=True),
    Column("settings", Json, nullable=False, default=dict),
    Column("summary", Json, nullable=True),
    Column("logits_shape", Json, nullable=True, doc="[methods, repeats, images, classes]"),
    *vector_columns("logits", nullable=True),
    _created(),
)
