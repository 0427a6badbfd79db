"""What the command line's help, the params check, the Snakefile and the table and figure jobs import stays free of
torch: each of them would otherwise pay its start-up (about 2 s) for nothing."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT

CLI_AND_PARAMS = """
import contextlib, io, sys
from pae.cli import build_parser, main
with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
    build_parser().parse_args(["train", "--help"])
assert main(["check-params", "params/default.yaml", "params/mini.yaml", "params/paper.yaml"]) in (0, 2)
assert main(["methods"]) == 0
from pae.config.pae import SETTINGS_OF          # what workflow/rules/common.smk imports
from pae.methods import method_spec, option_fields, options_for
from pae.params import load_params, validate_params
validate_params(load_params("params/default.yaml"))
import pae.reports.figures, pae.reports.index, pae.reports.tables, pae.reports.summary  # table/figure jobs
import pae.run_folder, pae.selection
import pae.pipeline.dvc_stages, pae.pipeline.plan, pae.pipeline.reproduction  # dvc-yaml, check-reproduction
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


def run_python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_help_params_check_and_report_modules_import_no_torch():
    done = run_python("-c", CLI_AND_PARAMS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def imported_modules(importtime_log: str) -> list[str]:
    """Module names from ``python -X importtime`` output (``import time: self | cumulative | name``)."""
    return [line.split("|")[-1].strip() for line in importtime_log.splitlines() if line.startswith("import time:")]


def test_import_time_of_the_cli_help_names_no_torch():
    """The issue's check: `python -X importtime -m pae.cli --help 2>&1 | grep -c torch` prints 0."""
    done = run_python("-X", "importtime", "-m", "pae.cli", "--help")
    assert done.returncode == 0 and "usage:" in done.stdout
    assert sum("torch" in line for line in (done.stdout + done.stderr).splitlines()) == 0


def test_parsing_the_snakefile_imports_no_torch():
    done = run_python("-X", "importtime", "-m", "snakemake", "reproduce_all", "-n", "--cores", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    modules = imported_modules(done.stderr)
    assert "pae.params" in modules  # the Snakefile was parsed in this process
    assert not [m for m in modules if m == "torch" or m.startswith("torch.")]
