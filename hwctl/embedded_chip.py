"""The embedded simulated chip of a `sim://` station: a `SimBoard` behind the real TCP
server, in this process. Only `hwctl.station.open_station` (for a `sim://` resource),
`hwctl serve`, the demo and tests import it: it is the one place the station side loads
the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from drivers.base import Geometry
from drivers.sim.board import DEFAULT_GEOMETRY, SimBoard
from drivers.sim.clock import AcceleratedClock, Clock, VirtualClock
from drivers.sim.server import serve_in_thread
from drivers.sim.state import StateFileError
from hwctl.station import StationError

DEFAULT_SIM_RATE = 3600.0  # 24 h of board time in 24 s of wall time


@dataclass(frozen=True)
class SimChipOptions:
    """How to build an embedded simulated chip, parsed from `sim://?rate=…&seed=…`.

    `state`: the file that keeps its devices and board time (a non-volatile chip: a
    restarted process finds it as it was); None: blank at every start."""

    rate: float = DEFAULT_SIM_RATE
    virtual: bool = False
    seed: int = 0
    geometry: Geometry = DEFAULT_GEOMETRY
    state: Path | None = None

    @classmethod
    def parse(cls, resource: str) -> SimChipOptions:
        """`sim://?clock=virtual|accelerated&rate=X&seed=N&geometry=TxRxC&state=PATH`
        (PATH percent-encoded as `with_state` writes it)."""
        query = {k: v[-1] for k, v in parse_qs(urlsplit(resource).query).items()}
        unknown = set(query) - {"clock", "rate", "seed", "geometry", "state"}
        if unknown:
            raise StationError(f"{resource!r}: unknown simulated-chip options {sorted(unknown)}")
        clock = query.get("clock", "accelerated")
        if clock not in ("virtual", "accelerated"):
            raise StationError(f"{resource!r}: clock must be 'virtual' or 'accelerated', not {clock!r}")
        try:
            rate = float(query.get("rate", DEFAULT_SIM_RATE))
            seed = int(query.get("seed", 0))
            geometry = DEFAULT_GEOMETRY
            if "geometry" in query:
                tiles, rows, cols = (int(x) for x in query["geometry"].lower().split("x"))
                geometry = Geometry(tiles, rows, cols)
        except ValueError as exc:
            raise StationError(f"{resource!r}: malformed simulated-chip option ({exc})") from None
        if rate <= 0:
            raise StationError(f"{resource!r}: clock rate must be positive, got {rate}")
        if "state" in query and not query["state"]:
            raise StationError(f"{resource!r}: state must name a file")
        state = Path(query["state"]) if "state" in query else None
        return cls(rate=rate, virtual=clock == "virtual", seed=seed, geometry=geometry, state=state)


def with_state(resource: str, state: Path) -> str:
    """`resource` (a `sim://` string) whose chip keeps its state in `state`."""
    separator = "&" if "?" in resource else "?"
    return f"{resource}{separator}state={quote(str(state), safe='/')}"


class EmbeddedChip:
    """A `SimBoard` served on a real localhost TCP port, as a lab board would be."""

    def __init__(self, options: SimChipOptions = SimChipOptions()) -> None:
        clock: Clock = VirtualClock() if options.virtual else AcceleratedClock(options.rate)
        self.options = options
        try:
            self.board = SimBoard(options.geometry, clock=clock, seed=options.seed, state_path=options.state)
        except (StateFileError, OSError) as exc:
            raise StationError(f"cannot use the simulated chip's state file {options.state}: {exc}") from None
        self._server = serve_in_thread(self.board, port=0)

    @property
    def resource(self) -> str:
        """The VISA resource string a driver (or another process) connects to."""
        return self._server.resource

    def stop(self) -> None:
        """Stop serving, then sync and release the state file (another chip may open it)."""
        try:
            self._server.stop()
        finally:
            self.board.close()


def start_embedded_chip(options: SimChipOptions = SimChipOptions()) -> EmbeddedChip:
    """Start a simulated chip server in this process (for `hwctl serve` and tests)."""
    return EmbeddedChip(options)
