"""A live service per database (SQLite file, PostgreSQL): uvicorn on a real port, a
simulated chip on a real TCP port and its station's worker, with one digits experiment
programmed and read back twice, ready for inferences."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from sqlalchemy import create_engine, func, select, text

from api.app import create_app
from api.server import BackgroundServer
from drivers.base import Geometry
from hwctl.embedded_chip import SimChipOptions, start_embedded_chip
from hwctl.nn.models import build_model
from hwctl.store.engine import make_engine
from hwctl.store.migrate import upgrade
from hwctl.store.schema import jobs
from hwctl.vocabulary import JobKind
from hwctl.worker import Worker, WorkerOptions
from tests.api.conftest import AUTH, api_settings
from tests.conftest import unavailable

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CHIP = Geometry(4, 256, 256)  # the digits ResNet (~2×24k devices) fits with room to spare
OFFSETS_S = [25.0, 2500.0]


@dataclass
class Live:
    client: httpx.Client
    url: str  # the database
    worker: Worker
    experiment_id: int
    readout_ids: list[int]

    def _scalar(self, query: Any) -> Any:
        engine = make_engine(self.url)
        try:
            with engine.connect() as conn:
                return conn.execute(query).scalar_one()
        finally:
            engine.dispose()

    def infer_jobs(self) -> int:
        return int(self._scalar(select(func.count()).select_from(jobs).where(jobs.c.kind == JobKind.INFER)))

    def lane(self, job_id: int) -> str:
        """The lane a job was queued in (the API does not show it)."""
        return str(self._scalar(select(jobs.c.lane).where(jobs.c.id == job_id)))

    def wait(self, job_id: int, timeout_s: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.worker.error is None, self.worker.error
            job = self.client.get(f"/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled", "missed"):
                return dict(job)
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish: {job}")


def _database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'hwctl.sqlite'}"
        admin = None
    else:
        try:
            admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
            name = f"hwctl_infer_{uuid.uuid4().hex[:10]}"
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:
            unavailable(f"PostgreSQL at 127.0.0.1:5432 not usable: {exc}")
        url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    if admin is not None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def digits_checkpoint() -> bytes:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save({"arch": "digits-resnet", "state_dict": build_model("digits-resnet").state_dict(), "meta": {}},
               buffer)  # fmt: skip
    return buffer.getvalue()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    network = ("digits.pt", digits_checkpoint())
    with live_service(request.param, tmp_path_factory.mktemp("db"), network) as service:
        yield service


@contextmanager
def live_service(
    kind: str, tmp_path: Path, network: tuple[str, bytes], evaluation: dict[str, Any] | None = None,
    reads_per_point: int = 1, **form: str,
) -> Iterator[Live]:
    """The service with `network` (file name, bytes; `form` fields beside it) uploaded,
    programmed and read back `reads_per_point` times at each of OFFSETS_S."""
    databases = _database(kind, tmp_path)
    url = next(databases)
    chip = start_embedded_chip(SimChipOptions(virtual=True, geometry=CHIP, seed=5))
    worker_engine = make_engine(url)
    worker = Worker(worker_engine, "infer", WorkerOptions(poll_s=0.05))
    try:
        with BackgroundServer(create_app(api_settings(url))) as server, httpx.Client(
            base_url=server.url, headers=AUTH, timeout=30.0
        ) as client:
            client.post("/stations", json={
                "name": "infer", "resource": chip.resource, "chip_serial": "SIM-0001",
                "clock_kind": "virtual",
                "geometry": {"tiles": CHIP.tiles, "rows": CHIP.rows, "cols": CHIP.cols},
            }).raise_for_status()  # fmt: skip
            files = {"file": (network[0], io.BytesIO(network[1]), "application/octet-stream")}
            uploaded = client.post("/networks", files=files, data=form).raise_for_status().json()
            accepted = client.post("/experiments", json={
                "network_id": uploaded["id"], "station": "infer",
                "schedule": {"offsets_s": OFFSETS_S, "reads_per_point": reads_per_point},
                "evaluation": evaluation or {"enabled": False},
            }).raise_for_status().json()  # fmt: skip
            worker.start()
            live = Live(client, url, worker, accepted["experiment"]["id"], [])
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                assert worker.error is None, worker.error
                detail = client.get(f"/experiments/{live.experiment_id}").json()
                if len(detail["readouts"]) == len(OFFSETS_S) * reads_per_point:
                    break
                time.sleep(0.1)
            live.readout_ids = [r["id"] for r in detail["readouts"]]
            assert len(live.readout_ids) == len(OFFSETS_S) * reads_per_point, detail
            yield live
    finally:
        worker.stop()
        worker_engine.dispose()
        chip.stop()
        next(databases, None)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()
