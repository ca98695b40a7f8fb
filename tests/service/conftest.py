"""Fixtures for the station-worker tests: a migrated database (SQLite file or PostgreSQL),
a simulated chip on a real TCP port, and a campaign ready to run on it."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from sqlalchemy import Engine, create_engine, insert, select, text

from drivers.base import Geometry
from hwctl.embedded_chip import EmbeddedChip, SimChipOptions, start_embedded_chip
from hwctl.experiment_spec import EvaluationSpec, ExperimentSpec, MappingSpec, ScheduleSpec
from hwctl.nn.models import build_model
from hwctl.schedule import log_spaced_offsets_s
from hwctl.store.engine import make_engine
from hwctl.store.migrate import upgrade
from hwctl.store.records import add_experiment, add_network, add_station
from hwctl.store.schema import jobs
from hwctl.vocabulary import JobKind
from tests.conftest import unavailable

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# 4 tiles of 256×256: room for the digits ResNet (~2×24k devices) several times over.
SMALL_CHIP = Geometry(4, 256, 256)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'hwctl.sqlite'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database per test, dropped afterwards."""
    try:
        # Connections checked before use: a test may restart the server.
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        with admin.connect() as conn:
            name = f"hwctl_service_{uuid.uuid4().hex[:10]}"
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no server: say so (and fail in CI, where it must run)
        unavailable(f"PostgreSQL at 127.0.0.1:5432 not usable: {exc}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def virtual_chip() -> Iterator[EmbeddedChip]:
    chip = start_embedded_chip(SimChipOptions(virtual=True, geometry=SMALL_CHIP, seed=3))
    yield chip
    chip.stop()


def digits_checkpoint_bytes(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    model = build_model("digits-resnet").eval()
    buffer = io.BytesIO()
    torch.save({"arch": "digits-resnet", "state_dict": model.state_dict(), "meta": {}}, buffer)
    return buffer.getvalue()


@dataclass(frozen=True)
class Campaign:
    station: str
    experiment_id: int
    program_job_id: int
    offsets_s: list[float]


def create_campaign(
    engine: Engine,
    resource: str,
    *,
    clock_kind: str = "virtual",
    points: int = 20,
    evaluate: bool = False,
    station: str = "bench",
    offsets_s: list[float] | None = None,
    mapping: MappingSpec | None = None,
    reads_per_point: int = 1,
) -> Campaign:
    """Register a station, a digits network and an experiment, and queue its programming.

    The readbacks are `points` log-spaced from 25 s to 24 h unless `offsets_s` are given.
    """
    offsets_s = offsets_s or log_spaced_offsets_s(25.0, 86_400.0, points)
    with engine.begin() as conn:
        station_id = add_station(
            conn, station, resource=resource, chip_serial="SIM-0001", geometry=SMALL_CHIP,
            amplitude_limit_ua=500.0, clock_kind=clock_kind,
        )  # fmt: skip
        checkpoint = digits_checkpoint_bytes()
        network_id = add_network(conn, "digits", architecture="digits-resnet", checkpoint=checkpoint)
        spec = ExperimentSpec(
            network_id=network_id, station=station,
            schedule=ScheduleSpec(offsets_s=offsets_s, reads_per_point=reads_per_point),
            evaluation=EvaluationSpec(enabled=evaluate, n_images=100, calibration_images=100),
            mapping=mapping or MappingSpec(),
        )  # fmt: skip
        experiment_id = add_experiment(
            conn, "campaign", network_id=network_id, station_id=station_id, settings=spec.model_dump()
        )
        job_id = conn.execute(
            insert(jobs).values(
                kind=JobKind.PROGRAM, station_id=station_id, experiment_id=experiment_id,
                payload={"experiment_id": experiment_id}, status="queued", run_at_s=0.0,
            ).returning(jobs.c.id)
        ).scalar_one()  # fmt: skip
    return Campaign(station, experiment_id, int(job_id), offsets_s)


def job_statuses(engine: Engine, kind: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(select(jobs.c.status).where(jobs.c.kind == kind).order_by(jobs.c.run_at_s))
        return [r.status for r in rows]
