"""Group commit: concurrent submissions share one transaction, so they share one fsync.

With `synchronous=FULL` every SQLite commit waits for the disk (2.5–8 ms here), and
SQLite admits one writer, so one commit per request caps submissions at a few hundred
a second and queues everyone behind the disk. Here one writer thread takes every
submission waiting when it becomes free and stores them in one `BEGIN IMMEDIATE`
transaction, each inside its own savepoint: a submission that fails (unknown station,
a clashing key) leaves nothing behind and does not disturb the others. Nobody's future
resolves before the commit, so an accepted submission is as durable as before.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from hwctl.store.engine import SQLITE_BEGIN_OPTION

T = TypeVar("T")
Work = Callable[[Connection], Any]
MAX_BATCH = 64  # bounds one transaction's lock time when a burst arrives


class GroupCommit:
    """A writer thread, started on first use; `submit` returns a future resolved after the commit."""

    def __init__(self, engine: Engine, write_lock: AbstractContextManager[object]) -> None:
        self.engine = engine
        self.write_lock = write_lock  # shared with the app's other writers
        self._pending: queue.SimpleQueue[tuple[Future[Any], Work] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    def start(self) -> None:
        """Start the writer thread now (the app does at start-up) rather than on the first submission."""
        with self._starting:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hwctl-group-commit", daemon=True)
                self._thread.start()

    def submit(self, work: Callable[[Connection], T]) -> Future[T]:
        """Run `work(conn)` in the next group transaction; its result or exception comes back."""
        self.start()
        future: Future[T] = Future()
        self._pending.put((future, work))
        return future

    def stop(self) -> None:
        """Finish what was submitted, then end the writer thread."""
        with self._starting:
            if self._thread is None:
                return
            self._pending.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while (first := self._pending.get()) is not None:
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._pending.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._commit(batch)
                    return
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[tuple[Future[Any], Work]]) -> None:
        outcomes: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            with self.write_lock, self.engine.connect() as conn:
                conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
                with conn.begin():
                    for future, work in batch:
                        if not future.set_running_or_notify_cancel():
                            continue  # its request was cancelled (client gone): store nothing
                        try:
                            with conn.begin_nested():
                                outcomes.append((future, work(conn), None))
                        except Exception as exc:  # that submission's own error: the others go on
                            outcomes.append((future, None, exc))
        except Exception as exc:  # the transaction itself failed: nothing in it was stored
            for future, _ in batch:
                if future.running() or future.set_running_or_notify_cancel():
                    future.set_exception(exc)
            return
        for future, value, error in outcomes:
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)
