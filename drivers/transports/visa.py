"""VISA transport (pyvisa with the pure-Python pyvisa-py backend): TCPIP sockets, ASRL.

On a pyvisa-py `TCPIP…::SOCKET` session two defaults cost more than the board's physics
(measured: 3× a whole-chip program-and-verify), so this transport reaches the session's
socket: Nagle is switched off (pyvisa-py leaves it on and rejects VI_ATTR_TCPIP_NODELAY,
so a mid-sized command's last segment waited ~40 ms for the board's delayed ACK), and a
command goes out in one `sendall` instead of pyvisa-py's 4 KiB `select`+`send` steps.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from typing import Any

import pyvisa
from pyvisa import constants

from drivers.errors import LinkError
from drivers.protocol import Buffer
from drivers.transports.base import MAX_LINE_BYTES, StreamTransport

CHUNK_BYTES = 1 << 20


class VisaTransport(StreamTransport):
    """`TCPIP::host::port::SOCKET` or `ASRL…::INSTR`, terminators and timeout set explicitly."""

    def __init__(self, resource: str, timeout_s: float = 5.0) -> None:
        self.resource, self.timeout_s = resource, timeout_s
        timeout_ms = max(1, int(timeout_s * 1000))
        try:
            self._manager = pyvisa.ResourceManager("@py")
            self._res: Any = self._manager.open_resource(
                resource,
                open_timeout=timeout_ms,
                timeout=timeout_ms,
                read_termination="\n",
                write_termination="",
                chunk_size=CHUNK_BYTES,
            )
        except Exception as exc:  # pyvisa-py raises bare Exception on refused connects
            raise LinkError(f"cannot open {resource}: {exc}") from exc
        # pyvisa-py receives 4 KiB per recv() by default: too slow for megabyte blocks.
        backend_session: Any = getattr(self._manager.visalib, "sessions", {}).get(self._res.session)
        if hasattr(backend_session, "max_recv_size"):
            backend_session.max_recv_size = CHUNK_BYTES
        self._socket = _tcp_socket(backend_session)
        if self._socket is not None:
            self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socket.settimeout(timeout_s)  # bounds sendall; reads still select first

    def write(self, parts: Sequence[Buffer]) -> None:
        data = b"".join(parts)
        try:
            if self._socket is not None:
                self._socket.sendall(data)
            else:
                self._res.write_raw(data)
        except TimeoutError as exc:
            raise self._timeout("room to send the command") from exc
        except (pyvisa.VisaIOError, OSError, AttributeError) as exc:
            raise LinkError(f"{self.resource}: write failed: {exc}") from exc

    def _read_exactly(self, n_bytes: int) -> bytes:
        # Termination off: a block body is binary and may hold any number of newlines.
        self._res.set_visa_attribute(constants.VI_ATTR_TERMCHAR_EN, constants.VI_FALSE)
        try:
            return bytes(self._res.read_bytes(n_bytes, chunk_size=CHUNK_BYTES, break_on_termchar=False))
        except pyvisa.VisaIOError as exc:
            raise self._link_error(exc, f"{n_bytes} bytes") from exc
        except (OSError, AttributeError) as exc:
            raise LinkError(f"{self.resource}: read failed: {exc}") from exc
        finally:
            self._res.set_visa_attribute(constants.VI_ATTR_TERMCHAR_EN, constants.VI_TRUE)

    def _read_line(self) -> bytes:
        try:
            line = bytes(self._res.read_raw(MAX_LINE_BYTES))
        except pyvisa.VisaIOError as exc:
            raise self._link_error(exc, "reply line") from exc
        except (OSError, AttributeError) as exc:
            raise LinkError(f"{self.resource}: read failed: {exc}") from exc
        if not line.endswith(b"\n"):
            raise LinkError(f"{self.resource}: reply line without terminator: {line[:40]!r}")
        return line

    def _link_error(self, exc: pyvisa.VisaIOError, what: str) -> LinkError:
        if exc.error_code == constants.StatusCode.error_timeout:
            return self._timeout(what)
        return LinkError(f"{self.resource}: read failed: {exc}")

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a dead session must not mask why it died
            self._res.close()
        self._manager.close()


def _tcp_socket(backend_session: object) -> socket.socket | None:
    """The TCP socket under a pyvisa-py session, None for other backends and ASRL."""
    interface = getattr(backend_session, "interface", None)
    if isinstance(interface, socket.socket) and interface.type == socket.SOCK_STREAM:
        return interface
    return None
