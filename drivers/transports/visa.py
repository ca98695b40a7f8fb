"""VISA transport (pyvisa with the pure-Python pyvisa-py backend): TCPIP sockets, ASRL.

On a pyvisa-py `TCPIP…::SOCKET` session VISA opens the connection and this transport
then talks through the session's socket (`SocketStream`): Nagle off (pyvisa-py leaves it
on and rejects VI_ATTR_TCPIP_NODELAY, so a mid-sized command's last segment waited
~40 ms for the board's delayed ACK), a command in one `sendall` instead of 4 KiB
`select`+`send` steps, block bodies received straight into one buffer, each `recv`
bounded by the silence limit, TCP keep-alive on, and `abort()` that wakes a blocked read.
Other sessions (ASRL) read through pyvisa, whose timeout applies per chunk.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Sequence
from typing import Any

import pyvisa
from pyvisa import constants

from drivers.errors import LinkError
from drivers.protocol import Buffer
from drivers.transports.base import DEFAULT_TIMEOUT_S, MAX_LINE_BYTES, StreamTransport, line_too_long
from drivers.transports.sockets import SocketStream

CHUNK_BYTES = 1 << 20


class VisaTransport(StreamTransport):
    """`TCPIP::host::port::SOCKET` or `ASRL…::INSTR`, terminators and timeout set explicitly."""

    def __init__(self, resource: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
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
        backend_session: Any = getattr(self._manager.visalib, "sessions", {}).get(self._res.session)
        sock = _tcp_socket(backend_session)
        self._stream = SocketStream(sock, resource, timeout_s) if sock is not None else None

    def write(self, parts: Sequence[Buffer]) -> None:
        self._check_aborted()
        data = b"".join(parts)
        self._sent(len(data))
        if self._stream is not None:
            self._stream.sendall(data)
            return
        try:
            self._res.write_raw(data)
        except (pyvisa.VisaIOError, OSError, AttributeError) as exc:
            raise LinkError(f"{self.resource}: write failed: {exc}") from exc

    def _read_exactly(self, n_bytes: int, deadline: float) -> bytes:
        if self._stream is not None:
            return self._stream.read_exactly(n_bytes, deadline)
        # Termination off: a block body is binary and may hold any number of newlines.
        self._res.set_visa_attribute(constants.VI_ATTR_TERMCHAR_EN, constants.VI_FALSE)
        try:
            data = bytes(self._res.read_bytes(n_bytes, chunk_size=CHUNK_BYTES, break_on_termchar=False))
        except pyvisa.VisaIOError as exc:
            raise self._link_error(exc, f"{n_bytes} bytes") from exc
        except (OSError, AttributeError) as exc:
            raise LinkError(f"{self.resource}: read failed: {exc}") from exc
        finally:
            self._res.set_visa_attribute(constants.VI_ATTR_TERMCHAR_EN, constants.VI_TRUE)
        if time.monotonic() > deadline:
            raise self._late(f"{n_bytes}-byte reply")
        return data

    def _read_line(self, deadline: float) -> bytes:
        if self._stream is not None:
            return self._stream.read_line(deadline)
        try:
            line = bytes(self._res.read_raw(MAX_LINE_BYTES))
        except pyvisa.VisaIOError as exc:
            raise self._link_error(exc, "reply line") from exc
        except (OSError, AttributeError) as exc:
            raise LinkError(f"{self.resource}: read failed: {exc}") from exc
        if not line.endswith(b"\n"):
            raise line_too_long(self.resource)
        return line

    def _link_error(self, exc: pyvisa.VisaIOError, what: str) -> LinkError:
        self._check_aborted()
        if exc.error_code == constants.StatusCode.error_timeout:
            return self._silence(what)
        return LinkError(f"{self.resource}: read failed: {exc}")

    def abort(self) -> None:
        super().abort()
        if self._stream is not None:
            self._stream.abort()
        else:
            with contextlib.suppress(Exception):  # VISA: closing the session ends its read
                self._res.close()

    def close(self) -> None:
        """Close this session only: pyvisa shares one ResourceManager per backend and process,
        and closing it would end every other station's session with it."""
        with contextlib.suppress(Exception):  # closing a dead session must not mask why it died
            self._res.close()


def _tcp_socket(backend_session: object) -> socket.socket | None:
    """The TCP socket under a pyvisa-py session, None for other backends and ASRL."""
    interface = getattr(backend_session, "interface", None)
    if isinstance(interface, socket.socket) and interface.type == socket.SOCK_STREAM:
        return interface
    return None
