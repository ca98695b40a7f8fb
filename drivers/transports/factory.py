"""Pick a transport from a resource string, as a lab user writes it.

The simulator is imported only for `inproc://`, so a process that talks to real boards
(or only names resources, like the API) never loads `drivers.sim`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.transports.base import DEFAULT_TIMEOUT_S, Transport

if TYPE_CHECKING:
    from drivers.sim.board import SimBoard

__all__ = ["DEFAULT_TIMEOUT_S", "open_transport"]


def open_transport(
    resource: str, timeout_s: float = DEFAULT_TIMEOUT_S, board: SimBoard | None = None
) -> Transport:
    """`TCPIP::…::SOCKET` / `ASRL…` → VISA; `socket://`, `/dev/tty…`, `COMn` → pyserial;
    `inproc://` → in-process over `board` (a new default `SimBoard` if none given).

    `timeout_s` is the longest silence tolerated while a reply is due (see `base`)."""
    upper = resource.upper()
    if upper.startswith(("TCPIP", "ASRL")):
        from drivers.transports.visa import VisaTransport

        return VisaTransport(resource, timeout_s)
    if resource.startswith(("socket://", "rfc2217://", "loop://", "/dev/")) or upper.startswith("COM"):
        from drivers.transports.serial import SerialTransport

        return SerialTransport(resource, timeout_s)
    if resource.startswith("inproc://"):
        from drivers.transports.inproc import InProcessTransport

        return InProcessTransport(board, timeout_s)
    raise ValueError(
        f"unknown resource {resource!r}: a board is TCPIP::host::port::SOCKET (LAN), "
        "ASRL/dev/ttyUSB0::INSTR or ASRL1::INSTR (serial via VISA), or socket://host:port "
        "(e.g. `hwctl sim-chip`)"
    )
