"""Documentation generated from rule files: ``lvs-inspect rules [CODE]``.

``render_rule(rule)`` prints one rule the way a reviewer reads it (like ``ruff rule CODE``);
``render_index(rules)`` lists them all; ``render_namespace(scope, ns)`` lists the names a
scope offers to rule authors. Plain text, no colour, lines wrapped at 88 columns.
"""
from __future__ import annotations

import textwrap
from typing import Sequence

from .expr import FUNCTIONS, Namespace
from .rules import Rule

WIDTH = 88
_IND = "    "

_SCOPE_TEXT = {
    "packet": "one row per packet",
    "pair": "one row per packet seen entering the director and leaving it",
    "connection": "one row per connection",
    "arp": "one row per ARP frame",
    "service": "one row per service and real server",
}


def _wrap(text: str, indent: str = _IND) -> str:
    """Wrap each line of ``text`` on its own (keeps the line breaks of literal blocks)."""
    out = []
    for line in text.rstrip().split("\n"):
        if not line.strip():
            out.append("")
            continue
        lead = line[:len(line) - len(line.lstrip())]
        if len(indent + line) <= WIDTH:
            out.append(indent + line)
        else:
            out.extend(textwrap.wrap(line.strip(), WIDTH, initial_indent=indent + lead,
                                     subsequent_indent=indent + lead, break_long_words=False,
                                     break_on_hyphens=False))
    return "\n".join(out)


def _section(title: str, body: str) -> str:
    return f"{title}\n{body}\n"


def _shown_path(path: str) -> str:
    """A rule file's path as a reader finds it: inside the shipped pack as ``rules/...``,
    under the working directory relative to it, elsewhere as given."""
    from pathlib import Path

    from ..resources import rules_dir
    p = Path(path)
    for base, prefix in ((rules_dir(), "rules"), (Path.cwd(), "")):
        try:
            rel = p.resolve().relative_to(base.resolve())
        except (ValueError, OSError):
            continue
        return str(Path(prefix) / rel) if prefix else str(rel)
    return path


def render_rule(rule: Rule) -> str:
    """The documentation of one rule."""
    head = f"{rule.code} {rule.name}"
    lines = [head, "=" * len(head), rule.title, ""]
    if rule.status == "deprecated":
        lines += ["This rule is deprecated: it is kept so that its code is never reused, and it",
                  "runs only when selected by its code.", ""]
    elif rule.status == "preview":
        lines += ["This rule is in preview: its checks and messages may still change.", ""]
    facts = [
        ("severity", str(rule.severity)),
        ("status", rule.status),
        ("modes", ", ".join(rule.modes)),
        ("scope", f"{rule.scope} ({_SCOPE_TEXT.get(rule.scope, rule.scope)})"),
    ]
    if rule.legs:
        facts.append(("legs", (" -> ".join(rule.legs) + " (in, out)") if rule.scope == "pair"
                      else ", ".join(rule.legs)))
    facts.append(("profiles", ", ".join(rule.profiles) if rule.profiles else "all"))
    facts.append(("defined in", f"{_shown_path(rule.path)} line {rule.line}"))
    w = max(len(k) for k, _ in facts)
    lines += [f"{k + ':':<{w + 1}} {v}" for k, v in facts]
    lines.append("")
    out = "\n".join(lines) + "\n"

    what = [_hang("select: ", _flat(rule.select.text) if rule.select is not None else "every row")]
    if rule.assertion is not None:
        what.append(_hang("assert: ", _flat(rule.assertion.text)))
        what.append(f"{_IND}It reports each row where select holds and assert does not.")
    else:
        what.append(f"{_IND}It reports each row where select holds.")
    out += _section("What it checks", "\n".join(what))
    out += "\n" + _section("Message", _wrap(rule.message.text))
    if rule.expected or rule.observed:
        vals = []
        for label, e in rule.expected.items():
            vals.append(f"{_IND}expected {label}: {_flat(e.text)}")
        for label, e in rule.observed.items():
            vals.append(f"{_IND}observed {label}: {_flat(e.text)}")
        out += "\n" + _section("Values reported", "\n".join(vals))
    out += "\n" + _section("Why it matters", _wrap(rule.why))
    if rule.fix is not None:
        out += "\n" + _section("How to fix", _wrap(rule.fix.text))
    if rule.falsepositives:
        out += "\n" + _section("False positives", "\n".join(_wrap("- " + x) for x in rule.falsepositives))
    if rule.references:
        out += "\n" + _section("References", "\n".join(_wrap("- " + x) for x in rule.references))
    if rule.tests.fires or rule.tests.quiet:
        fx = []
        if rule.tests.fires:
            fx.append(_IND + "fires on: " + ", ".join(
                f.name if f.count is None else f"{f.name} ({f.count}x)" for f in rule.tests.fires))
        if rule.tests.quiet:
            fx.append(_IND + "quiet on: " + ", ".join(rule.tests.quiet))
        out += "\n" + _section("Fixtures", "\n".join(fx))
    return out


def _hang(label: str, text: str) -> str:
    """``    label: text`` with continuation lines aligned after the label."""
    return "\n".join(textwrap.wrap(text, WIDTH, initial_indent=_IND + label,
                                   subsequent_indent=_IND + " " * len(label),
                                   break_long_words=False, break_on_hyphens=False))


def _flat(text: str) -> str:
    return " ".join(text.split())


def render_index(rules: Sequence[Rule]) -> str:
    """One line per rule: code, name, severity, status, modes, title."""
    if not rules:
        return "no rules\n"
    rows = [("CODE", "NAME", "SEVERITY", "STATUS", "MODES", "TITLE")]
    for r in sorted(rules, key=lambda r: r.code):
        rows.append((r.code, r.name, str(r.severity), r.status, ",".join(r.modes), r.title))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(f"{c:<{widths[i]}}" for i, c in enumerate(row[:5])) + "  " + row[5] for row in rows]
    counts: dict[str, int] = {}
    for r in rules:
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines.append("")
    lines.append(f"{len(rules)} rules ({summary}); `lvs-inspect rules CODE` shows one.")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def render_namespace(scope: str, ns: Namespace) -> str:
    """The names a scope offers to expressions, with their kinds, and the functions."""
    lines = [f"names of the {scope} scope" + (f" ({ns.title})" if ns.title else ""), ""]
    w = max((len(n) for n in ns), default=0)
    for name in sorted(ns):
        var = ns[name]
        kind = str(var.kind)
        doc = f"  {var.doc}" if var.doc else ""
        absent = f" (absent when {var.absent!r})" if var.absent is not None else ""
        lines.append(f"{_IND}{name:<{w}}  {kind}{absent}{doc}")
    lines += ["", "functions", ""] + [f"{_IND}{d}" for d in FUNCTIONS.values()]
    return "\n".join(lines) + "\n"
