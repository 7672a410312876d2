"""Golden tests of real audits, end to end through the command line: the trace is read, stitched
and checked, and the report in every format is compared byte for byte with
tests/golden/audit-<fixture>.<ext>, with the exit status of every --fail-on level.

Fixtures: a healthy real-kernel lab capture (no findings), a synthetic DR ARP leak (errors) and the
hand-built FullNAT TOA-room trace (an error and a warning). Paths are given relative to the
repository root, as an operator in a checkout would type them.

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_audit_golden.py     # after an intended change
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lvs_inspect.cli import main
from lvs_inspect.report import FORMATS
from lvs_inspect.report import sarif as sarif_mod

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
EXT = {"text": "txt", "json": "json", "jsonl": "jsonl", "junit": "junit.xml", "sarif": "sarif",
       "github": "github.txt", "markdown": "md"}
CASES = {"lab-nat-http": ("fixtures/engine/lab-nat-http/trace.pcapng", None),
         "dr-arp-leak": ("fixtures/synth/dr-arp-leak/trace.pcapng", "fixtures/synth/dr-arp-leak/topology.toml"),
         "hb-fullnat-toa-room": ("fixtures/engine/hb-fullnat-toa-room/trace.pcapng",
                                 "fixtures/engine/hb-fullnat-toa-room/topology.toml")}


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sarif_mod, "TOOL_VERSION", "0.0.0-golden")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))


def _audit(case: str, tmp_path: Path, *extra: str) -> tuple[int, str]:
    trace, topo = CASES[case]
    out = tmp_path / "report"
    args = ["audit", trace, "-o", str(out), "--no-progress", *extra]
    if topo:
        args += ["-t", topo]
    rc = main(args)
    return rc, out.read_text(encoding="utf-8")


def _check(path: Path, actual: str) -> None:
    if UPDATE:
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 to create it"
    assert actual == path.read_text(encoding="utf-8"), f"{path.name} differs (UPDATE_GOLDEN=1 regenerates it)"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_audit_report_golden(case, fmt, tmp_path):
    rc, text = _audit(case, tmp_path, "--format", fmt, "--fail-on", "never")
    assert rc == 0
    _check(GOLDEN / f"audit-{case}.{EXT[fmt]}", text)


@pytest.mark.parametrize("case", sorted(CASES))
def test_audit_exit_codes_golden(case, tmp_path):
    lines = []
    for level in ("error", "warning", "info", "never"):
        rc, _ = _audit(case, tmp_path, "--format", "json", "--fail-on", level)
        lines.append(f"--fail-on {level}: {rc}\n")
    _check(GOLDEN / f"audit-{case}.exit", "".join(lines))
