"""Every import of our own code resolves, the lazy ones inside functions included.

Lazy imports keep the CLI and the table jobs free of torch, but nothing checks them until the function runs: a
renamed function once broke the GPU check's table step (`from pae.reports.tables import write_table`) and only the
last CI step noticed. This test reads every such import in src/ and benchmarks/ and looks the name up. (The
workflow's .smk files import at their top, so parsing the Snakefile, as tests/test_torch_free.py does, checks them.)
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

from .conftest import ROOT

SOURCES = sorted([*(ROOT / "src").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")])


def package_of(path: Path) -> str:
    """The dotted package a file under src/ belongs to (for its relative imports)."""
    return ".".join(path.relative_to(ROOT / "src").parent.parts)


def pae_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name) for each `from pae... import name` and `import pae...`, relative ones made absolute."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = importlib.util.resolve_name("." * node.level + module, package_of(path))
            if module == "pae" or module.startswith("pae."):
                found += [(node.lineno, module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names if a.name == "pae" or a.name.startswith("pae.")]
    return found


def test_the_scan_sees_lazy_and_relative_imports():
    grid = pae_imports(ROOT / "benchmarks" / "device_grid.py")
    assert any(name == "write_table" for _, _, name in grid)  # the lazy one inside tables()
    cli = pae_imports(ROOT / "src" / "pae" / "cli.py")
    assert any(module == "pae.reports.summary" for _, module, _ in cli)  # `from .reports.summary import ...`


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_pae_import_names_something_that_exists(path):
    missing = []
    for line, module, name in pae_imports(path):
        try:
            target = importlib.import_module(module)
        except ModuleNotFoundError:
            missing.append(f"line {line}: no module {module}")
            continue
        if name is not None and not hasattr(target, name):
            try:  # `from pae import submodule` names a module not yet imported
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"line {line}: from {module} import {name}")
    assert not missing, f"{path.relative_to(ROOT)}: " + "; ".join(missing)
