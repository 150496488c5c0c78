"""docs/ci.md: its workflow parses and says what the CLI does (exit codes, report files)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from imgcompress import cli

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "ci.md"


def test_exit_codes_table_matches_the_cli() -> None:
    rows = dict(re.findall(r"^\| (\d+) \| ([^|]+) \|", DOC.read_text(encoding="utf-8"), flags=re.M))
    assert rows[str(cli.EXIT_PASSED)].startswith("the gate passed")
    assert rows[str(cli.EXIT_GATE_FAILED)].startswith("the gate failed")
    assert rows[str(cli.EXIT_BAD_INPUT)].startswith("bad input")
    assert rows[str(cli.EXIT_INTERNAL)].startswith("internal error")


def test_workflow_applies_summarises_uploads_and_fails_on_the_gate() -> None:
    block = re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)[0]
    steps = yaml.safe_load(block)["jobs"]["compress"]["steps"]
    run = next(s for s in steps if "imgcompress apply" in s.get("run", ""))
    assert 'exit "$code"' in run["run"]  # the step's exit status is apply's
    summary = next(s for s in steps if "GITHUB_STEP_SUMMARY" in s.get("run", ""))
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert "report.md" in summary["run"] and "report.html" in upload["with"]["path"]
    assert summary["if"] == upload["if"] == "${{ !cancelled() }}"  # also after a failed gate
    assert steps.index(run) < steps.index(summary) < steps.index(upload)
