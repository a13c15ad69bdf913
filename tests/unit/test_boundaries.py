"""Structural rules: the product never depends on the test emulators."""

from __future__ import annotations

import ast
from pathlib import Path

CONNECTOR = Path(__file__).resolve().parents[2] / "connector"


def test_connector_never_imports_emulators() -> None:
    offenders = []
    for path in sorted(CONNECTOR.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {name}" for name in names if name.split(".")[0] in ("emulators", "tests")
            ]
    assert len(list(CONNECTOR.rglob("*.py"))) > 10
    assert offenders == []
