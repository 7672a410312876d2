"""``--format sarif``: SARIF 2.1.0 for GitHub code scanning and other SARIF viewers.

One log, one run:

``tool.driver``
    ``name`` "lvs-inspect", ``version``/``semanticVersion`` the package version, and ``rules``: one
    reportingDescriptor per rule code that produced findings, sorted by code: ``id`` = code,
    ``name``, ``shortDescription`` = the rule's title (its name when it has none),
    ``fullDescription`` = the rule's explanation (``why``) when the finding model carries one,
    else the title, ``help.text`` = how to fix it (the fix of the rule's first finding, as filled in
    for it), ``helpUri`` when the rule has one, ``defaultConfiguration.level`` from the severity.

``artifacts``
    One per input trace, in input order (``roles: ["analysisTarget"]``), with its index, frame
    accounting and interfaces in ``properties``.

``invocations[0]``
    ``executionSuccessful: true``; each damage note of an input becomes a
    ``toolExecutionNotifications`` entry (level ``warning``) located at its byte offset in the
    input (``region.byteOffset``).

``results`` (in the order the audit produced the findings)
    ``ruleId``/``ruleIndex``, ``level`` (error -> ``error``, warning -> ``warning``, info ->
    ``note``), ``message.text``, ``occurrenceCount`` (the finding's count), and one location: the
    input trace of the finding's first frame (the first input when it has no frame) as
    ``artifactLocation`` (``uri`` = the path as given, percent-encoded, relative paths left
    relative, stdin as ``-``; ``index`` into ``artifacts``) plus one logical location naming the most specific of
    connection / real server / MAC / service (``kind`` says which; ``fullyQualifiedName`` chains
    them).  Further inputs the frames point into are ``relatedLocations``.  ``partialFingerprints``
    (``lvsInspect/v1``: a hash of rule, service, real server, MAC and connection) keeps alerts
    stable across runs without GitHub trying to read a pcap as source text.  ``properties`` carry
    severity, service, realServer, mac, connection, frames (``input``, ``path``, ``frame``),
    expected, observed and fix.

``properties`` of the run: the audit summary (as in the json report) and the topology source.

No region with a line number is given: a capture has no lines, and frame numbers are not byte
offsets.  Output is ``json.dumps(..., indent=2)``, ASCII only, byte-for-byte stable.
"""
from __future__ import annotations

import hashlib
import json
from urllib.parse import quote

from .. import __version__
from ..checks.finding import AuditResult, Finding, Severity
from .text import input_path, where_items

#: the driver version written into the log (the golden tests pin it)
TOOL_VERSION = __version__
SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
_KIND = {"service": "service", "real server": "realServer", "mac": "mac", "connection": "connection"}


def _utf8(s: str) -> bytes:
    """UTF-8 bytes of ``s``; bytes that were not UTF-8 in a file name (surrogate-escaped) come back
    as they were, other unpaired surrogates are encoded as such."""
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


def artifact_uri(path: str) -> str:
    """The path as a URI reference: relative stays relative, absolute becomes ``file://``."""
    uri = quote(_utf8(path), safe="/")
    return "file://" + uri if path.startswith("/") else uri


def _fingerprint(f: Finding) -> str:
    key = "\x1f".join([f.code, f.service or "", f.real_server or "", f.mac or "", f.connection or ""])
    return hashlib.sha256(_utf8(key)).hexdigest()[:32]


def _logical(f: Finding) -> list[dict]:
    items = where_items(f)
    if not items:
        return []
    label, value = items[-1]
    return [{"name": value, "kind": _KIND[label],
             "fullyQualifiedName": " > ".join(f"{k} {v}" for k, v in items)}]


def _location(result: AuditResult, index: int, f: Finding | None = None) -> dict:
    loc: dict = {"physicalLocation": {"artifactLocation": {
        "uri": artifact_uri(input_path(result, index)), "index": index}}}
    if f is not None:
        logical = _logical(f)
        if logical:
            loc["logicalLocations"] = logical
    return loc


