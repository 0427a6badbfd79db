"""Which source files can change which job's output: the code inputs of the Snakemake rules and the DVC stages.

Read from the package's imports (the Python AST, no import runs), so the lists follow the code. A method's files
are the modules under ``pae/methods`` and ``pae/prompts`` that its registering file imports, directly or not
(VFPT's reach VPT's, whose options it extends). Every other module of the package is shared by every job, except
the report code, which only tables and figures read. An edit to ``prompts/ivpt.py`` thus reruns the iVPT jobs,
one to ``methods/vpt.py`` every method built on VPT's options, one under ``reports/`` no job at all.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # src/pae
METHOD_DIRS = ("methods", "prompts")  # where method-specific modules live
REGISTRY_FILES = {"methods/__init__.py", "methods/registry.py", "prompts/__init__.py"}  # shared by every method
REGISTRATIONS = "methods/__init__.py"  # imports every method file, to register it


def module_path(name: str) -> Path | None:
    """The file of module ``pae.x.y`` inside the package, or None for a module outside it."""
    parts = name.split(".")
    if parts[0] != "pae":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """The package modules ``path`` imports anywhere (function-level imports too: method files import torch code
    lazily), resolving relative imports."""
    package = ".".join(("pae", *path.relative_to(PACKAGE).parent.parts))
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]  # `from . import vpt` is a module
        else:
            continue
        found.update(p for p in map(module_path, names) if p is not None and p != path)
    return found


def closure(start: Iterable[Path], follow: Callable[[Path, Path], bool] = lambda importer, dep: True) -> set[Path]:
    """Every module reachable from ``start`` through the imports ``follow(importer, imported)`` accepts."""
    seen, todo = set(start), list(start)
    while todo:
        importer = todo.pop()
        for dep in imported_files(importer):
            if dep not in seen and follow(importer, dep):
                seen.add(dep)
                todo.append(dep)
    return seen


def relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


@dataclass(frozen=True)
class CodeInputs:
    """The code lists of the pipeline, as paths relative to the repository root (``src/pae/...``)."""

    shared: tuple[str, ...]  # every job's: data, backbone, MPA, training loop, registry
    report: tuple[str, ...]  # the tables' and figures' (with the CLI that runs them)
    backbone: tuple[str, ...]  # the backbone import's
    per_method: dict[str, tuple[str, ...]]  # method -> its own modules

    def job(self, method: str | None = None) -> list[str]:
        """A job's code inputs: the shared code, and with a method its modules."""
        return sorted({*self.shared, *(self.per_method[method] if method else ())})


def _is_method_module(path: Path) -> bool:
    rel = relative(path)
    return rel.split("/")[0] in METHOD_DIRS and rel not in REGISTRY_FILES


@cache
def code_inputs() -> CodeInputs:
    """The pipeline's code lists, computed once per process from the package's imports and the method registry."""
    from ..methods import METHODS

    every = sorted(PACKAGE.rglob("*.py"))
    report = [p for p in every if relative(p).startswith("reports/")]
    # The DAG's own code (this package) reaches a job only through the job's command and params, which Snakemake
    # compares itself: it is nobody's input.
    dag = [p for p in every if relative(p).startswith("pipeline/")]
    candidates = [p for p in every if p not in report + dag and not _is_method_module(p)]
    # The shared code and what it imports, except the registry's imports of the method files: importing a method's
    # file registers it; it does not make that method's code run in another method's job.
    shared = closure(candidates, follow=lambda importer, dep: relative(importer) != REGISTRATIONS)
    shared -= {*report, *dag}
    # The importer's own closure; it reaches the registry through the config, never a method's modules.
    backbone = closure(
        [p for p in every if relative(p).startswith("backbones/")],
        follow=lambda importer, dep: not _is_method_module(dep),
    )
    root = PACKAGE.parents[1]
    per_method = {}
    for name, spec in METHODS.items():
        source = Path(sys.modules[spec.build.__module__].__file__).resolve()
        if source.is_relative_to(PACKAGE):
            own = {p for p in closure([source]) if _is_method_module(p)} - shared
        else:  # a plugin's method: its own file
            own = {source}
        per_method[name] = tuple(sorted(_repo_path(p, root) for p in own))
    report_files = [*report, PACKAGE / "cli.py"]
    return CodeInputs(
        *(tuple(sorted(_repo_path(p, root) for p in files)) for files in (shared, report_files, backbone)), per_method
    )


def _repo_path(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
