"""The VTAB-1k image-folder layout (the common "vtab-1k" release; ``../shared/data/vtab-mini`` uses it).

``<task>/{train800,val200,train800val200,test}.txt`` with lines ``<relative path> <label>``, and
optionally ``classes.txt`` (one name per line, label = line number).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import PaeError

SPLITS = ("train800", "val200", "train800val200", "test")


def read_split(root: str | Path, split: str) -> tuple[list[Path], list[int], list[str]]:
    """Files, labels and class names of one split, with every line checked."""
    root = Path(root)
    if not root.is_dir():
        raise PaeError(
            f"VTAB-1k task folder '{root}' does not exist.",
            "set data.root to a folder holding train800.txt, val200.txt, train800val200.txt and test.txt.",
        )
    entries = _parse(root, split)
    files, labels = [f for f, _ in entries], [y for _, y in entries]
    classes = _class_names(root, labels)
    bad = next(((i, y) for i, y in enumerate(labels) if not 0 <= y < len(classes)), None)
    if bad is not None:
        raise PaeError(
            f"{root / f'{split}.txt'}: label {bad[1]} of '{files[bad[0]].name}' is outside 0..{len(classes) - 1} "
            f"(classes.txt has {len(classes)} classes).",
            "fix the label or add the class to classes.txt.",
        )
    return files, labels, classes


def _parse(root: Path, split: str) -> list[tuple[Path, int]]:
    """(image path, label) per line of ``<split>.txt``; each malformed or repeated line is named."""
    list_file = root / f"{split}.txt"
    if not list_file.is_file():
        raise PaeError(
            f"split file '{list_file}' is missing.", f"add {split}.txt (lines '<image path> <label>') to '{root}'."
        )
    entries: list[tuple[Path, int]] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise PaeError(
                f"{list_file}:{lineno}: expected '<image path> <integer label>', got {line!r}.",
                "fix or delete that line.",
            )
        if parts[0] in seen:
            raise PaeError(
                f"{list_file}:{lineno}: '{parts[0]}' is listed twice (first on line {seen[parts[0]]}).",
                "delete the duplicate line.",
            )
        seen[parts[0]] = lineno
        entries.append((root / parts[0], int(parts[1])))
    if not entries:
        raise PaeError(f"split file '{list_file}' lists no images.", "regenerate the split file.")
    return entries


def _class_names(root: Path, labels: list[int]) -> list[str]:
    names_file = root / "classes.txt"
    if names_file.is_file():
        return [n.strip() for n in names_file.read_text().splitlines() if n.strip()]
    # No classes.txt (as in the original vtab-1k release): the label set is the union over all splits.
    top = max([*labels, *(y for s in SPLITS if (root / f"{s}.txt").is_file() for _, y in _parse(root, s))])
    return [str(i) for i in range(top + 1)]
