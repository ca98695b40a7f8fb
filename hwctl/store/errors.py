"""Domain errors of the store: each says what is wrong and what to do about it."""

from __future__ import annotations


class StoreError(Exception):
    """Base class for database-side failures a user or operator can act on."""


class DatabaseURLError(StoreError, ValueError):
    """The database URL names a database or driver hwctl does not support."""

    def __init__(self, url: str) -> None:
        super().__init__(
            f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/NAME"
        )


class DatabaseUnavailableError(StoreError):
    """The database could not be opened: server unreachable, unknown database, no access."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"cannot open database {where}: {reason}")


class NotMigratedError(StoreError):
    """The database schema is not at the head revision; the service must not start."""

    def __init__(self, where: str, current: str | None, head: str | None, message: str | None = None) -> None:
        self.where = where
        self.current = current
        self.head = head
        told = f"database at {where} is not migrated (revision {current}, head {head})"
        super().__init__(message or f"{told}: run `hwctl db upgrade`")


class NoDatabaseError(NotMigratedError):
    """The SQLite file does not exist; only `hwctl db upgrade` creates it, so a failed start leaves none."""

    def __init__(self, path: str, head: str | None) -> None:
        super().__init__(path, None, head, f"no database at {path}: run `hwctl db upgrade`")


class CorruptVectorError(StoreError):
    """A stored per-device vector does not match its recorded length or checksum."""


class NotFoundError(StoreError):
    """A referenced row (readout, run, job...) does not exist."""
