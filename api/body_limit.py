"""Request bodies are bounded while they arrive, not after: a body over its route's limit is
answered 413 once the limit is passed (at once, if its Content-Length says so), and the rest
is never read.

JSON bodies are small (an experiment of 1,000 readbacks is ~20 kB), so every route but the
checkpoint upload takes at most `MAX_JSON_BODY_BYTES`; the upload takes the configured
checkpoint limit plus the multipart framing around the file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem_response

MAX_JSON_BODY_BYTES = 1 << 20
# Longest silence tolerated in the middle of a request body: a client that declares 1,000
# bytes and sends 2 would otherwise hold its connection and route open for as long as it likes.
BODY_IDLE_S = 30.0
MULTIPART_FRAMING_BYTES = 64 * 1024  # boundaries and part headers around an uploaded file


class BodyTooLargeError(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than this endpoint accepts: at most {limit} bytes")


class BodyStalledError(HTTPException):
    def __init__(self, idle_s: float) -> None:
        super().__init__(408, f"the request body stopped arriving: no byte for {idle_s:g} s")


class BodyLimit:
    """ASGI middleware: `limit_for(scope)` is the most bytes a request's body may have, and
    `idle_s` the longest wait for its next part."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int], idle_s: float = BODY_IDLE_S) -> None:
        self.app = app
        self.limit_for = limit_for
        self.idle_s = idle_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        if _declared_length(scope) > limit:
            too_large = BodyTooLargeError(limit)
            await problem_response(too_large.status_code, too_large.detail)(scope, receive, send)
            return
        received, complete = 0, False

        async def bounded_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body only a disconnect comes: a stream waits for it for ever
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_s)
            except TimeoutError:
                raise BodyStalledError(self.idle_s) from None  # answered like the 413
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)  # answered by the app's HTTPException handler
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, bounded_receive, send)


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0  # the server refuses a malformed length itself
    return 0