def _rule(code: str, fs: list[Finding]) -> dict:
    first = fs[0]
    title = first.title or first.name
    why = getattr(first, "why", "") or title
    rule: dict = {"id": code, "name": first.name, "shortDescription": {"text": title},
                  "fullDescription": {"text": why.strip()}}
    if first.help_uri:
        rule["helpUri"] = first.help_uri
    fix = next((f.fix for f in fs if f.fix and f.fix.strip()), "")
    if fix:
        rule["help"] = {"text": fix.strip("\n")}
    rule["defaultConfiguration"] = {"level": LEVELS[Severity(first.severity)]}
    return rule


def _result(result: AuditResult, f: Finding, rule_index: int) -> dict:
    inputs = []
    for fr in f.frames:
        if fr.input not in inputs:
            inputs.append(fr.input)
    if not inputs and result.inputs:
        inputs = [0]
    res: dict = {"ruleId": f.code, "ruleIndex": rule_index, "level": LEVELS[Severity(f.severity)],
                 "message": {"text": f.message.strip() or f.title or f.code}}
    if inputs:
        res["locations"] = [_location(result, inputs[0], f)]
        if len(inputs) > 1:
            res["relatedLocations"] = [dict(_location(result, k), id=n) for n, k in enumerate(inputs[1:], 1)]
    res["occurrenceCount"] = max(1, int(f.count))
    res["partialFingerprints"] = {"lvsInspect/v1": _fingerprint(f)}
    props: dict = {"severity": str(f.severity)}
    for key, value in (("service", f.service), ("realServer", f.real_server), ("mac", f.mac),
                       ("connection", f.connection)):
        if value:
            props[key] = value
    props["frames"] = [{"input": fr.input, "path": input_path(result, fr.input), "frame": fr.frame}
                       for fr in f.frames]
    props["expected"] = dict(f.expected)
    props["observed"] = dict(f.observed)
    if f.fix and f.fix.strip():
        props["fix"] = f.fix.strip("\n")
    res["properties"] = props
    return res


def to_sarif(result: AuditResult) -> dict:
    by_code: dict[str, list[Finding]] = {}
    for f in result.findings:
        by_code.setdefault(f.code, []).append(f)
    codes = sorted(by_code)
    rules = [_rule(c, by_code[c]) for c in codes]
    index = {c: k for k, c in enumerate(codes)}

    artifacts = []
    notes = []
    for k, i in enumerate(result.inputs):
        artifacts.append({"location": {"uri": artifact_uri(i.path)}, "roles": ["analysisTarget"],
                          "properties": {"input": k, "frames": i.frames, "decoded": i.decoded, "ignored": i.ignored,
                                         "undecodable": i.undecodable, "truncated": i.truncated,
                                         "interfaces": list(i.interfaces)}})
        for d in i.damage:
            loc = _location(result, k)
            offset = d.get("offset")
            if isinstance(offset, int) and offset >= 0:
                loc["physicalLocation"]["region"] = {"byteOffset": offset}
            notes.append({"level": "warning", "message": {"text": str(d.get("message", ""))},
                          "locations": [loc]})
    invocation: dict = {"executionSuccessful": True}
    if notes:
        invocation["toolExecutionNotifications"] = notes

    summary = result.to_json_dict()["summary"]
    run = {
        "tool": {"driver": {"name": "lvs-inspect", "version": TOOL_VERSION, "semanticVersion": TOOL_VERSION,
                            "rules": rules}},
        "invocations": [invocation],
        "artifacts": artifacts,
        "results": [_result(result, f, index[f.code]) for f in result.findings],
        "properties": {"summary": summary, "topology": result.topology},
    }
    return {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}


def render(result: AuditResult) -> str:
    return json.dumps(to_sarif(result), indent=2) + "\n"
