"""Opening a database fails in one sentence that says what to fix, and leaves nothing behind."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from hwctl.cli import main
from hwctl.store.engine import make_engine
from hwctl.store.errors import DatabaseUnavailableError, DatabaseURLError, NoDatabaseError
from hwctl.store.migrate import current_revision, ensure_migrated, head_revision, upgrade
from tests.store.conftest import POSTGRES_URL, _postgres_admin


@pytest.mark.parametrize(
    "url", ["bogus://x", "postgresql://db/hwctl", "mysql+pymysql://db/hwctl", "not a url"]
)
def test_a_url_for_an_unsupported_database_is_refused_with_the_supported_forms(url: str) -> None:
    with pytest.raises(DatabaseURLError) as refused:
        make_engine(url)
    assert str(refused.value).startswith(
        f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql+psycopg://"
    )


def test_an_unknown_postgresql_database_is_named_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _postgres_admin().dispose()  # skips when no server is running
    name = f"hwctl_absent_{uuid.uuid4().hex[:8]}"
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    with pytest.raises(DatabaseUnavailableError) as refused:
        ensure_migrated(engine)
    assert str(refused.value) == f'cannot open database {url}: database "{name}" does not exist'
    engine.dispose()
    monkeypatch.setenv("HWCTL_DATABASE_URL", url)  # how `station`, `worker`, `serve` and `report` get it
    assert main(["station", "list"]) == 2
    assert capsys.readouterr().err == f"hwctl station: error: {refused.value}\n"


def test_an_unreachable_server_is_reported_as_the_driver_puts_it() -> None:
    engine = make_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/hwctl", connect_args={"connect_timeout": 3}
    )
    with pytest.raises(DatabaseUnavailableError, match=r"^cannot open database \S+:1/hwctl: .*refused"):
        current_revision(engine)
    engine.dispose()


def test_inspecting_a_missing_sqlite_file_says_to_upgrade_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "var" / "hwctl.sqlite"
    engine = make_engine(f"sqlite:///{path}")
    for inspect in (ensure_migrated, current_revision):
        with pytest.raises(NoDatabaseError) as refused:
            inspect(engine)
        assert str(refused.value) == f"no database at {path}: run `hwctl db upgrade`"
    assert not path.parent.exists()
    upgrade(engine)  # the one operation that creates the file
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_a_failed_cli_check_leaves_no_empty_sqlite_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nothere.sqlite"
    assert main(["db", "check", "--url", f"sqlite:///{path}"]) == 2
    assert capsys.readouterr().err == f"hwctl db: error: no database at {path}: run `hwctl db upgrade`\n"
    assert list(tmp_path.iterdir()) == []
