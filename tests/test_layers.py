"""The layers show in the imports: the kernel library never imports the pipeline, and the pipeline's
stages import only stages upstream of them (data -> teacher -> clarid -> distill -> evaluate -> demo -> cli)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("data", "teacher", "clarid", "distill", "evaluate", "demo", "cli")  # the order the data flows
# helpers any stage may use; they import no stage
SHARED = (
    "options",
    "files",
    "rundir",
    "runtime",
    "distributed",
    "assets",
)


def imported_modules(source: str) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {m for m in modules if m.startswith("clarep_fast")}


def pipeline_part(module: str) -> str | None:
    """'clarep_fast.pipeline.clarid.search' -> 'clarid'; None outside the pipeline."""
    parts = module.split(".")
    if parts[:2] != ["clarep_fast", "pipeline"] or len(parts) < 3:
        return None if parts[:2] != ["clarep_fast", "pipeline"] else "pipeline"
    return parts[2]


def violations(files: dict[str, str]) -> list[str]:
    """files: module name of the importer -> its source. Each broken rule, as a sentence."""
    found = []
    for importer, source in files.items():
        own = pipeline_part(importer)
        reported = set()
        for module in sorted(imported_modules(source)):
            target = pipeline_part(module)
            if target is None or target == own or target in reported:
                continue
            reported.add(target)
            if own is None:
                found.append(f"{importer} (kernel library) imports the pipeline: {module}")
            elif own in SHARED and target in STAGES:
                found.append(f"{importer} (shared helper) imports the stage {target}: {module}")
            elif own in STAGES and target in STAGES and STAGES.index(target) > STAGES.index(own):
                found.append(f"{importer} (stage {own}) imports the downstream stage {target}: {module}")
    return found


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] == "kernels":
        parts = ["clarep_fast", "kernels"] + parts[1:]
    return ".".join(p for p in parts if p != "__init__")


def test_the_tree_keeps_its_layers():
    files = {
        module_name(path): path.read_text()
        for folder in ("clarep_fast", "kernels")
        for path in (ROOT / folder).rglob("*.py")
    }
    assert len(files) > 30
    assert violations(files) == []


def test_every_pipeline_package_is_a_stage_or_a_shared_helper():
    parts = {
        path.stem if path.is_file() else path.name
        for path in (ROOT / "clarep_fast" / "pipeline").iterdir()
        if path.name not in ("__init__.py", "__pycache__")
    }
    assert parts <= set(STAGES) | set(SHARED), f"place {sorted(parts - set(STAGES) - set(SHARED))} in the stage order"


def test_the_check_finds_each_kind_of_violation():
    found = violations({
        "clarep_fast.ops.cka": "from clarep_fast.pipeline.rundir import write_json",
        "clarep_fast.pipeline.rundir": "import clarep_fast.pipeline.clarid.bank",
        "clarep_fast.pipeline.clarid.search": "from clarep_fast.pipeline.distill import train",
        "clarep_fast.pipeline.distill.train": "from clarep_fast.pipeline.clarid.bank import load_bank",  # upstream: fine
    })  # fmt: skip
    assert (
        len(found) == 3
        and "kernel library" in found[0]
        and "shared helper" in found[1]
        and "downstream stage distill" in found[2]
    )
