"""Rule files: schema, friendly errors with file and line, evaluation, docs, --select/--ignore.

Every file in tests/data/rules/bad/ holds one mistake and says, in its header comments, the
error it must produce (``# error: ...``) and the line (``# line: N``, or the line marked
``# <-- error``).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from lvs_inspect.checks.docs import render_index, render_namespace, render_rule
from lvs_inspect.checks.expr import Env, Kind, Namespace, Var
from lvs_inspect.checks.finding import Finding, Severity
from lvs_inspect.checks.rules import (FIELDS, LEGS, Rule, load_rule_file, load_rules, parse_selectors,
                                      select_rules)
from lvs_inspect.errors import InputError

DATA = Path(__file__).parent / "data" / "rules"
GOOD, BAD = DATA / "good", DATA / "bad"

TCP_FLAGS = Kind.flags({"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20})
PROTO = "enum:icmp=1,tcp=6,udp=17"
PAIR_FIELDS = {"ip_src": "addr", "ip_dst": "addr", "ip_ttl": "int", "ip_id": "int", "sport": "int",
               "dport": "int", "tcp_flags": TCP_FLAGS}


def namespaces() -> dict[str, Namespace]:
    common = {"real_server": "str", "service.vips": "set_addr", "director.macs": "set_mac",
              "director.vrrp_mac": Var("mac", absent=0)}
    packet = Namespace({**common, "ip_src": "addr", "ip_dst": "addr", "ip_ttl": "int", "eth_src": "mac",
                        "proto": PROTO, "tcp_flags": TCP_FLAGS, "sport": "int", "dport": "int",
                        "toa_addr": Var("addr", absent=0)}, title="test packet")
    arp = Namespace({**common, "op": "enum:request=1,reply=2", "sender_ip": "addr", "sender_mac": "mac",
                     "target_ip": "addr", "target_mac": "mac"})
    pair = Namespace({**common, "proto": PROTO, "rs.ip": "addr", "rs.port": "int",
                      "profile.ttl_decrement": "int",
                      **{f"{side}.{k}": v for side in ("in", "out") for k, v in PAIR_FIELDS.items()}})
    conn = Namespace({**common, "client": "str", "syn_retries": "int", "answered": "bool"})
    return {"packet": packet, "arp": arp, "pair": pair, "connection": conn}


@pytest.fixture(scope="module")
def good() -> dict[str, Rule]:
    return {r.code: r for r in load_rules([GOOD], namespaces())}


# =========================================================================== good files

def test_good_rules_load(good):
    assert sorted(good) == ["CONN401", "DR101", "DR199", "NAT202", "NAT210"]
    r = good["DR101"]
    assert (r.name, r.status, r.modes, r.scope, r.severity) == (
        "rs-answers-arp-for-vip", "stable", ("dr", "tun"), "arp", Severity.ERROR)
    assert r.title == "A real server answers ARP for the VIP"
    assert r.path.endswith("DR101-rs-answers-arp-for-vip.yaml") and r.line == 2
    assert r.select.text == 'op == "reply" and sender_ip in service.vips'
    assert r.names >= {"op", "sender_ip", "sender_mac", "service.vips", "director.macs", "real_server"}
    assert r.fix.text.startswith("On {real_server}:\n  sysctl -w net.ipv4.conf.all.arp_ignore=1")
    assert r.falsepositives[0].startswith("a VRRP backup director")
    assert r.tests.quiet == ("dr-good", "tun-good") and r.tests.fires[0].name == "dr-arp-leak"
    n = good["NAT202"]
    assert n.legs == ("client-director", "director-rs") and n.profiles == ("linux", "linux-legacy")
    assert [(f.name, f.count) for f in n.tests.fires] == [("nat-wrong-rewrite", 3), ("nat-ttl-bug", None)]
    assert list(n.expected) == ["destination", "port", "ttl"]
    assert good["CONN401"].fix is None and good["CONN401"].severity == Severity.INFO
    assert good["DR199"].deprecated and good["DR199"].tests.fires == ()
    assert good["NAT210"].legs == ("rs-client",)


def test_a_file_with_a_list_of_rules():
    rules = load_rule_file(GOOD / "multi.yaml", namespaces())
    assert [(r.code, r.line) for r in rules] == [("NAT210", 2), ("CONN401", 17), ("DR199", 30)]


def test_applies_to(good):
    n = good["NAT202"]
    assert n.applies_to("nat", "linux") and n.applies_to("nat") and not n.applies_to("nat", "dpvs")
    assert not n.applies_to("dr", "linux")
    assert good["DR101"].applies_to("tun", "dpvs")


def test_dr101_evaluates_and_renders_findings(good):
    r = good["DR101"]
    vip, other = 0xCB007164, 0xCB007101           # 203.0.113.100, 203.0.113.1
    dmac, rsmac = 0x020000000001, 0x02000000000B
    env = Env({"op": np.array([2, 2, 1, 2, 2], np.uint16),
               "sender_ip": np.array([vip, vip, vip, other, vip], np.uint64),
               "sender_mac": np.array([rsmac, dmac, rsmac, rsmac, 0x00005E000107], np.uint64),
               "target_ip": np.zeros(5, np.uint64), "target_mac": np.zeros(5, np.uint64),
               "real_server": np.array(["192.0.2.11", "-", "192.0.2.11", "192.0.2.11", "-"], dtype=object),
               "service.vips": {"203.0.113.100"}, "director.macs": ["02:00:00:00:00:01"],
               "director.vrrp_mac": "00:00:5e:00:01:07"})
    fires = r.violations(env)
    assert fires.tolist() == [True, False, False, False, False]
    rows = np.flatnonzero(fires)
    [f] = r.findings(env, rows)
    assert isinstance(f, Finding)
    assert f.code == "DR101" and f.severity == Severity.ERROR and f.mac == "02:00:00:00:00:0b"
    assert f.message.startswith("02:00:00:00:00:0b (192.0.2.11) claims VIP 203.0.113.100: clients")
    assert f.fix.startswith("On 192.0.2.11:\n  sysctl -w")
    assert f.expected == {"sender MAC": "02:00:00:00:00:01"}
    assert f.observed == {"sender MAC": "02:00:00:00:00:0b"}


def test_nat202_pair_evaluation_with_absent_out_leg(good):
    r = good["NAT202"]
    cip, vip, rip = 0xC6336410, 0xCB007164, 0xC000020B
    n = 4
    env = Env({"proto": np.array([6, 6, 6, 17], np.uint8),
               "in.ip_src": np.full(n, cip, np.uint64), "in.ip_dst": np.full(n, vip, np.uint64),
               "in.ip_ttl": np.array([64, 64, 64, 64], np.uint8), "in.ip_id": np.arange(n),
               "in.sport": np.full(n, 40000), "in.dport": np.full(n, 80), "in.tcp_flags": np.full(n, 2),
               "out.ip_src": np.full(n, cip, np.uint64), "out.ip_dst": np.full(n, rip, np.uint64),
               "out.ip_ttl": np.array([63, 64, 63, 0], np.uint8), "out.ip_id": np.arange(n),
               "out.sport": np.full(n, 40000), "out.dport": np.full(n, 80), "out.tcp_flags": np.full(n, 2),
               "rs.ip": np.full(n, rip, np.uint64), "rs.port": np.full(n, 80), "profile.ttl_decrement": 1,
               "real_server": np.full(n, "192.0.2.11", dtype=object), "service.vips": [vip],
               "director.macs": [], "director.vrrp_mac": None},
              present={"out": np.array([True, True, False, True])})
    # row 1: TTL not decremented; row 2: no out packet (absent: the assertion cannot hold); row 3: UDP
    assert r.violations(env).tolist() == [False, True, True, False]
    [m1, m2] = r.render_message(env, np.array([1, 2]))
    assert "with TTL 64" in m1 and "(expected 192.0.2.11:80, TTL 63)" in m1
    assert "left the director as\n" not in m1 and "-:- -> -:- with TTL -" in m2
    vals = r.render_values("observed", env, np.array([1, 2]))
    assert vals == [{"destination": "192.0.2.11", "port": "80", "ttl": "64"},
                    {"destination": "-", "port": "-", "ttl": "-"}]


def test_ipv6_literal_in_rule_resolves_per_table(good):
    r = good["NAT210"]
    v6 = (1 << 63) | 5
    env_kw = dict(values={"proto": np.array([6, 6]), "ip_src": np.array([v6, 0xC000020B], np.uint64),
                          "ip_dst": np.zeros(2, np.uint64), "ip_ttl": np.zeros(2), "eth_src": np.zeros(2),
                          "tcp_flags": np.zeros(2), "sport": np.zeros(2), "dport": np.zeros(2),
                          "toa_addr": np.zeros(2), "real_server": np.array(["a", "b"], dtype=object),
                          "service.vips": [], "director.macs": [], "director.vrrp_mac": 0}, n=2)
    # the table knows 2001:db8::99 as key v6: that row is excluded
    env = Env(addr_key=lambda t: v6 if t == "2001:db8::99" else None, **env_kw)
    assert r.violations(env).tolist() == [False, True]
    # a table that never saw it: the literal equals nothing, both rows are selected
    env = Env(addr_key=lambda t: None, **env_kw)
    assert r.violations(env).tolist() == [True, True]


def test_load_without_namespaces_checks_syntax_only():
    rules = load_rules([GOOD])
    assert len(rules) == 5 and not rules[0].select.bound
    with pytest.raises(RuntimeError, match="without a namespace"):
        rules[0].violations({"x": np.zeros(1)})
    # the whitelist still holds without a namespace
    with pytest.raises(InputError, match="unknown function '__import__'"):
        load_rule_file(BAD / "code-import.yaml")


# =========================================================================== bad files

def _expectation(path: Path) -> tuple[str, int | None]:
    text = path.read_bytes().decode("utf-8", errors="replace")
    err = re.search(r"^# error: (.*)$", text, re.M).group(1)
    m = re.search(r"^# line: (\d+)$", text, re.M)
    if m:
        return err, int(m.group(1))
    for i, line in enumerate(text.splitlines(), 1):
        if "# <-- error" in line:
            return err, i
    return err, None


BAD_FILES = sorted(BAD.glob("*.yaml"))


def test_there_are_many_bad_files():
    assert len(BAD_FILES) >= 60


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_bad_rule_file(path: Path):
    want, line = _expectation(path)
    with pytest.raises(InputError) as ei:
        load_rules([path], namespaces())
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(str(path) + ": "), msg
    assert want in msg, msg
    if line is not None:
        assert ei.value.line == line, msg
        assert f": line {line}: " in msg


def test_error_names_the_key():
    with pytest.raises(InputError) as ei:
        load_rules([BAD / "unknown-name.yaml"], namespaces())
    assert ei.value.key == "select"
    assert str(ei.value) == (f"{BAD / 'unknown-name.yaml'}: line 9: key 'select': column 24: "
                             "unknown name 'ip_tll' (did you mean 'ip_ttl'?)")


def test_duplicate_code_across_files_names_both():
    with pytest.raises(InputError) as ei:
        load_rules([DATA / "dup"], namespaces())
    msg = str(ei.value)
    assert "two.yaml: line 1: key 'code': code DUP001 is already used by " in msg
    assert "one.yaml line 1" in msg


def test_duplicate_name_across_files_names_both():
    with pytest.raises(InputError) as ei:
        load_rules([DATA / "dupname" / "a", DATA / "dupname" / "b"], namespaces())
    msg = str(ei.value)
    assert "two.yaml: line 1: key 'name': name 'first-rule' is already used by DUP001 in " in msg
    assert "one.yaml line 1" in msg


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(InputError, match="no such rule directory"):
        load_rules([tmp_path / "nope"], namespaces())
    with pytest.raises(InputError, match=r"no rule files \(\*\.yaml\)"):
        load_rules([tmp_path], namespaces())
    assert load_rules([tmp_path], namespaces(), allow_empty=True) == []


def test_hidden_files_are_skipped(tmp_path):
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.yaml").write_text("not: a rule\n")
    (tmp_path / "ok.yml").write_text((DATA / "dup" / "a" / "one.yaml").read_text())
    assert [r.code for r in load_rules([tmp_path], namespaces())] == ["DUP001"]


def test_legs_vocabulary_matches_flows():
    from lvs_inspect.flows.legs import LEGS as FLOWS_LEGS
    assert set(LEGS) <= set(FLOWS_LEGS)


# =========================================================================== select / ignore

def _codes(rules):
    return [r.code for r in rules]


def test_select_and_ignore(good):
    rules = list(good.values())
    assert _codes(select_rules(rules)) == ["CONN401", "DR101", "NAT202", "NAT210"]     # DR199 deprecated
    assert _codes(select_rules(rules, select="NAT")) == ["NAT202", "NAT210"]
    assert _codes(select_rules(rules, select="NAT2,DR")) == ["DR101", "NAT202", "NAT210"]
    assert _codes(select_rules(rules, select=["DR101"])) == ["DR101"]
    assert _codes(select_rules(rules, select="DR199")) == ["DR199"]                   # exact code
    assert _codes(select_rules(rules, select="old-check")) == ["DR199"]               # by name
    assert _codes(select_rules(rules, ignore="NAT")) == ["CONN401", "DR101"]
    assert _codes(select_rules(rules, select="NAT", ignore="NAT210")) == ["NAT202"]
    assert _codes(select_rules(rules, select="NAT202", ignore="NAT")) == ["NAT202"]   # more specific wins
    assert _codes(select_rules(rules, select="ALL", ignore="ALL")) == []
    assert _codes(select_rules(rules, preview=False)) == ["CONN401", "DR101", "NAT210"]
    assert _codes(select_rules(rules, select="NAT202", preview=False)) == ["NAT202"]
    assert parse_selectors(" DR101 , ,NAT") == ["DR101", "NAT"]


def test_unknown_selector_is_an_error(good):
    with pytest.raises(InputError) as ei:
        select_rules(list(good.values()), select="DR102X")
    assert str(ei.value).startswith("--select: 'DR102X' matches no rule")
    with pytest.raises(InputError, match=r"--ignore: 'NAT203' matches no rule \(did you mean 'NAT2\d\d'\?\)"):
        select_rules(list(good.values()), ignore="NAT203")


# =========================================================================== docs

def test_render_rule(good):
    text = render_rule(good["DR101"])
    assert text.startswith("DR101 rs-answers-arp-for-vip\n============================\n"
                           "A real server answers ARP for the VIP\n")
    for part in ("severity:   error", "status:     stable", "modes:      dr, tun",
                 "scope:      arp (one row per ARP frame)", "profiles:   all",
                 "What it checks\n    select: op == \"reply\" and sender_ip in service.vips\n"
                 "    assert: sender_mac in director.macs or sender_mac == director.vrrp_mac",
                 "Why it matters\n    With arp_ignore=0", "How to fix\n    On {real_server}:\n"
                 "      sysctl -w net.ipv4.conf.all.arp_ignore=1",
                 "False positives\n    - a VRRP backup", "References\n    - Documentation/networking/ip-sysctl.rst",
                 "Fixtures\n    fires on: dr-arp-leak\n    quiet on: dr-good, tun-good"):
        assert part in text, part
    assert max(len(line) for line in text.splitlines() if not line.startswith("defined in")) <= 88
    nat = render_rule(good["NAT202"])
    assert "legs:       client-director -> director-rs (in, out)" in nat
    assert "in preview" in nat and "nat-wrong-rewrite (3x)" in nat
    assert "expected ttl: in.ip_ttl - profile.ttl_decrement" in nat
    assert "deprecated" in render_rule(good["DR199"])


def test_render_index(good):
    text = render_index(list(good.values()))
    lines = text.splitlines()
    assert lines[0].split() == ["CODE", "NAME", "SEVERITY", "STATUS", "MODES", "TITLE"]
    assert lines[1].startswith("CONN401  syn-unanswered")
    assert "DR101    rs-answers-arp-for-vip" in text
    assert lines[-1].startswith("5 rules (1 deprecated, 1 preview, 3 stable)")
    assert render_index([]) == "no rules\n"


def test_render_namespace():
    text = render_namespace("arp", namespaces()["arp"])
    assert "op" in text and "enum:request=1,reply=2" in text
    assert "director.vrrp_mac" in text and "(absent when 0)" in text
    assert "has_flag(x" in text


def test_fields_documented_in_schema_md():
    schema = (Path(__file__).parents[1] / "rules" / "SCHEMA.md").read_text()
    for key in FIELDS:
        assert f"`{key}`" in schema, key
