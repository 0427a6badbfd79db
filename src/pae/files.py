"""Files written whole or not at all, and JSON read with an error that says what to rerun.

A killed job must never leave half a file (or half a run folder) for the next job to trust: everything the
project writes goes through ``atomic_write``, which builds the output beside its place and renames it in.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .errors import PaeError


def _sibling(path: Path, kind: str) -> Path:
    """A hidden name beside ``path``, unique per process (parallel jobs may write the same cache)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{kind}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], None], durable: bool = False) -> Path:
    """Let ``write`` build a file or a folder at a temporary sibling, then swap it in for ``path``.

    ``durable`` fsyncs a file before the rename (training states: a power cut must not leave a renamed but
    empty file). An existing folder is moved aside first, so a reader sees the old folder or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    _remove(tmp)
    try:
        write(tmp)
        if durable and tmp.is_file():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if path.is_dir():
            old = _sibling(path, "old")
            _remove(old)
            path.rename(old)
            tmp.rename(path)
            _remove(old)
        else:
            tmp.replace(path)
    finally:
        _remove(tmp)
    return path


def json_text(record: object) -> str:
    """Indented JSON with NaN and infinities as null (JSON has neither), keys in a stable order."""
    clean = json.loads(json.dumps(record), parse_constant=lambda _: None)
    return json.dumps(clean, indent=2, sort_keys=True) + "\n"


def write_text(text: str, path: str | Path) -> Path:
    """``text`` at ``path``, atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(record: object, path: str | Path) -> Path:
    """``record`` as JSON at ``path``, atomically."""
    return write_text(json_text(record), path)


def read_json(path: str | Path, fix: str) -> dict:
    """A JSON file; a missing or damaged one is a ``PaeError`` naming it, with ``fix`` (e.g. which job to rerun)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PaeError(f"'{path}' cannot be read ({exc}).", fix) from exc


def write_csv(rows: list[dict], path: str | Path, header: list[str] | None = None) -> Path:
    """Rows as CSV, atomically; the header is ``header`` or every key in first-seen order (missing cells empty)."""
    names = header or list(dict.fromkeys(k for row in rows for k in row))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(path, write)
