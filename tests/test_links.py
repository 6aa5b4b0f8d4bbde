"""Every file the project cites is in the repository: each relative link of the tracked Markdown and
each docs/ path named in the tracked code resolves to a tracked file (or a folder holding some).
A file that exists here but is ignored by git (as docs/runs/ once was, under a `runs/` pattern)
fails: a clean clone would not have it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target) and ![alt](target "title")
DOCS_PATH = re.compile(r"(?<![\w/.-])docs/[\w./-]*[\w/]")  # docs/... in code, up to its last word character
CODE_SUFFIXES = {".py", ".sh", ".toml", ".txt", ".cfg", ".cpp", ".cu", ".h", ".cuh"}


def tracked_files() -> set[str]:
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout ({error}): which files are tracked is unknown")
    return {name for name in listing.stdout.decode().split("\0") if name}


def _resolves(relative: str, tracked: set[str]) -> bool:
    relative = relative.rstrip("/")
    return relative in tracked or any(name.startswith(relative + "/") for name in tracked)


def markdown_links(text: str) -> list[str]:
    """The relative targets of a Markdown text's links, without their #anchors."""
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):  # http:, mailto:, an anchor
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def test_the_link_finders_find_what_they_should():
    text = 'see [a](docs/a.md#part), ![b](b.png "title"), [web](https://x.org), [here](#top)'
    assert markdown_links(text) == ["docs/a.md", "b.png"]
    assert DOCS_PATH.findall('help="(docs/runs/clarid/feature_time.md)." and docs/demo/, not mydocs/x') == [
        "docs/runs/clarid/feature_time.md",
        "docs/demo/",
    ]


def test_every_relative_markdown_link_resolves_to_a_tracked_file():
    tracked = tracked_files()
    broken = []
    for name in sorted(n for n in tracked if n.endswith(".md")):
        path = ROOT / name
        for target in markdown_links(path.read_text(encoding="utf-8")):
            resolved = (path.parent / target).resolve()
            try:
                relative = resolved.relative_to(ROOT).as_posix()
            except ValueError:
                broken.append(f"{name}: {target} (outside the repository)")
                continue
            if not _resolves(relative, tracked):
                broken.append(f"{name}: {target}")
    assert not broken, "links to files not in the repository:\n" + "\n".join(broken)


def test_every_docs_path_the_code_names_is_tracked():
    tracked = tracked_files()
    broken = []
    for name in sorted(n for n in tracked if Path(n).suffix in CODE_SUFFIXES and n != "tests/test_links.py"):
        for cited in DOCS_PATH.findall((ROOT / name).read_text(encoding="utf-8", errors="replace")):
            if not _resolves(cited, tracked):
                broken.append(f"{name}: {cited}")
    assert not broken, "docs/ paths named in the code but not in the repository:\n" + "\n".join(sorted(set(broken)))
