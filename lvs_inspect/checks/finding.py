"""The result model every renderer draws from: findings and the audit summary.

The JSON report (``--format json``) is exactly :meth:`AuditResult.to_json_dict`; its keys are a
contract (INTERFACES.md): keys may be added, none renamed or dropped without a version bump.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

REPORT_VERSION = 1


class Severity(IntEnum):
    INFO = 1
    WARNING = 2
    ERROR = 3

    @classmethod
    def parse(cls, text: str) -> "Severity":
        return cls[text.upper()]

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class FrameRef:
    input: int          # index into AuditResult.inputs
    frame: int          # 1-based frame number, as Wireshark shows it

    def to_json(self) -> dict:
        return {"input": self.input, "frame": self.frame}


@dataclass
class Finding:
    code: str                         # stable rule code, e.g. "DR101"
    name: str                         # readable rule name, e.g. "rs-answers-arp-for-vip"
    severity: Severity
    message: str                      # the rule's message template, filled in
    fix: str = ""                     # how to fix it (sysctl, route, setting), filled in
    title: str = ""                   # the rule's one-line title
    service: str | None = None        # "203.0.113.100:80/tcp"
    real_server: str | None = None    # "192.0.2.12" (or "192.0.2.12:8080" when the port differs)
    mac: str | None = None            # the MAC the finding is about
    connection: str | None = None     # the client side "198.51.100.10:50032"
    frames: list[FrameRef] = field(default_factory=list)
    expected: dict[str, str] = field(default_factory=dict)
    observed: dict[str, str] = field(default_factory=dict)
    count: int = 1                    # how many occurrences this finding stands for
    help_uri: str | None = None       # documentation of the rule (SARIF helpUri)

    def to_json(self) -> dict:
        return {
            "code": self.code, "name": self.name, "severity": str(self.severity),
            "title": self.title, "message": self.message, "fix": self.fix,
            "service": self.service, "real_server": self.real_server, "mac": self.mac,
            "connection": self.connection, "count": self.count,
            "frames": [f.to_json() for f in self.frames],
            "expected": dict(self.expected), "observed": dict(self.observed),
        }


@dataclass
class InputInfo:
    path: str
    frames: int
    decoded: int
    ignored: int
    undecodable: int
    interfaces: list[str] = field(default_factory=list)
    truncated: int = 0
    damage: list[dict] = field(default_factory=list)    # {"offset": int, "message": str}

    def to_json(self) -> dict:
        return {"path": self.path, "frames": self.frames, "interfaces": list(self.interfaces),
                "decoded": self.decoded, "ignored": self.ignored, "undecodable": self.undecodable,
                "truncated": self.truncated, "damage": list(self.damage)}


@dataclass
class Summary:
    connections: int = 0
    complete: int = 0
    failed: int = 0
    by_real_server: dict[str, int] = field(default_factory=dict)
    director_bytes: int = 0            # payload bytes the director forwarded, each direction once (NAT bottleneck)


@dataclass
class AuditResult:
    inputs: list[InputInfo]
    summary: Summary
    findings: list[Finding]
    topology: str | None = None        # where the topology came from ("inferred" when it was)

    def counts(self) -> dict[str, int]:
        out = {"error": 0, "warning": 0, "info": 0}
        for f in self.findings:
            out[str(f.severity)] += 1
        return out

    def worst(self) -> Severity | None:
        return max((f.severity for f in self.findings), default=None)

    def to_json_dict(self) -> dict:
        frames = sum(i.frames for i in self.inputs)
        return {
            "version": REPORT_VERSION,
            "inputs": [i.to_json() for i in self.inputs],
            "summary": {
                "frames": frames,
                "decoded": sum(i.decoded for i in self.inputs),
                "ignored": sum(i.ignored for i in self.inputs),
                "undecodable": sum(i.undecodable for i in self.inputs),
                "connections": self.summary.connections,
                "complete": self.summary.complete,
                "failed": self.summary.failed,
                "by_real_server": dict(self.summary.by_real_server),
                "director_bytes": self.summary.director_bytes,
                "findings": self.counts(),
            },
            "topology": self.topology,
            "findings": [f.to_json() for f in self.findings],
        }
