"""Sampling profile of the connector process with py-spy (optional: `pip install py-spy`).

`--profile` on `benchmarks.run` attaches `py-spy record --format raw` to each connector run and prints
the functions where its samples land: self time (the frame on top of the stack) and inclusive time (the
frame anywhere on the stack), as a share of all samples. Start-up is included, since py-spy attaches a few
milliseconds after the process is spawned.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

#: Samples per second: py-spy's default, cheap enough not to distort a run on two cores.
SAMPLE_RATE = 100
STOP_TIMEOUT_S = 30.0


def executable() -> str | None:
    """py-spy next to this interpreter (a virtualenv's bin is often not on PATH), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def start(pid: int, out: Path, idle: bool = False) -> subprocess.Popen[bytes]:
    """Attach to `pid`; the recorder writes `out` when the process exits. `idle` also samples threads
    that wait (the event loop in `select`): the share of time the loop had nothing to do."""
    command = [
        executable() or "py-spy",
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--rate",
        str(SAMPLE_RATE),
    ]
    command += ["--output", str(out), "--nonblocking"] + (["--idle"] if idle else [])
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish(recorder: subprocess.Popen[bytes]) -> None:
    """Wait for the recorder, which ends by itself once the profiled process has exited."""
    try:
        recorder.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        recorder.kill()
        recorder.wait(STOP_TIMEOUT_S)


def _frame_name(frame: str) -> str:
    """`func (path/to/module.py:123)` → `func (module.py)`: lines differ per sample, functions do not."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1].rstrip(")")
    return f"{name} ({file})" if file else name


def top_frames(raw: Path, limit: int = 15) -> dict[str, list[tuple[str, float]]]:
    """{"self": [(frame, share)], "inclusive": [...]} from py-spy's collapsed-stack output."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count
    if not total:
        return {"self": [], "inclusive": []}
    return {
        "self": [(f, n / total) for f, n in own.most_common(limit)],
        "inclusive": [(f, n / total) for f, n in anywhere.most_common(limit)],
    }
