"""``--format github``: GitHub Actions annotations plus a Markdown job summary.

Standard output gets one workflow command per finding, errors first (the grouped order of the
text report; GitHub shows only the first few annotations of each kind per step)::

    ::error file=PATH,title=CODE name::MESSAGE%0Aservice ..., real server ...%0Aframes PATH#45%0Afix: ...
    ::warning file=...
    ::notice file=...

``error``/``warning``/``info`` map to ``::error``/``::warning``/``::notice``.  ``file`` is the
input trace of the finding's first frame (left out when the finding has no frame or the input is
stdin).  The message is the finding's message, then a line with where it is, a line with its frames,
the expected/observed values, the occurrences and the fix.  Escaping follows GitHub's rules: in the message ``%``,
``\\r`` and ``\\n`` become ``%25``, ``%0D``, ``%0A``; in property values ``:`` and ``,`` also become
``%3A`` and ``%2C``.  No text from a capture can therefore start a workflow command of its own.

The job summary is :func:`lvs_inspect.report.markdown.render` of the same result.  This module only
builds text; :func:`outputs` returns both parts and the CLI appends the summary to the file
``$GITHUB_STEP_SUMMARY`` names, when it is set (:func:`append_step_summary`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from ..checks.finding import AuditResult, Finding, Severity
from . import markdown
from .text import clean, frames_text, input_path, kv_text, ordered, where_text

COMMANDS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(s: str) -> str:
    return escape_data(s).replace(":", "%3A").replace(",", "%2C")


def command(result: AuditResult, f: Finding) -> str:
    props = []
    if f.frames:
        path = input_path(result, f.frames[0].input)
        if path != "-":
            props.append("file=" + escape_property(clean(path, newlines=False)))
    props.append("title=" + escape_property(clean(f"{f.code} {f.name}", newlines=False)))
    lines = [f.message.strip()]
    if where_text(f):
        lines.append(where_text(f))
    if f.frames:
        lines.append("frames " + frames_text(result, f.frames))
    if f.expected:
        lines.append("expected " + kv_text(f.expected))
    if f.observed:
        lines.append("observed " + kv_text(f.observed))
    if f.count > 1:
        lines.append(f"occurrences {f.count:,}")
    if f.fix and f.fix.strip():
        lines.append("fix: " + f.fix.strip("\n"))
    message = clean("\n".join(lines))
    return f"::{COMMANDS[Severity(f.severity)]} {','.join(props)}::{escape_data(message)}"


def render(result: AuditResult) -> str:
    """The annotations (what ``--format github`` prints on standard output)."""
    return "".join(command(result, f) + "\n" for f in ordered(result.findings))


@dataclass(frozen=True)
class GithubOutput:
    annotations: str      # for standard output
    summary: str          # Markdown for $GITHUB_STEP_SUMMARY


def outputs(result: AuditResult) -> GithubOutput:
    return GithubOutput(render(result), markdown.render(result))


def append_step_summary(summary: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Append ``summary`` to the file ``$GITHUB_STEP_SUMMARY`` names; returns that path, or None
    when the variable is unset or empty (not running in GitHub Actions)."""
    env = os.environ if environ is None else environ
    path = env.get("GITHUB_STEP_SUMMARY")
    if not path:
        return None
    with open(path, "a", encoding="utf-8", errors="surrogateescape") as fh:
        fh.write(summary)
    return path
