"""Dependencies point inward: api → hwctl → drivers, and only the simulator's users load it.

The static rules read every module of `api/`, `hwctl/` and `drivers/` with `ast` (nothing
is imported, so a module that would fail to import is still checked); the runtime rule
starts the API app in a fresh interpreter and looks at what it loaded. A violation is
reported as `file:line imports module`, so the failure says what to move.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.api.conftest import migrated_sqlite_url

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "hwctl", "drivers")
SIMULATOR = "drivers.sim"
# The modules whose job is to run the simulated chip: they may load it when imported.
SIMULATOR_USERS = (
    "drivers.sim",  # the simulator itself
    "drivers.transports.inproc",  # the in-process transport talks to a simulated board
    "hwctl.commands.sim_chip",  # `hwctl sim-chip` serves one
    "hwctl.embedded_chip",  # `hwctl serve`/`demo` embed one
)
# The command line wires api, hwctl and drivers together: the composition root.
CLI = "hwctl.commands"
SERVING_COMMANDS = ("hwctl.commands.serve", "hwctl.commands.demo")
# SQL statements belong to the store (`hwctl.store`, `hwctl.queue`), not to the web layer.
STATEMENT_BUILDERS = frozenset({"select", "insert", "update", "delete", "text"})


@dataclass(frozen=True)
class Import:
    """One imported module as written in `source` at `line`."""

    source: str  # the importing module, e.g. "hwctl.report"
    path: Path
    line: int
    module: str  # what it imports, e.g. "drivers.sim.board"
    names: tuple[str, ...]  # for `from module import a, b`: ("a", "b"); () for `import module`
    at_import_time: bool  # runs when `source` is imported (not inside a function or TYPE_CHECKING)

    def __str__(self) -> str:
        names = f" ({', '.join(self.names)})" if self.names else ""
        where = self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path
        return f"{where}:{self.line} imports {self.module}{names}"

    def targets(self) -> Iterator[str]:
        """The module and, for `from package import name`, the submodule it may name."""
        if self.module:
            yield self.module
        for name in self.names:
            yield f"{self.module}.{name}" if self.module else name

    def reaches(self, package: str) -> bool:
        return any(_within(target, package) for target in self.targets())


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports_of(path: Path, source: str | None = None) -> Iterator[Import]:
    """Every import statement of the file at `path`, the module `source` (default: by its path)."""
    source = source or _module_name(path)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]

    def walk(node: ast.AST, at_import_time: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(source, path, child.lineno, alias.name, (), at_import_time)
            elif isinstance(child, ast.ImportFrom):
                parts = package.split(".")
                base = parts[: len(parts) - (child.level - 1)] if child.level else []
                module = ".".join([*base, *([child.module] if child.module else [])])
                names = tuple(alias.name for alias in child.names)
                yield Import(source, path, child.lineno, module, names, at_import_time)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for statement in child.body:
                    yield from walk(ast.Module(body=[statement], type_ignores=[]), False)
                for statement in child.orelse:
                    yield from walk(ast.Module(body=[statement], type_ignores=[]), at_import_time)
            else:
                yield from walk(child, at_import_time)

    yield from walk(ast.parse(path.read_text(encoding="utf-8"), str(path)), True)


def _all_imports() -> list[Import]:
    return [
        found
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        for found in _imports_of(path)
    ]


IMPORTS = _all_imports()


def _violations(rule: str, offending: list[Import]) -> str:
    return f"{rule}:\n  " + "\n  ".join(str(i) for i in offending)


def test_the_walker_sees_module_level_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: an import in a function or under TYPE_CHECKING is not import-time."""
    package = REPO / "hwctl"
    found = {(i.module, i.at_import_time) for i in _imports_of(package / "report.py")}
    assert ("hwctl.analysis.run_fit", True) in found
    example = tmp_path / "example.py"
    example.write_text(
        "from typing import TYPE_CHECKING\n"
        "import drivers.base\n"
        "if TYPE_CHECKING:\n    from drivers.sim import board\n"
        "def f():\n    from drivers.sim.clock import VirtualClock\n"
        "class C:\n    from drivers import sim\n"
        "from .. import api\n"
    )
    seen = [(i.module, i.names, i.at_import_time) for i in _imports_of(example, "hwctl.example")]
    assert seen == [
        ("typing", ("TYPE_CHECKING",), True),
        ("drivers.base", (), True),
        ("drivers.sim", ("board",), False),
        ("drivers.sim.clock", ("VirtualClock",), False),
        ("drivers", ("sim",), True),
        ("", ("api",), True),  # `..` from hwctl.example is the top level: `import api`
    ]
    by_names = {i.names: i for i in _imports_of(example, "hwctl.example")}
    assert by_names[("sim",)].reaches("drivers.sim") and by_names[("api",)].reaches("api")
    assert not by_names[()].reaches("drivers.sim")


