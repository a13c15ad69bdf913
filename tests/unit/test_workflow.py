"""The GitHub workflow is valid (GitHub's workflow schema, shipped by check-jsonschema) and does what the
README says: `make test` — the whole suite — on Node 20 and 22, against the emulator and a real replica
set, and `docker compose config`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from check_jsonschema.builtin_schemas import get_builtin_schema
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def load(path: Path) -> dict[str, Any]:
    workflow = YAML(typ="safe").load(path.read_text())
    assert isinstance(workflow, dict)
    return workflow


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_match_githubs_schema(path: Path) -> None:
    jsonschema.validate(load(path), get_builtin_schema("vendor.github-workflows"))


def steps() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(job, step) for every step of every workflow."""
    return [(job, step) for path in WORKFLOWS for job in load(path)["jobs"].values() for step in job["steps"]]


def test_make_test_runs_on_node_20_and_22_against_the_emulator_and_a_real_replica_set() -> None:
    [job] = [job for job, step in steps() if step.get("run", "").strip() == "make test"]
    matrix = job["strategy"]["matrix"]["include"]
    assert {entry["node"] for entry in matrix} >= {"20", "22"}
    assert {entry["mongodb"] for entry in matrix} >= {"emulator", "7.0", "8.0"}
    node = [step for step in job["steps"] if step.get("uses", "").startswith("actions/setup-node@")]
    assert node and node[0]["with"]["node-version"] == "${{ matrix.node }}"
    makefile = (ROOT / "Makefile").read_text()
    assert (
        "\tnpm test" in makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    )  # make test runs the Node suite


def test_compose_config_runs_in_the_workflow() -> None:
    runs = "\n".join(step.get("run", "") for _, step in steps())
    assert "docker compose config" in runs
    assert "docker compose --profile connector config" in runs


def test_the_readme_names_the_workflow_that_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    named = {path.name for path in WORKFLOWS if f".github/workflows/{path.name}" in readme}
    assert named, "the README names no existing workflow"
