"""Architecture rules: the sans-IO cores never import trio, never read a clock, never log.

Rules: the modules listed in CORE_MODULES are parsed (not imported) and any import of
trio, time, logging, random, socket or asyncio fails the test, as does a call to
`time.*` or `datetime.now`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE_MODULES = sorted(
    str(path.relative_to(ROOT))
    for pattern in (
        "allq/tubes/*.py",
        "allq/wire/*.py",
        "allq/gateway/health.py",
        # the pure parts of persistence: the file format, change checks, scanning
        "allq/store/format.py",
        "allq/store/validation.py",
        "allq/store/fastcheck.py",
        "allq/store/scanning.py",
    )
    for path in ROOT.glob(pattern)
    if path.name not in {"runner.py", "stream.py", "client.py", "plain.py", "serve.py", "writer.py"}
)
FORBIDDEN = {"trio", "time", "logging", "random", "socket", "asyncio", "datetime", "threading"}


def imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_there_are_core_modules() -> None:
    assert "allq/tubes/heap.py" in CORE_MODULES


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_is_sans_io(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text(), filename=module)
    bad = imported_roots(tree) & FORBIDDEN
    assert not bad, f"{module} imports {sorted(bad)}: cores take `now` and return effects"
