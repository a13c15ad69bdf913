"""The wheel holds the product only: `pip install .` must not put test servers into site-packages."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

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
