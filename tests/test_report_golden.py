"""Golden tests of every report format, byte for byte, with the exit codes.

Three AuditResults are built by hand below (``clean``; ``mixed``: errors, warnings and info across
two inputs, several rules, IPv6, text that needs escaping in XML, Markdown and GitHub commands;
``damaged``: damage notes, truncated frames, a stdin input, a control character in an interface
name).  Each is rendered in every format and compared with tests/golden/<scenario>.<ext>; the exit
code for every ``--fail-on`` level is compared with tests/golden/<scenario>.exit.

To regenerate the golden files after an intended change, run

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_report_golden.py

and review the diff (``git diff tests/golden``) before committing.  The SARIF driver version is
pinned to ``0.0.0-golden`` so that a version bump does not churn the files.

JUnit output is validated against Jenkins' junit-10.xsd (tests/data/schemas/junit-10.xsd, with
lxml) and SARIF output against the SARIF 2.1.0 JSON schema (tests/data/schemas/
sarif-schema-2.1.0.json, with jsonschema).
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest

from lvs_inspect.checks.finding import AuditResult, Finding, FrameRef, InputInfo, Severity, Summary
from lvs_inspect.report import FORMATS, exit_code, render
from lvs_inspect.report import github as gh
from lvs_inspect.report import sarif as sarif_mod

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
SCHEMAS = HERE / "data" / "schemas"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

EXT = {"text": "txt", "json": "json", "jsonl": "jsonl", "junit": "junit.xml", "sarif": "sarif",
       "github": "github.txt", "markdown": "md"}

E, W, I = Severity.ERROR, Severity.WARNING, Severity.INFO


def _dr101(rs: str, mac: str, conn: str, frames: list[FrameRef]) -> Finding:
    return Finding(
        code="DR101", name="rs-answers-arp-for-vip", severity=E, title="A real server answers ARP for the VIP",
        message=f"{mac} ({rs}) claims VIP 203.0.113.100: clients and routers that believe it send traffic "
                f"for the VIP straight to that server, bypassing the director.\n",
        fix=f"On {rs}:\n  sysctl -w net.ipv4.conf.all.arp_ignore=1\n  sysctl -w net.ipv4.conf.all.arp_announce=2\n"
            "and persist both in /etc/sysctl.d/.\n",
        service="203.0.113.100:80/tcp", real_server=rs, mac=mac, connection=conn, frames=frames,
        expected={"eth.src": "02:00:00:00:00:02"}, observed={"eth.src": mac},
        help_uri="https://example.com/lvs-inspect/rules/DR101")


def clean_result() -> AuditResult:
    return AuditResult(
        inputs=[InputInfo("fixtures/dr-good/trace.pcapng", 601, 590, 11, 0, ["p-c", "p-d", "p-r1", "p-r2"])],
        summary=Summary(connections=10, complete=10, failed=0,
                        by_real_server={"192.0.2.11": 5, "192.0.2.12": 5}, director_bytes=0),
        findings=[], topology="fixtures/dr-good/topology.toml")


def mixed_result() -> AuditResult:
    d, r = 0, 1
    findings = [
        Finding(code="SVC601", name="scheduler-share", severity=W, title="Connections per real server do not "
                "match the scheduler and weights",
                message="rr: 203.0.113.12 got 7 of 12 connections, expected 6 ± 2 (weights 1:1)",
                fix="Check the weights with `ipvsadm -Ln` and that persistence is off.",
                service="203.0.113.100:80/tcp", expected={"share": "0.50"}, observed={"share": "0.58"},
                help_uri="https://example.com/lvs-inspect/rules/SVC601"),
        _dr101("203.0.113.12", "02:00:00:00:00:12", "198.51.100.10:50032",
               [FrameRef(d, 45), FrameRef(r, 3)]),
        Finding(code="CHK501", name="l4-checksum-offload", severity=I, title="Checksums left to the NIC",
                message="L4 checksums wrong on 42 frames sent by this host: checksum offload, not a rewrite error",
                mac="02:00:00:00:00:02", frames=[FrameRef(d, 7)], count=42),
        Finding(code="TOA401", name="toa-missing-on-handshake", severity=E,
                title="No TOA option on the packet that completes the handshake",
                message='TOA missing on the ACK completing the handshake: expected kind 254 & length 8, '
                        'saw "none" <no option>; 100% of 3 tries, frames 12,14\n'
                        'the real server logs the director\'s LIP instead of the client: 2001:db8::1',
                fix="Load the TOA module on the director (modprobe toa) and check `toa = { kind = 254, length = 8 }`"
                    " in the topology.\n",
                service="[2001:db8::100]:443/tcp", real_server="2001:db8::11", mac="02:00:00:00:00:11",
                connection="[2001:db8:1::10]:50432", frames=[FrameRef(r, 12), FrameRef(r, 14), FrameRef(r, 15)],
                expected={"tcp.option.toa": "kind=254,len=8", "toa.addr": "2001:db8:1::10"},
                observed={"tcp.option.toa": "<absent>"}, count=3),
        Finding(code="TTL201", name="ttl-decrement", severity=W,
                title="Hop limit | TTL not decremented by the director",
                message="the director forwarded with hop limit 64, expected 63 (profile linux)",
                fix="Nothing to change on the hosts: check that the capture point is where the topology says.",
                service="[2001:db8::100]:443/tcp", real_server="2001:db8::11",
                connection="[2001:db8:1::10]:50432", frames=[FrameRef(d, 101), FrameRef(r, 11)],
                expected={"ipv6.hlim": "63"}, observed={"ipv6.hlim": "64"}),
        _dr101("203.0.113.13", "02:00:00:00:00:13", "198.51.100.11:40000",
               [FrameRef(d, n) for n in range(200, 212)]),
    ]
    return AuditResult(
        inputs=[InputInfo("traces/director.pcapng", 1000, 980, 15, 5, ["p-c", "p-d"]),
                InputInfo("traces/rs 2001:db8::11,eth0.pcap.gz", 500, 490, 10, 0, ["rs 2001:db8::11,eth0.pcap"])],
        summary=Summary(connections=12, complete=10, failed=2,
                        by_real_server={"203.0.113.12": 4, "203.0.113.13": 4, "2001:db8::11": 4},
                        director_bytes=1234567),
        findings=findings, topology="topology.toml")


def damaged_result() -> AuditResult:
    return AuditResult(
        inputs=[InputInfo("broken.pcapng", 120, 100, 5, 15, ["eth0\x1b[31m"], truncated=7,
                          damage=[{"offset": 4096, "message": "block length 65540 exceeds the 812 bytes left"},
                                  {"offset": 9000, "message": "block type 0x0a0d0d0a inside a section"}]),
                InputInfo("-", 10, 10, 0, 0, ["-"])],
        summary=Summary(connections=3, complete=2, failed=1, by_real_server={"192.0.2.11": 3}),
        findings=[Finding(code="CONN701", name="syn-unanswered", severity=W, title="SYN to a real server with no answer",
                          message="192.0.2.11 never answered the SYN forwarded by the director (3 retransmissions)",
                          fix="Check that 192.0.2.11 listens on port 80 and routes its replies back.",
                          service="203.0.113.100:80/tcp", real_server="192.0.2.11",
                          connection="198.51.100.20:41000", frames=[FrameRef(1, 4), FrameRef(1, 6)])],
        topology="inferred")


SCENARIOS = {"clean": clean_result, "mixed": mixed_result, "damaged": damaged_result}


@pytest.fixture(autouse=True)
def _pin_version(monkeypatch):
    monkeypatch.setattr(sarif_mod, "TOOL_VERSION", "0.0.0-golden")


def _check_golden(path: Path, actual: str) -> None:
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(actual.encode("utf-8"))
        return
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 to create it"
    expected = path.read_bytes().decode("utf-8")
    assert actual == expected, f"{path.name} differs from the golden file (UPDATE_GOLDEN=1 regenerates it)"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_golden(scenario, fmt):
    result = SCENARIOS[scenario]()
    out = render(result, fmt)
    assert render(copy.deepcopy(result), fmt) == out, "not deterministic"
    _check_golden(GOLDEN / f"{scenario}.{EXT[fmt]}", out)


def test_golden_text_in_colour():
    _check_golden(GOLDEN / "mixed.color.txt", render(mixed_result(), "text", color=True))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_golden_exit_codes(scenario):
    result = SCENARIOS[scenario]()
    text = "".join(f"--fail-on {lvl}: {exit_code(result, lvl)}\n" for lvl in ("error", "warning", "info", "never"))
    _check_golden(GOLDEN / f"{scenario}.exit", text)


# -- exit codes ------------------------------------------------------------------------------------

def test_exit_code_thresholds():
    clean, mixed, damaged = clean_result(), mixed_result(), damaged_result()
    assert [exit_code(clean, x) for x in ("error", "warning", "info", "never")] == [0, 0, 0, 0]
    assert [exit_code(mixed, x) for x in ("error", "warning", "info", "never")] == [1, 1, 1, 0]
    assert [exit_code(damaged, x) for x in ("error", "warning", "info", "never")] == [0, 1, 1, 0]
    info_only = AuditResult(clean.inputs, clean.summary, [f for f in mixed.findings if f.severity == I])
    assert [exit_code(info_only, x) for x in ("error", "warning", "info", "never")] == [0, 0, 1, 0]
    assert exit_code(mixed) == 1 and exit_code(damaged) == 0          # default: error
    assert exit_code(damaged, Severity.WARNING) == 1


def test_exit_code_rejects_unknown_level():
    with pytest.raises(ValueError, match="fail-on"):
        exit_code(clean_result(), "fatal")


def test_render_rejects_unknown_format():
    with pytest.raises(ValueError, match="csv"):
        render(clean_result(), "csv")


# -- json / jsonl ----------------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_json_is_the_result_model(scenario):
    result = SCENARIOS[scenario]()
    doc = json.loads(render(result, "json"))
    want = result.to_json_dict()
    assert doc == want
    assert list(doc) == list(want) and list(doc["summary"]) == list(want["summary"])
    s = doc["summary"]
    assert s["decoded"] + s["ignored"] + s["undecodable"] == s["frames"]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_jsonl_one_finding_per_line(scenario):
    result = SCENARIOS[scenario]()
    out = render(result, "jsonl")
    lines = out.splitlines()
    assert len(lines) == len(result.findings)
    assert out == "" or out.endswith("\n")
    for line, f in zip(lines, result.findings):
        obj = json.loads(line)
        frames = obj.pop("frames")
        want = f.to_json()
        assert frames == [dict(fr, path=result.inputs[fr["input"]].path) for fr in want.pop("frames")]
        assert obj == want


# -- junit -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def junit_schema():
    from lxml import etree
    return etree.XMLSchema(etree.parse(str(SCHEMAS / "junit-10.xsd")))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_junit_valid_against_xsd(scenario, junit_schema):
    from lxml import etree
    result = SCENARIOS[scenario]()
    doc = etree.fromstring(render(result, "junit").encode("utf-8"))
    assert junit_schema.validate(doc), junit_schema.error_log
    failing = sum(1 for f in result.findings if f.severity >= W)
    damaged = sum(1 for i in result.inputs if i.damage)
    assert doc.get("tests") == str(len(result.inputs) + len(result.findings))
    assert doc.get("failures") == str(failing) and doc.get("errors") == str(damaged)
    assert len(doc.findall(".//failure")) == failing
    assert len(doc.findall(".//error")) == damaged
    suites = [s.get("name") for s in doc.findall("testsuite")]
    assert suites[0] == "inputs"
    assert len(suites) == 1 + len({f.code for f in result.findings})
    for s in doc.findall("testsuite"):
        assert s.get("tests") == str(len(s.findall("testcase")))
        names = [c.get("name") for c in s.findall("testcase")]
        assert len(names) == len(set(names)), "testcase names repeat inside a suite"


def test_junit_keeps_the_text_that_needs_escaping(junit_schema):
    from lxml import etree
    doc = etree.fromstring(render(mixed_result(), "junit").encode("utf-8"))
    toa = doc.find("testsuite[@name='TOA401 toa-missing-on-handshake']/testcase/failure")
    msg = mixed_result().findings[3].message.strip()
    assert toa.get("message") == msg                 # newline, quotes, <, & and % survive the attribute
    assert toa.get("type") == "error"
    assert "frames: traces/rs 2001:db8::11,eth0.pcap.gz#12" in toa.text
    info = doc.find("testsuite[@name='CHK501 l4-checksum-offload']/testcase")
    assert info.find("failure") is None and "checksum offload" in info.find("system-out").text
    damaged = etree.fromstring(render(damaged_result(), "junit").encode("utf-8"))
    out = damaged.find("testsuite[@name='inputs']/testcase[@name='broken.pcapng']/system-out").text
    assert "\x1b" not in out and "eth0\\x1b[31m" in out


# -- sarif -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sarif_validator():
    import jsonschema
    schema = json.loads((SCHEMAS / "sarif-schema-2.1.0.json").read_text())
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_sarif_valid_against_schema(scenario, sarif_validator):
    result = SCENARIOS[scenario]()
    log = json.loads(render(result, "sarif"))
    errors = sorted(sarif_validator.iter_errors(log), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])
    run, = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "lvs-inspect"
    rule_ids = [r["id"] for r in driver["rules"]]
    assert rule_ids == sorted({f.code for f in result.findings})
    assert len(run["results"]) == len(result.findings)
    level = {E: "error", W: "warning", I: "note"}
    for res, f in zip(run["results"], result.findings):
        assert res["ruleId"] == f.code and rule_ids[res["ruleIndex"]] == f.code
        assert res["level"] == level[f.severity]
        uri = res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert not uri.startswith("/") and " " not in uri
        props = res["properties"]
        assert props["expected"] == f.expected and props["observed"] == f.observed
        assert [(x["input"], x["frame"]) for x in props["frames"]] == [(x.input, x.frame) for x in f.frames]
    assert [a["location"]["uri"] for a in run["artifacts"]] == \
        [sarif_mod.artifact_uri(i.path) for i in result.inputs]


def test_sarif_rule_metadata_and_locations():
    log = json.loads(render(mixed_result(), "sarif"))
    run = log["runs"][0]
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    dr = rules["DR101"]
    assert dr["shortDescription"]["text"] == "A real server answers ARP for the VIP"
    assert dr["helpUri"] == "https://example.com/lvs-inspect/rules/DR101"
    assert dr["help"]["text"].startswith("On 203.0.113.12:") and dr["defaultConfiguration"]["level"] == "error"
    assert rules["CHK501"]["defaultConfiguration"]["level"] == "note"
    toa = next(r for r in run["results"] if r["ruleId"] == "TOA401")
    loc = toa["locations"][0]
    assert loc["physicalLocation"]["artifactLocation"] == {"uri": "traces/rs%202001%3Adb8%3A%3A11%2Ceth0.pcap.gz",
                                                           "index": 1}
    assert loc["logicalLocations"] == [{"name": "[2001:db8:1::10]:50432", "kind": "connection",
                                        "fullyQualifiedName": "service [2001:db8::100]:443/tcp > real server "
                                        "2001:db8::11 > mac 02:00:00:00:00:11 > connection [2001:db8:1::10]:50432"}]
    assert toa["occurrenceCount"] == 3
    dr_first = next(r for r in run["results"] if r["ruleId"] == "DR101")
    assert [x["physicalLocation"]["artifactLocation"]["index"] for x in dr_first["relatedLocations"]] == [1]
    fps = [r["partialFingerprints"]["lvsInspect/v1"] for r in run["results"]]
    assert len(set(fps)) == len(fps)
    damaged = json.loads(render(damaged_result(), "sarif"))["runs"][0]
    notes = damaged["invocations"][0]["toolExecutionNotifications"]
    assert [n["locations"][0]["physicalLocation"]["region"]["byteOffset"] for n in notes] == [4096, 9000]


# -- github ----------------------------------------------------------------------------------------

_CMD = re.compile(r"^::(error|warning|notice) ((?:[a-z]+=[^,:]*)(?:,[a-z]+=[^,:]*)*)::(.*)$")


def _unescape(s: str) -> str:
    return s.replace("%0A", "\n").replace("%0D", "\r").replace("%3A", ":").replace("%2C", ",").replace("%25", "%")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_github_commands_parse(scenario):
    result = SCENARIOS[scenario]()
    lines = render(result, "github").splitlines()
    assert len(lines) == len(result.findings)
    kinds = {"error": E, "warning": W, "notice": I}
    sevs = []
    for line in lines:
        m = _CMD.match(line)
        assert m, line
        props = dict(p.split("=", 1) for p in m.group(2).split(","))
        assert set(props) <= {"file", "title"} and "title" in props
        sevs.append(kinds[m.group(1)])
        code = _unescape(props["title"]).split()[0]
        candidates = [f for f in result.findings if f.code == code and f.severity == kinds[m.group(1)]]
        assert any(_unescape(m.group(3)).startswith(f.message.strip()) for f in candidates), line
    assert sevs == sorted(sevs, reverse=True), "errors first"


def test_github_escaping_and_file():
    lines = render(mixed_result(), "github").splitlines()
    toa = next(line for line in lines if "TOA401" in line)
    assert toa.startswith("::error file=traces/rs 2001%3Adb8%3A%3A11%2Ceth0.pcap.gz,title=TOA401 "
                          "toa-missing-on-handshake::")
    assert "100%25 of 3 tries" in toa and "%0Athe real server logs" in toa
    svc = next(line for line in lines if "SVC601" in line)
    assert svc.startswith("::warning title=SVC601 scheduler-share::")      # no frame, no file
    stdin = render(damaged_result(), "github")
    assert stdin.startswith("::warning title=CONN701 syn-unanswered::")    # frames on stdin: no file


def test_github_summary_and_step_summary_file(tmp_path):
    result = mixed_result()
    out = gh.outputs(result)
    assert out.annotations == render(result, "github")
    assert out.summary == render(result, "markdown")
    target = tmp_path / "summary.md"
    target.write_text("earlier step\n")
    assert gh.append_step_summary(out.summary, {"GITHUB_STEP_SUMMARY": str(target)}) == str(target)
    assert target.read_text() == "earlier step\n" + out.summary
    assert gh.append_step_summary(out.summary, {}) is None
    assert gh.append_step_summary(out.summary, {"GITHUB_STEP_SUMMARY": ""}) is None


# -- text and markdown -----------------------------------------------------------------------------

def test_text_colour_only_when_asked():
    result = damaged_result()
    plain = render(result, "text")
    assert "\x1b" not in plain and "eth0\\x1b[31m" in plain
    coloured = render(result, "text", color=True)
    assert "\x1b[" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain


def test_text_groups_errors_first_then_rule():
    text = render(mixed_result(), "text")
    order = [text.index(s) for s in ("ERRORS (3)", "DR101 rs-answers-arp-for-vip", "TOA401", "WARNINGS (2)",
                                     "SVC601", "TTL201", "INFO (1)", "CHK501")]
    assert order == sorted(order)
    assert "traces/director.pcapng#45, traces/rs 2001:db8::11,eth0.pcap.gz#3" in text
    assert "(+2 more)" in text                                                   # 12 frames, 10 shown
    assert text.count("sysctl -w net.ipv4.conf.all.arp_ignore=1") == 2          # per-RS fixes differ


def test_markdown_escapes_table_cells():
    md = render(mixed_result(), "markdown")
    row = next(line for line in md.splitlines() if line.startswith("| **warning** | `TTL201`"))
    assert "Hop limit \\| TTL" in row
    assert row.count(" | ") == 4                                                  # 5 cells, none split
    assert "\\<absent\\>" not in md and "`tcp.option.toa=<absent>`" in md       # literal in code spans
    assert "saw \"none\" \\<no option\\>" in md


# -- hostile text from captures and rule files -----------------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

_nasty = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF,
                               exclude_categories=()), max_size=40) | st.sampled_from(
    ["::error::pwned", "a\r\nb", "]]><x/>", "|`|``|", "\ud800", "\x1b[2J", "%0A", "<br>&amp;", "\u202e", ""])


@settings(max_examples=60, deadline=None)
@given(message=_nasty, path=_nasty, iface=_nasty, fix=_nasty, value=_nasty)
def test_every_format_survives_hostile_text(message, path, iface, fix, value):
    result = AuditResult(
        inputs=[InputInfo(path or "x", 3, 3, 0, 0, [iface], damage=[{"offset": 1, "message": value}])],
        summary=Summary(connections=1, complete=1, by_real_server={value or "rs": 1}),
        findings=[Finding(code="X1", name="n", severity=sev, title=value, message=message, fix=fix,
                          service=value or None, connection=value or None, frames=[FrameRef(0, 1)],
                          expected={value: value}, observed={"k": value})
                  for sev in (E, W, I)],
        topology=value or None)
    for fmt in FORMATS:
        out = render(result, fmt, color=(fmt == "text"))
        out.encode("utf-8")                                   # writable as UTF-8: no lone surrogates
        if fmt in ("text", "markdown", "github", "junit"):
            stripped = re.sub(r"\x1b\[[0-9;]*m", "", out) if fmt == "text" else out
            assert not re.search("[\x00-\x08\x0b-\x1f\x7f\u202e]", stripped), fmt
    assert len(render(result, "github").splitlines()) == 3
    assert all(_CMD.match(line) for line in render(result, "github").splitlines())
    from lxml import etree
    doc = etree.fromstring(render(result, "junit").encode("utf-8"))
    assert doc.get("failures") == "2"
    assert len(render(result, "jsonl").splitlines()) == 3
    json.loads(render(result, "sarif"))
