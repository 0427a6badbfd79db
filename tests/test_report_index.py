"""The report index opens with the experiment's scope and carries the init diagnosis; the committed default report
is such an index."""

from __future__ import annotations

import re
from pathlib import Path

from pae.reports.index import index_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_the_index_opens_with_the_scope_and_inlines_the_diagnosis(tmp_path):
    (tmp_path / "init_diagnosis.md").write_text("## Epoch-0 diagnosis\n\nMPA prompts take 1% of attention.\n")
    text = index_markdown(tmp_path, "x", {"scope": "A smoke test.\n", "run": {}})
    assert text.splitlines()[:5] == ["# Report: x", "", "## Scope", "", "A smoke test."]
    diagnosis = text[text.index("## Why PAE's init starts where it does") :]
    assert "### Epoch-0 diagnosis" in diagnosis and "MPA prompts take 1% of attention." in diagnosis
    assert "![init_diagnosis](init_diagnosis.png)" in diagnosis


def test_the_committed_default_report_states_its_scope_and_the_init_diagnosis_with_numbers():
    text = (ROOT / "reports/default/README.md").read_text()
    assert text.splitlines()[2] == "## Scope" and "smoke test" in text[:600]
    diagnosis = text[text.index("## Why PAE's init starts where it does") :]
    assert re.search(r"take \d+% of \[CLS\]'s attention", diagnosis)  # measured shares, not prose
    assert (ROOT / "reports/default/init_diagnosis.json").is_file()
