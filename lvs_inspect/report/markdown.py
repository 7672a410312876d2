"""``--format markdown``: the audit as GitHub-flavoured Markdown (also the GitHub job summary).

Layout: a heading with the per-severity counts; a table of the inputs with their frame
accounting (and a total row when there are several), damage notes; one line with connections,
the split by real server, the director's bytes and the topology source; a table of findings by
severity and rule (severity, code, name, title, count); then the details, rule by rule in the same
order: title, and for each finding its message, a two-column table of where it is (service, real
server, MAC, connection, frames as ``PATH#FRAME``, expected, observed, occurrences), and the fix in a
fenced block (once, under the rule's title, when all its findings share it).

At most :data:`MAX_DETAILS_PER_RULE` findings are detailed per rule (a line says how many more the
json report has): GitHub caps a step summary at 1 MiB.  Text from the inputs is escaped so it
cannot open links, HTML, math or tables; control characters are written as ``\\xNN``.
"""
from __future__ import annotations

import re

from ..checks.finding import AuditResult, Finding
from .text import (MAX_FRAMES_SHOWN, clean, common_fix, counts_phrase, frame_label, grouped, kv_text,
                   where_items)

MAX_DETAILS_PER_RULE = 50

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&#$])")


def md(text: object) -> str:
    """Inline Markdown text: special characters backslash-escaped, newlines as ``<br>``."""
    s = _MD_SPECIAL.sub(r"\\\1", clean(text).strip())
    return s.replace("\n", "<br>")


def code(text: object) -> str:
    """An inline code span holding ``text`` literally (on one line)."""
    s = clean(text).replace("\n", " ")
    if not s:
        return ""
    longest = max((len(m) for m in re.findall("`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or (s.startswith(" ") and s.endswith(" ")) else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def cell(s: str) -> str:
    """Make an already rendered inline fragment safe inside a table cell."""
    return re.sub(r"(?<!\\)\|", r"\\|", s)


def fenced(text: str, info: str = "text") -> list[str]:
    body = clean(text).strip("\n")
    longest = max((len(m) for m in re.findall("`{3,}", body)), default=2)
    fence = "`" * (longest + 1)
    return [fence + info, *body.split("\n"), fence]


def _table(header: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return out


def _finding_table(result: AuditResult, f: Finding) -> list[str]:
    rows = [[label, code(value)] for label, value in where_items(f)]
    if f.frames:
        shown = f.frames[:MAX_FRAMES_SHOWN]
        text = ", ".join(code(frame_label(result, r)) for r in shown)
        if len(f.frames) > len(shown):
            text += f" (+{len(f.frames) - len(shown):,} more)"
        rows.append(["frames", text])
    if f.expected:
        rows.append(["expected", code(kv_text(f.expected))])
    if f.observed:
        rows.append(["observed", code(kv_text(f.observed))])
    if f.count > 1:
        rows.append(["occurrences", f"{f.count:,}"])
    if not rows:
        return []
    return _table(["field", "value"], ["---", "---"], rows)


def render(result: AuditResult) -> str:
    out: list[str] = [f"## lvs-inspect audit: {counts_phrase(result)}", ""]

    rows = []
    for i in result.inputs:
        rows.append([code(i.path), f"{i.frames:,}", f"{i.decoded:,}", f"{i.ignored:,}", f"{i.undecodable:,}",
                     f"{i.truncated:,}", ", ".join(code(n) for n in i.interfaces)])
    if len(result.inputs) > 1:
        tot = [sum(getattr(i, k) for i in result.inputs)
               for k in ("frames", "decoded", "ignored", "undecodable", "truncated")]
        rows.append(["**total**", *(f"{n:,}" for n in tot), ""])
    out += _table(["input", "frames", "decoded", "ignored", "undecodable", "truncated", "interfaces"],
                  ["---", "---:", "---:", "---:", "---:", "---:", "---"], rows)
    damaged = [i for i in result.inputs if i.damage]
    if damaged:
        out.append("")
        for i in damaged:
            out.append(f"**Damage in {code(i.path)}**, the audit did not see these parts of the file:")
            out.append("")
            shown = i.damage[:MAX_DETAILS_PER_RULE]
            out += [f"- byte {d.get('offset', '?')}: {md(d.get('message', ''))}" for d in shown]
            if len(i.damage) > len(shown):
                out.append(f"- … {len(i.damage) - len(shown):,} more in the json report")
            out.append("")
        out.pop()

    s = result.summary
    facts = [f"Connections: **{s.connections:,}** ({s.complete:,} complete, {s.failed:,} failed)"]
    if s.by_real_server:
        facts.append("by real server: " + ", ".join(f"{code(rs)} {n:,}" for rs, n in s.by_real_server.items()))
    if s.director_bytes:
        facts.append(f"director carried {s.director_bytes:,} payload bytes")
    if result.topology:
        facts.append(f"topology: {code(result.topology)}")
    out += ["", " · ".join(facts)]

    if not result.findings:
        out += ["", "No findings."]
        return "\n".join(out) + "\n"

    groups = grouped(result.findings)
    out += ["", "### Findings", ""]
    rows = []
    for sev, rules in groups:
        for c, fs in rules:
            rows.append([f"**{sev}**", code(c), code(fs[0].name), md(fs[0].title), f"{len(fs):,}"])
    out += _table(["severity", "rule", "name", "title", "findings"], ["---", "---", "---", "---", "---:"], rows)

    out += ["", "### Details"]
    for sev, rules in groups:
        for c, fs in rules:
            out += ["", f"#### {sev}: {md(c)} {md(fs[0].name)}"]
            if fs[0].title:
                out += ["", md(fs[0].title)]
            docs = next((f.help_uri for f in fs if f.help_uri), None)
            if docs:
                out += ["", f"Documentation: <{clean(docs).replace('>', '%3E').replace(' ', '%20')}>"]
            shared_fix = common_fix(fs)
            if shared_fix is not None:
                out += ["", "Fix:", ""] + fenced(shared_fix)
            shown = fs[:MAX_DETAILS_PER_RULE]
            for n, f in enumerate(shown, 1):
                out += ["", f"**{n}.** {md(f.message)}"]
                table = _finding_table(result, f)
                if table:
                    out += [""] + table
                if shared_fix is None and f.fix and f.fix.strip():
                    out += ["", "Fix:", ""] + fenced(f.fix)
            if len(fs) > len(shown):
                out += ["", f"… {len(fs) - len(shown):,} more {md(c)} findings in the json report."]
    return "\n".join(out) + "\n"
