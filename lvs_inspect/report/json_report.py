"""``--format json`` and ``--format jsonl``.

json
    Exactly :meth:`AuditResult.to_json_dict`, keys in the order it produces them (the contract in
    INTERFACES.md), ``indent=2``, non-ASCII written as ``\\uXXXX`` escapes (so paths that are not
    valid UTF-8 survive), one trailing newline.

jsonl
    One compact JSON object per finding per line, and nothing else: no header, no summary line, so
    a clean audit writes an empty document.  Each object is the finding exactly as it appears in the
    ``findings`` list of the json report, except that every entry of ``frames`` also carries the
    ``path`` of its input (``{"input": 0, "frame": 45, "path": "c.pcapng"}``): a line read on its own
    by a log shipper or monitoring pipeline still says which file the frame is in.  Findings come in
    the order the audit produced them.
"""
from __future__ import annotations

import json

from ..checks.finding import AuditResult
from .text import input_path


def render_json(result: AuditResult) -> str:
    return json.dumps(result.to_json_dict(), indent=2) + "\n"


def finding_objects(result: AuditResult) -> list[dict]:
    """The jsonl objects: each finding's JSON with the input path added to every frame."""
    out = []
    for f in result.findings:
        obj = f.to_json()
        for fr in obj["frames"]:
            fr["path"] = input_path(result, fr["input"])
        out.append(obj)
    return out


def render_jsonl(result: AuditResult) -> str:
    return "".join(json.dumps(o, separators=(",", ":")) + "\n" for o in finding_objects(result))
