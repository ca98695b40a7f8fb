"""Domain errors of the store: each says what is wrong and what to do about it."""

from __future__ import annotations


class StoreError(Exception):
    """Base class for database-side failures a user or operator can act on."""


class NotMigratedError(StoreError):
    """The database schema is not at the head revision; the service must not start."""

    def __init__(self, where: str, current: str | None, head: str | None) -> None:
        self.where = where
        self.current = current
        self.head = head
        super().__init__(
            f"database at {where} is not migrated (revision {current}, head {head}): run `hwctl db upgrade`"
        )


class CorruptVectorError(StoreError):
    """A stored per-device vector does not match its recorded length or checksum."""


class NotFoundError(StoreError):
    """A referenced row (readout, run, job...) does not exist."""
