"""Regenerate the performance tables in the docs from the stored results.

    python benchmarks/readme.py

docs/benchmarks.md gets every ``benchmarks/results/**/*.md`` written by benchmarks/run.py (and the
CLARID-vs-Park tables), in order; the README gets the headline rows only (HEADLINE). Both go
between the ``<!-- benchmarks:begin`` and ``<!-- benchmarks:end -->`` markers: numbers in the docs
come from result files, never from typing. A result taken on a tree with uncommitted changes says
so in words.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BEGIN = re.compile(r"<!-- benchmarks:begin[^>]*-->")
END = "<!-- benchmarks:end -->"

# README rows: (results table, the row's leading cells). The rest are in docs/benchmarks.md.
HEADLINE = {
    "cpu.md": ("| cka | n=512 d=65536 pairs=1 | x+y |", "| cka_pairs | n=512 d=65536 pairs=4 | x+y |", "| feature_tap | B=256 ",
               "| feature_align | B=1024 D=16384+4096+1024 | cosine", "| project_out | B=256 N=4096 k=64 V rows | x grad",
               "| clarep_search |", "| cadistill_step |", "| evaluate_step |"),
    "h200/cuda-quick.md": ("| cka | n=512 d=65536 pairs=1 | x+y | float32", "| cka | n=512 d=65536 pairs=1 | x only | float32",
                           "| cka | n=512 d=65536 pairs=1 | x+y | bfloat16"),
}  # fmt: skip


def _plain(text: str) -> str:
    return re.sub(r"git (\w+)\+dirty", r"git \1 with uncommitted changes", text)


def _tables() -> list[Path]:
    return sorted(RESULTS.rglob("*.md"))


def full_section(link_root: Path) -> str:
    sections = []
    for table in _tables():
        relative = table.relative_to(ROOT)
        picture = table.with_suffix(".png")
        shown = (
            f"\n![{relative.stem}]({Path('..') / picture.relative_to(ROOT) if link_root != ROOT else picture.relative_to(ROOT)})\n"
            if picture.exists()
            else ""
        )
        sections.append(
            f"**{relative.parent.name}/{relative.stem}** (from `{relative}`)\n\n{_plain(table.read_text().strip())}\n{shown}"
        )
    return "\n".join(sections) if sections else "No results yet: run `python benchmarks/run.py`.\n"


def headline_section() -> str:
    sections = []
    for name, prefixes in HEADLINE.items():
        table = RESULTS / name
        if not table.exists():
            continue
        lines = _plain(table.read_text()).strip().splitlines()
        header_at = next(i for i, line in enumerate(lines) if line.startswith("| op |"))
        device = lines[0].split(";")[0]
        rows = [line for line in lines[header_at + 2 :] if line.startswith(prefixes)]
        sections.append(
            f"{device} (`benchmarks/results/{name}`):\n\n" + "\n".join(lines[header_at : header_at + 2] + rows) + "\n"
        )
    return "\n".join(sections)


def _replace_between_markers(path: Path, body: str) -> None:
    text = path.read_text()
    begin = BEGIN.search(text)
    end = text.find(END)
    if begin is None or end < begin.end():
        raise SystemExit(f"{path.name} lacks the markers '<!-- benchmarks:begin ... -->' and '{END}'")
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text[: begin.end()] + "\n" + body + text[end:])
    temporary.replace(path)


def main() -> None:
    _replace_between_markers(ROOT / "README.md", headline_section())
    _replace_between_markers(ROOT / "docs" / "benchmarks.md", full_section(ROOT / "docs"))
    print(
        f"README.md (headline rows) and docs/benchmarks.md ({len(_tables())} tables) regenerated from benchmarks/results/"
    )


if __name__ == "__main__":
    main()
