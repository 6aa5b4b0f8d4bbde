"""Which teacher label conditions each class of the data.

    teacher_labels(data_classes, teacher)                   by name, or by count
    teacher_labels(data_classes, teacher, read_class_map(F))  through a mapping file (--class-map)

By name when the teacher has names (its checkpoint's id2label) and the data's class names are
among them: the data may be a subset of the teacher's classes (10 ImageNet classes of DiT-XL/2's
1,000). An id2label entry such as "tench, Tinca tinca" answers to the whole string and to each of
its comma-separated names. By count when the teacher has no names: data class i is label i, and
the counts must agree. Names that do not match are refused with both sides named: ImageNet folders
are named by WordNet id (n01440764) while id2label holds words, and a guess would condition every
CLARep on the wrong class; a mapping file says it instead.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_class_map(path: str | Path) -> dict[str, str | int]:
    """A --class-map file: a JSON object {data class: teacher class name or label number}, or lines
    "DATA_CLASS TEACHER CLASS NAME" (split at the first whitespace; blank lines and '#' comments
    skipped), the layout of ImageNet's LOC_synset_mapping.txt ("n01440764 tench, Tinca tinca")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--class-map {path}: no such file")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        try:
            table = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"--class-map {path}: not valid JSON ({error})") from None
        if not all(isinstance(value, (str, int)) and not isinstance(value, bool) for value in table.values()):
            raise ValueError(f"--class-map {path}: every value must be a teacher class name or label number")
        return table
    table = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"--class-map {path}, line {number}: expected 'DATA_CLASS TEACHER_CLASS', got {line!r}")
        if parts[0] in table:
            raise ValueError(f"--class-map {path}, line {number}: {parts[0]!r} is mapped twice")
        table[parts[0]] = parts[1].strip()
    if not table:
        raise ValueError(f"--class-map {path}: no mappings in it")
    return table


def _name_index(names: list[str]) -> dict[str, int]:
    """Every way a teacher class answers: its whole id2label entry and each comma-separated name; a
    name two classes share answers to neither (it would be a guess)."""
    index, shared = {}, set()
    for label, entry in enumerate(names):
        for name in dict.fromkeys([entry.strip()] + [part.strip() for part in entry.split(",")]):
            if name in index and index[name] != label:
                shared.add(name)
            index.setdefault(name, label)
    return {name: label for name, label in index.items() if name not in shared}


def _preview(names) -> str:
    names = list(names)
    return ", ".join(repr(n) for n in names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")


def teacher_labels(
    data_classes: list[str],
    teacher_names: list[str] | None,
    teacher_count: int,
    class_map: dict[str, str | int] | None = None,
) -> list[int]:
    """The teacher label of each data class, in the data's class order (see the module docstring)."""
    if class_map is not None:
        index = _name_index(teacher_names or [])
        labels = []
        for name in data_classes:
            if name not in class_map:
                raise ValueError(f"--class-map has no entry for the data's class {name!r}")
            target = class_map[name]
            if isinstance(target, int) and 0 <= target < teacher_count:
                labels.append(target)
            elif isinstance(target, str) and target.strip() in index:
                labels.append(index[target.strip()])
            elif isinstance(target, str) and target.strip().isdigit() and int(target) < teacher_count:
                labels.append(int(target))
            else:
                known = f"its names: {_preview(teacher_names)}" if teacher_names else "it has no class names"
                raise ValueError(
                    f"--class-map maps {name!r} to {target!r}, which is not a class of the teacher "
                    f"(labels 0..{teacher_count - 1}; {known})"
                )
    elif teacher_names is not None:
        index = _name_index(teacher_names)
        missing = [name for name in data_classes if name not in index]
        if missing:
            raise ValueError(
                f"the data's classes {_preview(data_classes)} are not among the teacher's id2label names "
                f"{_preview(teacher_names)}: {len(missing)} have no match (first: {missing[0]!r}); pass "
                f"--class-map FILE with lines 'DATA_CLASS TEACHER_CLASS' (ImageNet: LOC_synset_mapping.txt)"
            )
        labels = [index[name] for name in data_classes]
    else:
        if len(data_classes) != teacher_count:
            raise ValueError(
                f"the teacher knows {teacher_count} classes but the data has {len(data_classes)} "
                f"({_preview(data_classes)}); a teacher without class names (id2label) is matched by count"
            )
        labels = list(range(teacher_count))
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        twins = [name for name, label in zip(data_classes, labels) if label == repeated[0]]
        raise ValueError(f"the data's classes {twins} would all be the teacher's class {repeated[0]}")
    return labels