def test_drivers_never_import_hwctl_or_api() -> None:
    offending = [
        i for i in IMPORTS if _within(i.source, "drivers") and (i.reaches("hwctl") or i.reaches("api"))
    ]
    assert not offending, _violations("drivers must stand alone", offending)


def test_hwctl_never_imports_api() -> None:
    """The command line is the one exception: it is the outermost layer (next test)."""
    offending = [
        i for i in IMPORTS if _within(i.source, "hwctl") and not _within(i.source, CLI) and i.reaches("api")
    ]
    assert not offending, _violations("hwctl must not depend on the web layer", offending)


def test_the_command_line_loads_the_web_stack_only_in_the_commands_that_serve_it() -> None:
    """`hwctl serve` and `hwctl demo` start the app; they import it when they run, nothing else does."""
    offending = [
        i
        for i in IMPORTS
        if _within(i.source, CLI)
        and i.reaches("api")
        and (i.at_import_time or i.source not in SERVING_COMMANDS)
    ]
    assert not offending, _violations("only a serving command, when it runs, imports api", offending)


def test_only_the_simulators_users_load_it_when_imported() -> None:
    offending = [
        i
        for i in IMPORTS
        if i.at_import_time
        and i.reaches(SIMULATOR)
        and not any(_within(i.source, user) for user in SIMULATOR_USERS)
    ]
    assert not offending, _violations(f"import {SIMULATOR} inside the function that needs it", offending)


def test_analysis_report_and_api_never_import_the_simulator() -> None:
    """Analysing a real chip must not depend on the simulated one, not even lazily."""
    scopes = ("hwctl.analysis", "hwctl.report", "api")
    offending = [
        i for i in IMPORTS if any(_within(i.source, scope) for scope in scopes) and i.reaches(SIMULATOR)
    ]
    assert not offending, _violations("the device model lives in drivers.pcm_model", offending)


def test_no_router_imports_another_router() -> None:
    offending = [
        i
        for i in IMPORTS
        if _within(i.source, "api.routers")
        and i.source != "api.routers"
        and any(_within(t, "api.routers") and t != "api.routers" and t != i.source for t in i.targets())
    ]
    assert not offending, _violations("shared helpers go to the store or beside the routers", offending)


def test_routers_and_the_dashboard_build_no_sql() -> None:
    web = ("api.routers", "api.dashboard")
    offending = [
        i
        for i in IMPORTS
        if any(_within(i.source, scope) for scope in web)
        and _within(i.module, "sqlalchemy")
        and (not i.names or STATEMENT_BUILDERS & set(i.names))
    ]
    assert not offending, _violations("SQL statements belong to hwctl.store", offending)


API_START = """
import json, sys
from fastapi.testclient import TestClient
from api.app import create_app
from hwctl.settings import Settings

app = create_app(Settings(_env_file=None, database_url=sys.argv[1]))
with TestClient(app) as client:
    pages = {path: client.get(path).status_code for path in ("/", "/experiments", "/stations", "/networks")}
loaded = sorted(m for m in sys.modules if m == "drivers.sim" or m.startswith("drivers.sim."))
print(json.dumps({"pages": pages, "simulator_modules": loaded}))
"""


def test_the_api_process_does_not_load_the_simulator(tmp_path: Path) -> None:
    """Started as `hwctl serve` starts it (without an embedded chip), the API does no instrument I/O."""
    started = subprocess.run(
        [sys.executable, "-c", API_START, migrated_sqlite_url(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr[-3000:]
    report = json.loads(started.stdout.strip().splitlines()[-1])
    assert all(status < 500 for status in report["pages"].values()), report["pages"]
    assert report["simulator_modules"] == []
