"""A lab's processes, started the way a lab starts them, for the fault-injection suite.

A `Lab` is one database with the REST API in front of it (`hwctl serve --no-embedded`:
real uvicorn in its own process). A `Bench` is one station of it: a simulated chip
(`hwctl sim-chip`, its own process, with or without `--state`), the `FaultProxy` the
station's resource points at, and the station's worker (`hwctl worker`). The campaign
goes in through the API as a user submits it. Faults are done to these processes from
outside (a cut link, SIGKILL, a restart); nothing in them is patched, and what a test
asks the chip it asks over its own connection (`BoardProbe`), past the proxy.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from drivers import protocol as p
from drivers.base import Geometry
from drivers.chip import ChipDriver
from drivers.transports.factory import open_transport
from hwctl.client import ApiError, HwctlClient
from hwctl.experiment_spec import EvaluationSpec, ExperimentSpec, ScheduleSpec
from hwctl.store.engine import make_engine
from hwctl.store.migrate import upgrade
from tests.faultproxy import FaultProxy
from tests.service.conftest import digits_checkpoint_bytes

REPO = Path(__file__).resolve().parents[2]
# The `hwctl` entry point, run by this interpreter (the checkout's venv).
HWCTL = "import sys; from hwctl.cli import main; sys.exit(main())"
API_KEY = "faults-suite-key"
CHIP_SERIAL = "SIM-0001"  # what `hwctl sim-chip` answers to *IDN?
# 4 tiles of 256×256: the digits ResNet (~38k devices) with room to spare; a 6.5 MB state file.
GEOMETRY = Geometry(4, 256, 256)
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# A process that imports torch on a busy 2-core machine: generous.
STARTUP_S = 90.0
T = TypeVar("T")


class LabError(RuntimeError):
    """A lab process did not come up, or did not go down, as it must."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float, poll_s: float = 0.02) -> float:
    """Poll `condition` until it holds; the monotonic time it did. `LabError` naming `what` if not."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def patiently(what: str, attempt: Callable[[], T], timeout_s: float = 60.0) -> T:
    """`attempt` until the database lets it through: the suite's own looks and requests ride
    out a PostgreSQL restart (its own, or another test's on the shared server)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return attempt()
        except (DBAPIError, ApiError) as exc:
            if (isinstance(exc, ApiError) and exc.status != 503) or time.monotonic() > deadline:
                raise LabError(f"{what}: the database did not answer within {timeout_s:g} s: {exc}") from exc
            time.sleep(0.2)


class Child:
    """One lab process (`hwctl …`), its output appended to a log file the report quotes."""

    def __init__(self, name: str, args: list[str], log_path: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        with self.log_path.open("ab") as log_file:
            log_file.write(f"---- {time.strftime('%H:%M:%S')} start: hwctl {' '.join(self.args)}\n".encode())
            log_file.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-c", HWCTL, *self.args], cwd=REPO, env=self.env,
                stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as when the host crashes."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM and wait; its exit code (None: it had to be killed)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.process.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self, pattern: str, limit: int = 12) -> list[str]:
        """The last `limit` log lines matching `pattern` (a regex): the evidence a report quotes."""
        found = [line for line in self.log_text().splitlines() if re.search(pattern, line)]
        return found[-limit:]

    def wait_for_log(self, pattern: str, timeout_s: float, after: int = 0) -> re.Match[str]:
        """The first match of `pattern` in the log past byte `after`; `LabError` if the process
        exits or the time runs out first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log_text()[after:])
            if match:
                return match
            if not self.alive:
                raise LabError(f"{self.name} exited ({self.exit_code}) before logging {pattern!r}")
            time.sleep(0.02)
        raise LabError(f"{self.name}: no {pattern!r} in its log within {timeout_s:g} s")

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()


class BoardProbe:
    """The test's own connection to the chip, past the proxy: what the board really holds.

    Never used as a context manager: a driver leaving a context sends SAFE, and whether the
    board went safe by itself is what a test asks. It speaks `socket://` (pyserial): closing
    a VISA transport closes pyvisa's process-wide resource manager, and with it every other
    VISA session of the process."""

    def __init__(self, resource: str, timeout_s: float = 10.0) -> None:
        self.resource = resource
        self.timeout_s = timeout_s

    @contextlib.contextmanager
    def _chip(self) -> Iterator[ChipDriver]:
        chip = ChipDriver(open_transport(self.resource, timeout_s=self.timeout_s))
        try:
            yield chip
        finally:
            chip.close()

    def _line(self, header: str) -> str:
        with self._chip() as chip:
            chip.transport.write(p.encode_command(header))
            return p.check_line(chip.transport.read_response().payload, header)

    def is_safe(self) -> bool:
        return self._line("SIM:SAFE?") == "1"

    def power_cycle(self) -> None:
        if self._line("SIM:POW:CYC") != "OK":
            raise LabError(f"{self.resource}: SIM:POW:CYC not acknowledged")

    def read(self, addresses: npt.NDArray[np.uint32]) -> tuple[float, npt.NDArray[np.float32]]:
        """The board time and the conductances (µS) of `addresses`, read now."""
        with self._chip() as chip:
            return chip.board_time_s(), chip.read_block(addresses)


class SimChip:
    """`hwctl sim-chip` in its own process; restarted on the same port, with or without state."""

    def __init__(self, directory: Path, *, clock: str, watchdog_s: float, seed: int) -> None:
        self.directory = directory
        self.clock = clock
        self.watchdog_s = watchdog_s
        self.seed = seed
        self.state_path = directory / "chip.state"
        self.port = 0
        self.child: Child | None = None

    def start(self, *, state: bool) -> SimChip:
        args = ["sim-chip", "--port", str(self.port), "--clock", self.clock, "--seed", str(self.seed),
                "--geometry", f"{GEOMETRY.tiles},{GEOMETRY.rows},{GEOMETRY.cols}",
                "--watchdog-s", f"{self.watchdog_s:g}"]  # fmt: skip
        if state:
            args += ["--state", str(self.state_path)]
        log_path = self.directory / "chip.log"
        after = log_path.stat().st_size if log_path.exists() else 0
        self.child = Child("sim-chip", args, log_path, {}).start()
        listening = self.child.wait_for_log(r"listening on TCPIP::[\d.]+::(\d+)::SOCKET", STARTUP_S, after)
        self.port = int(listening.group(1))
        return self

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    @property
    def probe(self) -> BoardProbe:
        return BoardProbe(f"socket://127.0.0.1:{self.port}")


def worker_child(directory: Path, database_url: str, station: str, scale: WorkerScale) -> Child:
    env = {"HWCTL_DATABASE_URL": database_url, **scale.env()}
    args = ["worker", "--station", station, "--block-devices", str(scale.block_devices),
            "--poll-s", f"{scale.poll_s:g}"]  # fmt: skip
    return Child("worker", args, directory / "worker.log", env)


@dataclass(frozen=True)
class WorkerScale:
    """The worker's patience: `settings` are HWCTL_* values (none: the deployment defaults)."""

    block_devices: int = 1_000  # ~38 blocks a readout: a fault lands mid-readout, and six link
    # resets each after a block still find the readback running on a fast, idle machine
    poll_s: float = 0.1
    settings: tuple[tuple[str, float], ...] = ()

    def env(self) -> dict[str, str]:
        return {f"HWCTL_{name.upper()}": f"{value:g}" for name, value in self.settings}


# -- databases ----------------------------------------------------------------------------
def sqlite_database(directory: Path) -> str:
    return f"sqlite:///{directory / 'hwctl.sqlite'}"


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new PostgreSQL database for one lab, dropped afterwards (connections checked before
    use: the suite restarts the server)."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    name = f"hwctl_faults_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with contextlib.suppress(Exception), admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_clusters() -> list[Path]:
    return sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").is_dir() else []


def restart_postgresql() -> None:
    """The real server restarts (a lab's update): every connection is cut; back when this returns."""
    version = postgres_clusters()[0].name
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


# -- the lab ------------------------------------------------------------------------------
class Lab:
    """A migrated database and the API in front of it; benches are its stations."""

    def __init__(self, directory: Path, database_url: str) -> None:
        self.directory = directory
        self.database_url = database_url
        self.engine: Engine = make_engine(database_url, pool_pre_ping=True)
        self.api: Child | None = None
        self.api_url = ""
        self.client: HwctlClient | None = None
        self._network_id: int | None = None

    def __enter__(self) -> Lab:
        upgrade(self.engine)
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        env = {"HWCTL_DATABASE_URL": self.database_url, "HWCTL_API_KEYS": API_KEY}
        args = ["serve", "--no-embedded", "--port", str(port), "--no-access-log"]
        self.api = Child("api", args, self.directory / "api.log", env).start()
        wait_until(self._api_answers, "the API to answer", STARTUP_S, poll_s=0.1)
        self.client = HwctlClient(self.api_url, API_KEY)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()
        if self.api is not None:
            self.api.stop()
        self.engine.dispose()

    def _api_answers(self) -> bool:
        assert self.api is not None
        if not self.api.alive:
            raise LabError(f"the API exited ({self.api.exit_code}): {self.api.log_text()[-2000:]}")
        try:
            return httpx.get(f"{self.api_url}/stations", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def api_client(self) -> HwctlClient:
        if self.client is None:
            raise LabError("the lab is not started")
        return self.client

    def network_id(self) -> int:
        """The digits network, uploaded through the API once per lab."""
        if self._network_id is None:
            checkpoint = digits_checkpoint_bytes()
            network = patiently(
                "uploading the network",
                lambda: self.api_client.upload_network(checkpoint, "digits.pt", "digits"),
            )
            self._network_id = int(network["id"])
        return self._network_id

    def bench(self, name: str, *, clock: str, watchdog_s: float, state: bool, worker: WorkerScale) -> Bench:
        directory = self.directory / name
        directory.mkdir(parents=True, exist_ok=True)
        return Bench(self, name, directory, clock=clock, watchdog_s=watchdog_s, state=state, worker=worker)


class Bench:
    """One station: chip process, proxy, worker process; registered through the API."""

    def __init__(
        self, lab: Lab, name: str, directory: Path, *, clock: str, watchdog_s: float, state: bool,
        worker: WorkerScale,
    ) -> None:  # fmt: skip
        self.lab = lab
        self.name = name
        self.directory = directory
        self.state = state
        self.chip = SimChip(
            directory, clock=clock, watchdog_s=watchdog_s, seed=zlib.crc32(name.encode()) % 1000
        )
        self.proxy: FaultProxy | None = None
        self.worker = worker_child(directory, lab.database_url, name, worker)

    def __enter__(self) -> Bench:
        """The worker first (it imports for seconds; until the chip listens it retries), then the chip."""
        self.chip.port = free_port()
        self.proxy = FaultProxy(self.chip.address).start()
        clock_kind = "virtual" if self.chip.clock == "virtual" else "real"
        patiently("registering the station", lambda: self.lab.api_client.ensure_station(
            self.name, self.link.resource(), CHIP_SERIAL, GEOMETRY, clock_kind
        ))  # fmt: skip
        self.worker.start()
        self.chip.start(state=self.state)
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.kill()
        if self.proxy is not None:
            self.proxy.close()
        self.chip.kill()

    @property
    def link(self) -> FaultProxy:
        if self.proxy is None:
            raise LabError("the bench is not started")
        return self.proxy

    def submit(self, offsets_s: list[float]) -> int:
        """A campaign as a user submits it: the experiment's id."""
        spec = ExperimentSpec(
            network_id=self.lab.network_id(), station=self.name, name=f"faults {self.name}",
            schedule=ScheduleSpec(offsets_s=offsets_s),
            evaluation=EvaluationSpec(methods=["none"], n_images=100, calibration_images=100),
        )  # fmt: skip
        key = f"faults-{self.name}"  # a submission retried through an outage is still one experiment
        accepted = patiently("submitting", lambda: self.lab.api_client.submit_experiment(spec, key))
        return int(accepted["experiment"]["id"])
