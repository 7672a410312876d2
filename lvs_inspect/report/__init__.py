"""Renderers: text, JSON and the other report formats, for people and for CI.

Every format is a pure function of an :class:`~lvs_inspect.checks.finding.AuditResult`:
deterministic, byte-for-byte stable (golden tests in tests/test_report_golden.py).

    render(result, "sarif")            -> str
    exit_code(result, fail_on="error") -> 0 | 1

``github`` renders the annotations for standard output; the Markdown job summary that goes with
them is :func:`lvs_inspect.report.github.outputs` (or ``render(result, "markdown")``), which the
CLI appends to ``$GITHUB_STEP_SUMMARY`` with :func:`lvs_inspect.report.github.append_step_summary`.
"""
from __future__ import annotations

from importlib import import_module

from ..checks.finding import AuditResult, Severity

#: the values of ``audit --format``
FORMATS = ("text", "json", "jsonl", "junit", "sarif", "github", "markdown")
#: the values of ``--fail-on``
FAIL_ON = ("error", "warning", "info", "never")

_RENDERERS = {
    "json": ("json_report", "render_json"),
    "jsonl": ("json_report", "render_jsonl"),
    "junit": ("junit", "render"),
    "sarif": ("sarif", "render"),
    "github": ("github", "render"),
    "markdown": ("markdown", "render"),
}


def render(result: AuditResult, fmt: str, *, color: bool = False) -> str:
    """The report in format ``fmt`` (one of :data:`FORMATS`). ``color`` only affects ``text``."""
    if fmt == "text":
        from .text import render as render_text
        return render_text(result, color=color)
    try:
        module, func = _RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"unknown report format {fmt!r}: expected one of {', '.join(FORMATS)}") from None
    return getattr(import_module(f"{__name__}.{module}"), func)(result)


def exit_code(result: AuditResult, fail_on: str | Severity = "error") -> int:
    """1 when a finding is at or above ``fail_on`` ("error", "warning", "info"), else 0;
    ``fail_on="never"`` always gives 0.  (Exit status 2, the tool failing, is the CLI's.)"""
    if isinstance(fail_on, Severity):
        threshold = fail_on
    elif fail_on == "never":
        return 0
    elif fail_on in FAIL_ON:
        threshold = Severity.parse(fail_on)
    else:
        raise ValueError(f"unknown --fail-on level {fail_on!r}: expected one of {', '.join(FAIL_ON)}")
    return int(any(f.severity >= threshold for f in result.findings))
