"""One seam per external library: mmengine only in training/, mlflow only in tracking/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "vlmtune"


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize(("library", "package"), [("mmengine", "training"),
                                                  ("mlflow", "tracking")])
def test_library_imported_only_behind_its_seam(library, package):
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if library in imported_roots(p) and p.relative_to(SRC).parts[0] != package]
    assert offenders == []
    assert any(library in imported_roots(p) for p in (SRC / package).rglob("*.py"))
