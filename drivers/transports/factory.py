"""Pick a transport from a resource string, as a lab user writes it."""

from __future__ import annotations

from drivers.sim.board import SimBoard
from drivers.transports.base import Transport
from drivers.transports.inproc import InProcessTransport
from drivers.transports.serial import SerialTransport
from drivers.transports.visa import VisaTransport

DEFAULT_TIMEOUT_S = 5.0


def open_transport(
    resource: str, timeout_s: float = DEFAULT_TIMEOUT_S, board: SimBoard | None = None
) -> Transport:
    """`TCPIP::…::SOCKET` / `ASRL…` → VISA; `socket://`, `/dev/tty…`, `COMn` → pyserial;
    `inproc://` → in-process over `board` (a new default `SimBoard` if none given)."""
    upper = resource.upper()
    if upper.startswith(("TCPIP", "ASRL")):
        return VisaTransport(resource, timeout_s)
    if resource.startswith(("socket://", "rfc2217://", "loop://", "/dev/")) or upper.startswith("COM"):
        return SerialTransport(resource, timeout_s)
    if resource.startswith("inproc://"):
        return InProcessTransport(board, timeout_s)
    raise ValueError(
        f"unknown resource {resource!r}: a board is TCPIP::host::port::SOCKET (LAN), "
        "ASRL/dev/ttyUSB0::INSTR or ASRL1::INSTR (serial via VISA), or socket://host:port "
        "(e.g. `hwctl sim-chip`)"
    )
