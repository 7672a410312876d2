"""``expected.json``: the verdict a correct audit of a lab trace must reach, and the comparison.

Format (version 1)::

    {
      "version": 1,
      "case": "dr-arp-leak-kernel",
      "mode": "dr", "fault": "arp-leak", "director": "kernel", "profile": "linux", "tun": null,
      "findings": [                       # each must be reported at least once
        {"code": "DR101", "real_server": "192.0.2.11", "why": "..."}
      ],
      "may": [                            # allowed, not required (races the lab cannot pin down)
        {"code": "DR104", "real_server": "192.0.2.11", "why": "..."}
      ],
      "quiet": ["CONN101", "..."],        # every other rule of the pack: must not fire
      "notes": ["..."]
    }

``real_server`` is the server's IP address, compared with the address part of the report's
``real_server`` (which adds ``:port`` when the server's port differs from the service's); null
means any server, or a finding that is about no server. The audit agrees with the file when
every ``findings`` entry is matched by a reported finding, no reported finding is outside
``findings`` + ``may``, and no ``quiet`` code is reported.
"""
from __future__ import annotations

import json
from pathlib import Path

EXPECTED_VERSION = 1


def rs_ip(value: str | None) -> str | None:
    """``"198.51.100.12:8080"`` -> ``"198.51.100.12"``; ``"[2001:db8::1]:80"`` -> ``"2001:db8::1"``."""
    if value is None:
        return None
    v = str(value)
    if v.startswith("["):
        return v[1:v.index("]")]
    if v.count(":") == 1:
        return v.split(":")[0]
    return v


def expected_dict(plan, rule_codes: list[str]) -> dict:
    listed = {e.code for e in plan.findings} | {e.code for e in plan.may}
    return {
        "version": EXPECTED_VERSION,
        "case": plan.case,
        "mode": plan.mode, "fault": plan.fault, "director": plan.director,
        "profile": plan.profile, "tun": plan.tun,
        "findings": [{"code": e.code, "real_server": e.real_server, "why": e.why} for e in plan.findings],
        "may": [{"code": e.code, "real_server": e.real_server, "why": e.why} for e in plan.may],
        "quiet": sorted(c for c in rule_codes if c not in listed),
        "notes": list(plan.notes),
    }


def load_expected(path: str | Path) -> dict:
    from ..errors import InputError
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise InputError(str(p), e.strerror or str(e)) from None
    except json.JSONDecodeError as e:
        raise InputError(str(p), f"not JSON: {e.msg}", line=e.lineno) from None
    if not isinstance(data, dict) or data.get("version") != EXPECTED_VERSION:
        raise InputError(str(p), f"not an expected.json of version {EXPECTED_VERSION}")
    for key in ("findings", "may", "quiet"):
        if not isinstance(data.get(key, []), list):
            raise InputError(str(p), f"'{key}' must be a list", key=key)
    return data


def _matches(entry: dict, finding: dict) -> bool:
    if entry["code"] != finding.get("code"):
        return False
    want = entry.get("real_server")
    return want is None or rs_ip(finding.get("real_server")) == want


def compare(expected: dict, findings: list[dict]) -> list[str]:
    """Problems (empty: the audit agrees). ``findings``: the report's ``findings`` list (JSON)."""
    problems = []
    for e in expected.get("findings", []):
        if not any(_matches(e, f) for f in findings):
            who = f" for {e['real_server']}" if e.get("real_server") else ""
            got = sorted({f"{f['code']}@{rs_ip(f.get('real_server')) or '-'}" for f in findings
                          if f.get("code") == e["code"]})
            problems.append(f"missing {e['code']}{who}" + (f" (reported: {', '.join(got)})" if got else ""))
    allowed = list(expected.get("findings", [])) + list(expected.get("may", []))
    quiet = set(expected.get("quiet", []))
    seen = set()
    for f in findings:
        key = (f.get("code"), rs_ip(f.get("real_server")))
        if key in seen:
            continue
        seen.add(key)
        if f.get("code") in quiet:
            problems.append(f"{f['code']} fired (must stay quiet) for {key[1] or '-'}: {f.get('message', '').strip()[:160]}")
        elif not any(_matches(e, f) for e in allowed):
            problems.append(f"unexpected {f['code']} for {key[1] or '-'}: {f.get('message', '').strip()[:160]}")
    return problems


def summarize(findings: list[dict]) -> list[tuple[str, str, str, int]]:
    """(code, severity, real server, count) rows of a report's findings."""
    rows: dict[tuple[str, str, str], int] = {}
    for f in findings:
        k = (f["code"], f.get("severity", ""), rs_ip(f.get("real_server")) or "-")
        rows[k] = rows.get(k, 0) + int(f.get("count", 1) or 1)
    return [(c, s, r, n) for (c, s, r), n in sorted(rows.items())]
