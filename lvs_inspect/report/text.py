"""The report for people: a short summary first, then the findings grouped by severity and rule.

Layout::

    lvs-inspect audit: 1 error, 2 warnings, 1 info
    inputs: 2 files, 1,205 frames (1,180 decoded, 20 ignored, 5 undecodable)
      [0] c.pcapng: 601 frames (590 decoded, 11 ignored, 0 undecodable); interfaces p-c, p-d
      [1] r.pcap.gz: 604 frames (590 decoded, 9 ignored, 5 undecodable, 3 truncated); interfaces r.pcap
          damage at byte 4096: record length 9000000 exceeds the snaplen 262144
    topology: topo.toml
    connections: 10 (9 complete, 1 failed)
    by real server: 192.0.2.11 5, 192.0.2.12 5
    director carried: 1,234,567 bytes

    ERRORS (1)

    DR101 rs-answers-arp-for-vip: A real server answers ARP for the VIP (1)
      - 02:00:00:00:00:12 (203.0.113.12) claims VIP 203.0.113.100 ...
          service      203.0.113.100:80/tcp
          real server  203.0.113.12
          ...
          frames       c.pcapng#45, c.pcapng#47
          expected     eth.src=02:00:00:00:00:02
          observed     eth.src=02:00:00:00:00:12
          fix          On 203.0.113.12:
                         sysctl -w net.ipv4.conf.all.arp_ignore=1

Frames are written ``PATH#FRAME`` (the input's path as given, the 1-based frame number Wireshark
shows).  When every finding of a rule carries the same fix, the fix is printed once under the
rule's heading instead of under each finding.  ANSI colour only with ``color=True`` (the CLI passes
``isatty()``).  Control characters coming from the inputs (interface names, paths) are written as
``\\xNN`` so a crafted capture cannot drive the terminal.

This module also holds the small helpers the other renderers share (grouping, frame labels,
sanitising), so every format groups and names things the same way.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from ..checks.finding import AuditResult, Finding, FrameRef, InputInfo, Severity

#: frames listed per finding in the human formats; the machine formats list them all
MAX_FRAMES_SHOWN = 10
#: damage notes listed per input in the human formats
MAX_DAMAGE_SHOWN = 5

_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff]")


def _escape_char(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def clean(text: object, *, newlines: bool = True) -> str:
    """Text safe to print or embed: control, line-separator (U+2028/9), bidi-override and unpaired
    surrogate characters escaped.

    Tabs are kept; newlines are kept when ``newlines`` (else written as ``\\n``); ``\\r`` is escaped.
    """
    s = "" if text is None else str(text)
    s = _UNSAFE.sub(_escape_char, s)
    if not newlines:
        s = s.replace("\n", "\\n")
    return s


# -- shared helpers --------------------------------------------------------------------------------

SEVERITIES = (Severity.ERROR, Severity.WARNING, Severity.INFO)
_PLURAL = {Severity.ERROR: ("error", "errors"), Severity.WARNING: ("warning", "warnings"),
           Severity.INFO: ("info", "info")}


def severity_count(n: int, sev: Severity) -> str:
    one, many = _PLURAL[sev]
    return f"{n:,} {one if n == 1 else many}"


def counts_phrase(result: AuditResult) -> str:
    """``1 error, 2 warnings, 0 info`` or ``no findings``."""
    counts = result.counts()
    if not result.findings:
        return "no findings"
    return ", ".join(severity_count(counts[str(s)], s) for s in SEVERITIES)


def grouped(findings: Iterable[Finding]) -> list[tuple[Severity, list[tuple[str, list[Finding]]]]]:
    """Findings by severity (errors first), then by rule code (sorted); produced order inside."""
    by: dict[Severity, dict[str, list[Finding]]] = {}
    for f in findings:
        by.setdefault(Severity(f.severity), {}).setdefault(f.code, []).append(f)
    return [(sev, sorted(by[sev].items())) for sev in SEVERITIES if sev in by]


def ordered(findings: Iterable[Finding]) -> list[Finding]:
    """The findings in the grouped order, flattened."""
    return [f for _, rules in grouped(findings) for _, fs in rules for f in fs]


def rules_of(findings: Iterable[Finding]) -> list[tuple[str, list[Finding]]]:
    """Findings by rule code; rules ordered by their worst severity (errors first), then code."""
    by: dict[str, list[Finding]] = {}
    for f in findings:
        by.setdefault(f.code, []).append(f)
    return sorted(by.items(), key=lambda kv: (-max(int(f.severity) for f in kv[1]), kv[0]))


def input_path(result: AuditResult, index: int) -> str:
    if 0 <= index < len(result.inputs):
        return result.inputs[index].path
    return f"input{index}"


def frame_label(result: AuditResult, ref: FrameRef) -> str:
    """``PATH#FRAME``."""
    return f"{input_path(result, ref.input)}#{ref.frame}"


def frames_text(result: AuditResult, frames: list[FrameRef], limit: int | None = MAX_FRAMES_SHOWN) -> str:
    shown = frames if limit is None else frames[:limit]
    text = ", ".join(frame_label(result, r) for r in shown)
    if len(frames) > len(shown):
        text += f" (+{len(frames) - len(shown):,} more)"
    return text


