"""Regenerate the README's performance section from the stored results tables.

    python benchmarks/readme.py

Takes every ``benchmarks/results/**/*.md`` written by benchmarks/run.py and places them, in order,
between the README's ``<!-- benchmarks:begin`` and ``<!-- benchmarks:end -->`` markers: README numbers
come from result files, never from typing.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"<!-- benchmarks:begin[^>]*-->")
END = "<!-- benchmarks:end -->"


def render() -> str:
    sections = []
    for table in sorted((ROOT / "benchmarks" / "results").rglob("*.md")):
        relative = table.relative_to(ROOT)
        picture = table.with_suffix(".png")
        shown = f"\n![{relative.stem}]({picture.relative_to(ROOT)})\n" if picture.exists() else ""
        sections.append(f"**{relative.parent.name}/{relative.stem}** (from `{relative}`)\n\n{table.read_text().strip()}\n{shown}")
    return "\n".join(sections) if sections else "No results yet: run `python benchmarks/run.py`.\n"


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    begin = BEGIN.search(text)
    end = text.find(END)
    if begin is None or end < begin.end():
        raise SystemExit(f"README.md lacks the markers '<!-- benchmarks:begin ... -->' and '{END}'")
    updated = text[: begin.end()] + "\n" + render() + text[end:]
    temporary = readme.with_name(".README.md.tmp")
    temporary.write_text(updated)
    temporary.replace(readme)
    print(f"README.md: performance section regenerated from {len(list((ROOT / 'benchmarks' / 'results').rglob('*.md')))} table(s)")


if __name__ == "__main__":
    main()
