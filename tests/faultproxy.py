"""A TCP proxy that a test controls: forward, black-hole, reset or refuse a board's link.

Put it between a host and a board server to make the link fail the way a lab link does:

    proxy = FaultProxy(("127.0.0.1", board_port)).start()
    driver = ChipDriver(open_transport(proxy.resource()))     # TCPIP::127.0.0.1::<port>::SOCKET
    proxy.blackhole()        # cable pulled: bytes vanish both ways, no FIN, no RST
    proxy.blackhole(after_bytes=4096)   # ... once 4 KiB more of the reply got through
    proxy.drop()             # every open connection reset (RST); new ones accepted
    proxy.refuse()           # drop, and refuse new connections (board switched off)
    proxy.resume()           # forward again (new connections; black-holed ones stay silent)
    proxy.close()

Each accepted connection opens its own upstream connection (so a board process that
restarts on the same port is reached again) and is pumped by two threads with blocking
`recv`; `drop()` wakes them with `shutdown(SHUT_RD)` and closes with SO_LINGER 0, which
sends an RST. A connection accepted while black-holed is held open and silent.
"""

from __future__ import annotations

import contextlib
import enum
import socket
import struct
import threading
from types import TracebackType

RECV_BYTES = 1 << 16


class Mode(enum.Enum):
    FORWARD = "forward"
    BLACKHOLE = "blackhole"
    REFUSE = "refuse"


class _Link:
    """One client connection and its upstream twin."""

    def __init__(self, proxy: FaultProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.silent = proxy.mode is not Mode.FORWARD  # born black-holed: never forwards
        self.budget: int | None = None  # bytes still allowed downstream before the black hole

    def run(self) -> None:
        try:
            self.upstream = socket.create_connection(self.proxy.upstream, timeout=5.0)
            self.upstream.settimeout(None)
        except OSError:
            self.reset()
            return
        for src, dst, downstream in ((self.client, self.upstream, False), (self.upstream, self.client, True)):
            threading.Thread(target=self._pump, args=(src, dst, downstream), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(RECV_BYTES):
                data = self._admit(data, downstream)
                if data:
                    dst.sendall(data)
                    self.proxy.forwarded_bytes += len(data)
            if not self.silent:  # a clean close travels on; a pulled cable says nothing
                dst.shutdown(socket.SHUT_WR)

    def _admit(self, data: bytes, downstream: bool) -> bytes:
        with self.proxy.lock:
            if self.silent:
                return b""
            if downstream and self.budget is not None:
                data, self.budget = data[: self.budget], self.budget - min(len(data), self.budget)
                if self.budget == 0:
                    self.silent = True
            return data

    def reset(self) -> None:
        """Wake both pumps and close with an RST (SO_LINGER 0)."""
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RD)
            with contextlib.suppress(OSError):
                sock.close()


class FaultProxy:
    """A controllable TCP proxy in front of `upstream` (host, port); see the module docs."""

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream
        self.host, self.port = host, port
        self.mode = Mode.FORWARD
        self.lock = threading.Lock()
        self.links: list[_Link] = []
        self.forwarded_bytes = 0
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    # -- lifetime -----------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._listen()
        return self

    def close(self) -> None:
        self.refuse()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def resource(self, kind: str = "visa") -> str:
        """The proxy as a board resource: `visa` (TCPIP…::SOCKET) or `serial` (socket://)."""
        if kind == "visa":
            return f"TCPIP::{self.host}::{self.port}::SOCKET"
        return f"socket://{self.host}:{self.port}"

    # -- faults ---------------------------------------------------------------------------
    def blackhole(self, after_bytes: int = 0) -> None:
        """Bytes vanish both ways on every open and new connection, no FIN, no RST.

        `after_bytes`: let that many more bytes through towards the host first (a reply
        that stops half-way)."""
        with self.lock:
            self.mode = Mode.BLACKHOLE
            for link in self.links:
                if after_bytes:
                    link.budget = after_bytes
                else:
                    link.silent = True

    stop_forwarding = blackhole

    def drop(self) -> None:
        """Reset every open connection (the host sees an RST); new ones are still accepted."""
        with self.lock:
            links, self.links = self.links, []
        for link in links:
            link.reset()

    def refuse(self) -> None:
        """Reset every connection and stop listening: connecting is refused."""
        with self.lock:
            self.mode = Mode.REFUSE
            listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            listener.close()
        if self._acceptor is not None:
            self._acceptor.join(5.0)
        self.drop()

    def resume(self) -> None:
        """Forward again: new connections reach the board (listening again after `refuse`).

        Connections black-holed before stay silent: their streams lost bytes."""
        with self.lock:
            was, self.mode = self.mode, Mode.FORWARD
        if was is Mode.REFUSE:
            self._listen()

    # -- accepting --------------------------------------------------------------------
    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self.lock:
                link = _Link(self, client)
                self.links.append(link)
            link.run()
