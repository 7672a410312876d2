"""``--format junit``: JUnit XML for GitLab (``artifacts:reports:junit``) and Jenkins (``junit``).

Mapping (valid against Jenkins' junit-10.xsd, tests/data/schemas/junit-10.xsd):

``<testsuites name="lvs-inspect audit">``
    ``tests``/``failures``/``errors`` are the sums over the suites below.

``<testsuite name="inputs">`` (always first, always present)
    One ``<testcase>`` per input trace, named by its path (``classname="lvs-inspect.inputs"``), with
    the frame accounting and interfaces in ``<system-out>``.  An input with damage notes (parts of
    the file that could not be read, so the audit did not see those frames) gets an ``<error
    type="damage">`` listing them: JUnit's "error" is a test that could not run properly.  The
    suite's ``<properties>`` carry the audit summary (frames, connections, complete, failed, the
    per-severity counts, topology).  A clean audit therefore still reports passing tests, so
    GitLab/Jenkins show "N tests, 0 failures" instead of "no tests".

``<testsuite name="CODE name">`` per rule that produced findings
    Rules ordered by worst severity (errors first), then code; findings in produced order.  Every
    finding is one ``<testcase classname="lvs-inspect.CODE">`` named by where it is (real server,
    connection, MAC or service; ``#N`` appended when two findings of a rule share a name):

    * severity ``error`` and ``warning``: a failing testcase, ``<failure type="error|warning"
      message="MESSAGE">`` whose text holds the details (where, frames as ``PATH#FRAME``, expected,
      observed, occurrences, fix).  Warnings fail too, as linters' JUnit reports do: they are
      findings someone should read; whether CI fails is decided by the exit code (``--fail-on``),
      not by the report.
    * severity ``info``: a passing testcase with the same text in ``<system-out>``.

    A rule that ran and found nothing does not appear: the result model lists findings, not the
    rules that were evaluated.

No ``time``, ``timestamp`` or ``hostname`` attributes: the report is a pure function of the
result, byte-for-byte stable.  Text is escaped for XML; characters XML 1.0 cannot hold (control
characters, unpaired surrogates) are written as ``\\xNN``/``\\uXXXX``.
"""
from __future__ import annotations

import re

from ..checks.finding import AuditResult, Finding, Severity
from .text import (counts_phrase, damage_lines, frames_text, input_accounting, kv_text, rules_of,
                   where_items)

# characters XML 1.0 cannot carry at all, plus the bidi overrides we never want to pass through
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\u202a-\u202e\u2066-\u2069"
                      "\ud800-\udfff\ufffe\uffff]")


def _bad(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def xml_text(s: object) -> str:
    s = _XML_BAD.sub(_bad, "" if s is None else str(s))
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def xml_attr(s: object) -> str:
    return (xml_text(s).replace('"', "&quot;").replace("\n", "&#10;").replace("\t", "&#9;"))


def _attrs(**kw) -> str:
    return "".join(f' {k.rstrip("_")}="{xml_attr(v)}"' for k, v in kw.items() if v is not None)


def _details(result: AuditResult, f: Finding) -> str:
    lines = [f.message.strip()]
    for label, value in where_items(f):
        lines.append(f"{label}: {value}")
    if f.frames:
        lines.append("frames: " + frames_text(result, f.frames, limit=None))
    if f.expected:
        lines.append("expected: " + kv_text(f.expected))
    if f.observed:
        lines.append("observed: " + kv_text(f.observed))
    if f.count > 1:
        lines.append(f"occurrences: {f.count}")
    if f.fix and f.fix.strip():
        lines.append("fix:")
        lines.extend("  " + ln for ln in f.fix.strip("\n").split("\n"))
    if f.help_uri:
        lines.append(f"docs: {f.help_uri}")
    return "\n".join(ln.rstrip() for ln in lines)


def _case_name(f: Finding) -> str:
    """Where the finding is: real server and connection, else the MAC, else the service."""
    items = where_items(f)
    for keep in (("real server", "connection"), ("mac",), ("service",)):
        parts = [f"{k} {v}" for k, v in items if k in keep]
        if parts:
            return ", ".join(parts)
    return f.code


def render(result: AuditResult) -> str:
    suites: list[str] = []
    totals = [0, 0, 0]   # tests, failures, errors

    # -- inputs suite
    cases, errors = [], 0
    for i in result.inputs:
        out = input_accounting(i)
        if i.interfaces:
            out += "\ninterfaces: " + ", ".join(i.interfaces)
        body = ""
        if i.damage:
            errors += 1
            n = len(i.damage)
            body += (f"<error{_attrs(type='damage', message=f'{n} damaged region' + ('' if n == 1 else 's'))}>"
                     + xml_text("\n".join(damage_lines(i, limit=None))) + "</error>")
        body += f"<system-out>{xml_text(out)}</system-out>"
        cases.append(f'    <testcase{_attrs(name=i.path, classname="lvs-inspect.inputs")}>{body}</testcase>')
    js = result.to_json_dict()["summary"]
    props = [("frames", js["frames"]), ("decoded", js["decoded"]), ("ignored", js["ignored"]),
             ("undecodable", js["undecodable"]), ("connections", js["connections"]),
             ("complete", js["complete"]), ("failed", js["failed"]),
             ("findings", counts_phrase(result))]
    props += [(f"findings.{k}", v) for k, v in js["findings"].items()]
    if result.topology:
        props.append(("topology", result.topology))
    prop_xml = "".join(f"      <property{_attrs(name=k, value=v)}/>\n" for k, v in props)
    suites.append(f'  <testsuite{_attrs(name="inputs", tests=len(cases), failures=0, errors=errors, skipped=0)}>\n'
                  f"    <properties>\n{prop_xml}    </properties>\n"
                  + "".join(c + "\n" for c in cases) + "  </testsuite>")
    totals[0] += len(cases)
    totals[2] += errors

    # -- one suite per rule
    for code, fs in rules_of(result.findings):
        seen: dict[str, int] = {}
        cases, failures = [], 0
        for f in fs:
            name = _case_name(f)
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                name = f"{name} #{seen[name]}"
            details = xml_text(_details(result, f))
            if Severity(f.severity) >= Severity.WARNING:
                failures += 1
                body = (f"<failure{_attrs(type=str(f.severity), message=f.message.strip())}>"
                        f"{details}</failure>")
            else:
                body = f"<system-out>{details}</system-out>"
            cases.append(f'    <testcase{_attrs(name=name, classname=f"lvs-inspect.{code}")}>{body}</testcase>')
        suites.append(f"  <testsuite{_attrs(name=f'{code} {fs[0].name}', tests=len(cases), failures=failures, errors=0, skipped=0)}>\n"
                      + "".join(c + "\n" for c in cases) + "  </testsuite>")
        totals[0] += len(cases)
        totals[1] += failures

    head = (f'<testsuites{_attrs(name="lvs-inspect audit", tests=totals[0], failures=totals[1], errors=totals[2])}>')
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + head + "\n" + "\n".join(suites) + "\n</testsuites>\n")