def kv_text(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def where_items(f: Finding) -> list[tuple[str, str]]:
    """(label, value) for the location fields a finding has, in a fixed order."""
    out = []
    for label, value in (("service", f.service), ("real server", f.real_server), ("mac", f.mac),
                         ("connection", f.connection)):
        if value:
            out.append((label, str(value)))
    return out


def where_text(f: Finding) -> str:
    """``service 203.0.113.100:80/tcp, real server 203.0.113.12, connection ...`` (may be empty)."""
    return ", ".join(f"{label} {value}" for label, value in where_items(f))


def common_fix(findings: list[Finding]) -> str | None:
    """The fix when every finding of a rule has the same (non-empty) one."""
    fixes = {f.fix for f in findings}
    if len(fixes) == 1:
        fix = fixes.pop()
        return fix if fix and fix.strip() else None
    return None


def input_accounting(i: InputInfo) -> str:
    text = (f"{i.frames:,} frames ({i.decoded:,} decoded, {i.ignored:,} ignored, "
            f"{i.undecodable:,} undecodable")
    if i.truncated:
        text += f", {i.truncated:,} truncated"
    return text + ")"


def damage_lines(i: InputInfo, limit: int | None = MAX_DAMAGE_SHOWN) -> list[str]:
    notes = i.damage if limit is None else i.damage[:limit]
    lines = [f"damage at byte {d.get('offset', '?')}: {d.get('message', '')}" for d in notes]
    if len(i.damage) > len(notes):
        lines.append(f"(+{len(i.damage) - len(notes):,} more damage notes)")
    return lines


def by_real_server_text(result: AuditResult) -> str:
    return ", ".join(f"{rs} {n:,}" for rs, n in result.summary.by_real_server.items())


# -- the text renderer -----------------------------------------------------------------------------

_RESET = "\x1b[0m"
_STYLE = {"bold": "\x1b[1m", "dim": "\x1b[2m", Severity.ERROR: "\x1b[1;31m", Severity.WARNING: "\x1b[1;33m",
          Severity.INFO: "\x1b[1;36m"}
_LABEL_WIDTH = 12
_HEADINGS = {Severity.ERROR: "ERRORS", Severity.WARNING: "WARNINGS", Severity.INFO: "INFO"}


class _Painter:
    def __init__(self, color: bool):
        self.color = color

    def __call__(self, text: str, style) -> str:
        if not self.color or not text:
            return text
        return f"{_STYLE[style]}{text}{_RESET}"


def _block(label: str, value: str, indent: str, paint: _Painter) -> list[str]:
    """``label  value`` with continuation lines of a multi-line value aligned under the value."""
    lines = clean(value).rstrip("\n").split("\n")
    pad = indent + " " * (_LABEL_WIDTH + 1)
    head = indent + paint(label.ljust(_LABEL_WIDTH), "dim") + " " + lines[0]
    return [head.rstrip()] + [(pad + ln).rstrip() for ln in lines[1:]]


def render(result: AuditResult, *, color: bool = False) -> str:
    paint = _Painter(color)
    out: list[str] = []
    worst = result.worst()
    headline = counts_phrase(result)
    out.append(paint("lvs-inspect audit", "bold") + ": "
               + (paint(headline, worst) if worst is not None else headline))

    total = sum(i.frames for i in result.inputs)
    dec = sum(i.decoded for i in result.inputs)
    ign = sum(i.ignored for i in result.inputs)
    und = sum(i.undecodable for i in result.inputs)
    n_in = len(result.inputs)
    out.append(f"inputs: {n_in} file{'' if n_in == 1 else 's'}, {total:,} frames ({dec:,} decoded, "
               f"{ign:,} ignored, {und:,} undecodable)")
    for k, i in enumerate(result.inputs):
        line = f"  [{k}] {clean(i.path, newlines=False)}: {input_accounting(i)}"
        if i.interfaces:
            line += "; interfaces " + ", ".join(clean(n, newlines=False) for n in i.interfaces)
        out.append(line)
        for d in damage_lines(i):
            out.append("      " + paint(clean(d, newlines=False), Severity.WARNING))
    if result.topology:
        out.append(f"topology: {clean(result.topology, newlines=False)}")
    s = result.summary
    out.append(f"connections: {s.connections:,} ({s.complete:,} complete, {s.failed:,} failed)")
    if s.by_real_server:
        out.append("by real server: " + clean(by_real_server_text(result), newlines=False))
    if s.director_bytes:
        out.append(f"director carried: {s.director_bytes:,} payload bytes")

    if not result.findings:
        out.append("")
        out.append("No findings.")
        return "\n".join(out) + "\n"

    for sev, rules in grouped(result.findings):
        n = sum(len(fs) for _, fs in rules)
        out.append("")
        out.append(paint(f"{_HEADINGS[sev]} ({n:,})", sev))
        for code, fs in rules:
            head = f"{code} {fs[0].name}"
            title = fs[0].title
            out.append("")
            out.append(paint(clean(head, newlines=False), "bold")
                       + (f": {clean(title, newlines=False)}" if title else "") + f" ({len(fs):,})")
            shared_fix = common_fix(fs)
            if shared_fix is not None:
                out.extend(_block("fix", shared_fix, "    ", paint))
            docs = next((f.help_uri for f in fs if f.help_uri), None)
            if docs:
                out.extend(_block("docs", docs, "    ", paint))
            for f in fs:
                msg = clean(f.message).strip().split("\n")
                out.append("  " + paint("-", sev) + " " + msg[0])
                out.extend(("    " + ln).rstrip() for ln in msg[1:])
                ind = "      "
                for label, value in where_items(f):
                    out.extend(_block(label, value, ind, paint))
                if f.frames:
                    out.extend(_block("frames", frames_text(result, f.frames), ind, paint))
                if f.expected:
                    out.extend(_block("expected", kv_text(f.expected), ind, paint))
                if f.observed:
                    out.extend(_block("observed", kv_text(f.observed), ind, paint))
                if f.count > 1:
                    out.extend(_block("occurrences", f"{f.count:,}", ind, paint))
                if shared_fix is None and f.fix and f.fix.strip():
                    out.extend(_block("fix", f.fix, ind, paint))
    return "\n".join(out) + "\n"
