"""The README's metrics table lists exactly what `/metrics` exports (adding a metric without documenting
it, or documenting one that is gone, fails here)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from prometheus_client import generate_latest

from connector.metrics import LABELS, METRICS, build_registry

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `(livesync_[a-z_]+)(?:\{[^}]*\})?` \| (counter|gauge) \|", re.MULTILINE)


def exported_names() -> dict[str, str]:
    """Every series name the collector writes when every value is present, with its type."""
    snapshot = {name.removeprefix("livesync_"): ({"x": 1} if name in LABELS else 1) for name in METRICS}
    text = generate_latest(build_registry(lambda: dict(snapshot), {"instance_id": "i", "connector_id": "c"}))
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text.decode(), re.MULTILINE))
    names: dict[str, str] = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            series = re.split(r"[{ ]", line, maxsplit=1)[0]
            base = series.removesuffix("_total")
            names[series] = types.get(base, types.get(series, ""))
    return names


def test_every_exported_metric_is_in_the_readme_table_and_nothing_else() -> None:
    documented = dict(ROW.findall(README.read_text()))
    exported = exported_names()
    assert sorted(documented) == sorted(exported)
    for name, kind in documented.items():
        assert exported[name] == kind, name


def test_every_log_code_the_connector_emits_is_listed_in_the_readme() -> None:
    source = "\n".join(p.read_text() for p in (README.parent / "connector").rglob("*.py"))
    emitted = set(re.findall(r"""(?:code\s*=\s*|"code":\s*)(720\d\d)""", source))
    logs = README.read_text().split("**Logs.**", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"\b(720\d\d)\b", logs))
    assert emitted and emitted <= listed, sorted(emitted - listed)


def test_the_documented_role_grants_what_check_needs_for_images() -> None:
    """`check` calls listCollections to see whether pre- and post-images are enabled
    (connector/sources/mongodb/check.py): the least-privilege role must grant it."""
    check = (README.parent / "connector/sources/mongodb/check.py").read_text()
    assert "list_collections" in check
    role = README.read_text().split("createRole(", 1)[1].split("```", 1)[0]
    assert re.search(r"""\{db: "shop", collection: ""\}, actions: \[[^\]]*"listCollections\"""", role)


def test_the_licence_pyproject_names_is_in_the_repository() -> None:
    licence = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]["license"]
    assert licence == "Apache-2.0"
    text = " ".join((README.parent / "LICENSE").read_text().split())
    assert text.startswith("Apache License Version 2.0, January 2004")
    assert "END OF TERMS AND CONDITIONS" in text
    assert "[LICENSE](LICENSE)" in README.read_text().replace("`", "")
