"""The API's layers: routers and the dashboard hold no SQL (they call the store), and no
router imports another router (what they share lives in api.views and api.schemas)."""

from __future__ import annotations

import ast
from pathlib import Path

import api

API = Path(api.__file__).parent
SQL_BUILDERS = {"select", "insert", "update", "delete", "func", "and_", "or_", "text", "bindparam", "exists"}


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every `from module import name` in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(node.module or "", alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            for alias in node.names]  # fmt: skip


def _handlers() -> list[Path]:
    return [*sorted((API / "routers").glob("*.py")), API / "dashboard.py"]


def test_routers_and_the_dashboard_build_no_sql() -> None:
    found = {
        f"{path.name}: {module}.{name}"
        for path in _handlers()
        for module, name in _imports(path)
        if module.startswith("sqlalchemy") and name in SQL_BUILDERS
    }
    assert not found, f"SQL belongs in hwctl.store: {sorted(found)}"


def test_no_router_imports_another_and_the_dashboard_imports_none() -> None:
    found = {
        f"{path.name}: {module}.{name}"
        for path in _handlers()
        for module, name in _imports(path)
        if module.startswith("api.routers") or (module == "api" and name == "routers")
    }
    assert not found, f"shared helpers belong in api.views or api.schemas: {sorted(found)}"
