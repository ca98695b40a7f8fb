"""Fixtures of the fault-injection suite: a lab (database + API process) per database kind."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.conftest import unavailable
from tests.faults.lab import Lab, fresh_postgres_database, postgres_clusters, sqlite_database


@pytest.fixture(scope="module")
def sqlite_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One SQLite lab for the module: each scenario is a station of its own in it."""
    directory = tmp_path_factory.mktemp("sqlite-lab")
    with Lab(directory, sqlite_database(directory)) as lab:
        yield lab


@pytest.fixture
def postgres_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A lab on a fresh PostgreSQL database (dropped afterwards) whose server a test may restart."""
    if not postgres_clusters():
        unavailable("no local PostgreSQL cluster to restart (/etc/postgresql)")
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(fresh_postgres_database())
        except Exception as exc:
            unavailable(f"PostgreSQL at 127.0.0.1:5432 not usable: {exc}")
        yield stack.enter_context(Lab(tmp_path_factory.mktemp("postgres-lab"), url))
