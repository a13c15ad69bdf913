"""Every link inside the repository's Markdown resolves: relative links name a file or folder in the
checkout, `#anchors` name a heading of the target file (GitHub's slugs), and a file name quoted as code
(`ABLY-CONTRACT.md`) names a file that is in the repository, not one beside it on a developer's machine.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Copied unchanged from the MongoDB specifications repository: their links point into that repository.
VENDORED = ("tests/conformance/spec-tests/",)

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)
HTML_ANCHOR = re.compile(r"""<a\s+(?:name|id)=["']([^"']+)["']""")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def markdown_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [
        ROOT / name
        for name in sorted(set(listed))
        if not name.startswith(VENDORED) and (ROOT / name).exists()
    ]


def prose(text: str) -> str:
    """The text without fenced code blocks (links there are examples, not links)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower-cased, punctuation other than `-` and `_`
    removed, spaces turned into `-` (github-slugger)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = text.replace("`", "").lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in "-_ ")
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    text = prose(path.read_text(encoding="utf-8"))
    seen: Counter[str] = Counter()
    found: set[str] = set(HTML_ANCHOR.findall(text))
    for _, heading in HEADING.findall(text):
        base = slug(heading)
        found.add(base if not seen[base] else f"{base}-{seen[base]}")  # repeats get -1, -2, …
        seen[base] += 1
    return frozenset(found)


def links(path: Path) -> list[str]:
    text = prose(path.read_text(encoding="utf-8"))
    without_code = CODE_SPAN.sub("", text)
    return INLINE_LINK.findall(without_code) + REFERENCE_DEF.findall(without_code)


def problem(source: Path, link: str) -> str | None:
    """Why `link` in `source` does not resolve, or None."""
    if not link or SCHEME.match(link):
        return None  # an absolute URL: not this test's business
    target, _, anchor = link.partition("#")
    resolved = (source.parent / target).resolve() if target else source
    if not resolved.is_relative_to(ROOT):
        return "points outside the repository"
    if not resolved.exists():
        return "no such file or folder"
    if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
        return f"no heading with anchor #{anchor} in {resolved.relative_to(ROOT)}"
    return None


def test_the_slug_rules_are_githubs() -> None:
    assert (
        slug("The Postgres outbox source (`SOURCE=postgres`)") == "the-postgres-outbox-source-sourcepostgres"
    )
    assert (
        slug("Truncated messages (a change too big for Ably)")
        == "truncated-messages-a-change-too-big-for-ably"
    )
    assert (
        slug("Busy channels: Ably's per-channel rate limit") == "busy-channels-ablys-per-channel-rate-limit"
    )
    assert slug("Set-up: two commands") == "set-up-two-commands"
    assert slug("[`x_y`](a.md) and 1.2") == "x_y-and-12"


@pytest.mark.parametrize("source", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(source: Path) -> None:
    broken = [f"{link}: {why}" for link in links(source) if (why := problem(source, link))]
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("source", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_files_quoted_as_code_are_in_the_repository(source: Path) -> None:
    """`ABLY-CONTRACT.md` or `/work/shared/EMULATOR-NOTES.md` in a README sends readers to a file they do
    not have. A bare name must be a file here; an absolute or `../` path must stay in the checkout. (A path
    such as `errors/codes/40031.md` cites another repository's file, named beside it.)"""
    names = {name for _, name in CODE_SPAN.findall(prose(source.read_text(encoding="utf-8")))}
    existing = {p.name for p in ROOT.rglob("*.md") if "node_modules" not in p.parts}
    missing = []
    for name in names:
        if not re.fullmatch(r"[\w./-]+\.md", name):
            continue
        if name.startswith("/") or name.startswith(".."):
            resolved = (source.parent / name).resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                missing.append(name)
        elif "/" not in name and name not in existing:
            missing.append(name)
    assert not missing, missing


@pytest.mark.parametrize("source", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_sections_are_referred_to_by_links(source: Path) -> None:
    """`see "Models SDK"` named a heading that does not exist, and nothing noticed: a reference to a section
    is a link, so the test above checks its anchor."""
    text = CODE_SPAN.sub("", prose(source.read_text(encoding="utf-8")))
    assert not re.findall(r"""\b(?:see|under|section)\s+["“]([^"”]+)["”]""", text)
