"""The rule expression language: whitelist, types and coercion at load time, vectorised evaluation."""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping

import numpy as np
import pytest

from lvs_inspect.checks.expr import (UNKNOWN_ADDR_KEY, Env, ExprError, Kind, Masked, Namespace, Var,
                                     compile_expr, compile_template, format_value)

V6 = 1 << 63
TCP = Kind.flags({"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10})
NS = Namespace({
    "ip_ttl": "int", "ip_id": "int", "tcp_seq": "int", "ratio": "float", "df": "bool", "name": "str",
    "ip_src": "addr", "ip_dst": "addr", "eth_src": "mac", "op": "enum:request=1,reply=2",
    "proto": Kind.enum({"icmp": 1, "tcp": 6, "udp": 17}), "tcp_flags": TCP,
    "toa_addr": Var("addr", absent=0), "tcp_mss": Var("int", absent=0),
    "in.ip_ttl": "int", "in.ip_src": "addr", "out.ip_ttl": "int", "out.ip_src": "addr",
    "service.vips": "set_addr", "director.macs": "set_mac", "ports": "set_int", "servers": "set_str",
    "profile.ttl_decrement": "int",
})


def env(n=None, **values) -> Env:
    d = {k.replace("__", "."): v for k, v in values.items()}
    return Env(d, n)


def ev(text, n=None, **values):
    return compile_expr(text, NS).evaluate(env(n, **values)).tolist()


def err(text, want="bool", ns=NS) -> ExprError:
    with pytest.raises(ExprError) as ei:
        compile_expr(text, ns, want=want)
    return ei.value


# =========================================================================== the whitelist

@pytest.mark.parametrize("text, message", [
    ("__import__('os')", "unknown function '__import__'"),
    ("__import__('os').system('id') == 0", "calling '__import__('os').system' is not allowed"),
    ("ip_src.bit_length() == 1", "calling 'ip_src.bit_length' is not allowed"),
    ("ip_ttl.__class__ == 1", "unknown name 'ip_ttl.__class__'"),
    ("(1).__class__ == 1", "attribute access is only for dotted names like out.ip_ttl, not on '1'"),
    ("(lambda: 1)() == 1", "calling 'lambda: 1' is not allowed"),
    ("lambda: 1", "lambda: not allowed in a rule expression"),
    ("service.vips[0] == ip_src", "subscripts (x[...]): not allowed"),
    ("[x for x in service.vips] == 1", "a list comprehension: not allowed"),
    ("{x for x in ports} == 1", "a set comprehension: not allowed"),
    ("any(x for x in ports)", "unknown function 'any'"),
    ("f'{ip_ttl}' == '1'", "f-strings: not allowed"),
    ("(x := ip_ttl) == 1", "':=' (assignment expressions): not allowed"),
    ("max(*ports) == 1", "'*' unpacking is not allowed"),
    ("ip_ttl ** 2 == 4", "'**' is not allowed"),
    ("{'a': 1} == 1", "dict literals: not allowed"),
    ("eval('1') == 1", "unknown function 'eval'"),
    ("getattr(ip_src, 'x') == 1", "unknown function 'getattr'"),
    ("abs(x=ip_ttl) == 1", "abs() takes no keyword arguments"),
    ("b'x' == name", "bytes literals are not allowed"),
    ("ip_ttl(1) == 1", "'ip_ttl' is a name, not a function"),
    ("ip_ttl == == 1", "syntax error"),
    ("   ", "empty expression"),
])
def test_disallowed(text, message):
    e = err(text)
    assert message in e.message, e.message
    assert e.line >= 1 and e.col >= 1


def test_did_you_mean():
    assert err("ip_tll == 1").message == "unknown name 'ip_tll' (did you mean 'ip_ttl'?)"
    assert err("out.ip_tl == 1").message == "unknown name 'out.ip_tl' (did you mean 'out.ip_ttl'?)"
    assert err("servce.vips == 1").message.startswith("unknown name 'servce.vips' (did you mean 'service.vips'?)")
    assert err("mxa(ip_ttl, 1) == 1").message.startswith("unknown function 'mxa' (did you mean 'max'?)")
    assert err("op == 'rpely'").message == "'rpely' is not one of 'request', 'reply' (did you mean 'reply'?)"
    assert err("has_flag(tcp_flags, 'SNY')").message.startswith("unknown flag 'SNY' (did you mean 'SYN'?)")
    assert err("zzz == 1").message == "unknown name 'zzz'"
    assert "(max is a function" in err("max == 1").message


def test_error_positions():
    e = err("ip_ttl > 1 and ip_tll == 1")
    assert (e.line, e.col, e.offset) == (1, 16, 15)
    e = err("ip_ttl > 1\n  and bogus == 2")
    assert (e.line, e.col) == (2, 7)
    e = err("ip_ttl ==\n")
    assert e.line >= 1 and "syntax error" in e.message
    # a keyword before a dot (in.ip_ttl) is accepted and positions stay those of the text
    e = err("in.ip_ttl == 1 and in.ip_tll == 1")
    assert (e.col, e.message) == (20, "unknown name 'in.ip_tll' (did you mean 'in.ip_ttl'?)")
    e = err("in.ip_src == 'nope'")
    assert e.col == 14 and "'nope' is not an IPv4 or IPv6 address" in e.message
    # non-ASCII text before the error: columns count characters, not bytes
    e = err("name == 'é' and ip_tll == 1")
    assert e.col == 17
    assert str(e) == "line 1, column 17: unknown name 'ip_tll' (did you mean 'ip_ttl'?)"


# =========================================================================== types

@pytest.mark.parametrize("text, message", [
    ("eth_src == ip_src", "cannot compare with '==': 'eth_src' is a mac and 'ip_src' is an addr"),
    ("ip_src + 1 == 2", "'+' needs numbers; 'ip_src' is an addr"),
    ("ip_src + ip_dst == 2", "'+' needs numbers; 'ip_src' is an addr"),
    ("ip_ttl and df", "'and' needs conditions; 'ip_ttl' is an int (compare it: ip_ttl != 0)"),
    ("df or 1", "'or' needs conditions; '1' is an int"),
    ("not ip_ttl", "'not' needs a condition; 'ip_ttl' is an int"),
    ("ip_src < '192.0.2.1'", "'<' orders numbers only; 'ip_src' is an addr (use == or !=)"),
    ("op > 'request'", "'>' orders numbers only; 'op' is an enum"),
    ("name < 'b'", "'<' orders numbers only"),
    ("op == proto", "cannot compare with '==': 'op' is an enum and 'proto' is an enum"),
    ("op == 1", "expected one of 'request', 'reply', got an int 1"),
    ("df == 1", "expected True or False, got an int 1 (compared with 'df', bool)"),
    ("ip_ttl == 'x'", "expected a number, got a string 'x'"),
    ("ip_src == 3232235521", "expected an IP address as a string, got an int"),
    ("ip_src == '192.0.2.300'", "'192.0.2.300' is not an IPv4 or IPv6 address"),
    ("eth_src == '02:00:00:00:00'", "is not a MAC address"),
    ("eth_src == 2", "expected a MAC address as a string, got an int"),
    ("ip_ttl", "a condition must be true/false, but 'ip_ttl' is an int (compare it: ip_ttl != 0)"),
    ("'x'", "a condition must be true/false, but ''x'' is a string"),
    ("ip_src in ip_dst", "the right side of 'in' must be a set-valued name (like service.vips) or a tuple"),
    ("eth_src in service.vips", "'in': 'eth_src' is a mac but 'service.vips' holds addr values"),
    ("service.vips in service.vips", "'in' needs a single value on its left"),
    ("service.vips == ip_src", "cannot compare with '=='"),
    ("ip_ttl in (1, 'a')", "expected a number, got a string 'a'"),
    ("proto in ('tcp', 'sctp')", "'sctp' is not one of 'icmp', 'tcp', 'udp'"),
    ("(1, 2) == ip_ttl", "a tuple can only follow 'in' or 'not in'"),
    ("ip_ttl in (1, (2, 3))", "a tuple holds literals only"),
    ("ip_ttl in (1, None)", "None cannot be a member of a tuple"),
    ("~df", "'~' needs an integer; 'df' is a bool (use 'not' for conditions)"),
    ("-ip_src == 1", "unary '-' needs a number"),
    ("ip_ttl is 1", "'is' only tests presence against None"),
    ("ip_ttl < None", "'<' with None: only ==, !=, is, is not test presence"),
    ("None == None", "None compared with None"),
    ("(ip_ttl if df else ip_src) == 1", "the branches of 'if' differ"),
    ("(1 if ip_ttl else 2) == 1", "'if' needs a condition; 'ip_ttl' is an int"),
    ("abs(ip_src) == 1", "abs() needs numbers; 'ip_src' is an addr"),
    ("min(ip_ttl) == 1", "usage: min(a, b, ...)"),
    ("has_flag(ip_src, 'SYN')", "has_flag() tests a flags value; 'ip_src' is an addr"),
    ("has_flag(tcp_flags, SYN)", "has_flag() takes flag names as string literals"),
    ("has_flag(ip_ttl, 'SYN')", "'ip_ttl' has no flag names; give bit values (0x02)"),
    ("present(1)", "present() takes a name or an expression, not a literal"),
    ("tcp_flags & 'SYN|BOGUS' == 2", "unknown flag 'BOGUS'"),
    ("ip_ttl & 1.5 == 1", "'&' needs integers or flags; '1.5' is a float"),
    ("ratio << 1 == 1", "'<<' needs integers or flags; 'ratio' is a float"),
    ("ip_ttl == 99999999999999999999", "integer 99999999999999999999 does not fit in 64 bits"),
    ("'a' == 1", "a string and an int do not mix"),
])
def test_type_errors(text, message):
    e = err(text)
    assert message in e.message, e.message


def test_value_expressions():
    assert compile_expr("in.ip_ttl - profile.ttl_decrement", NS, want="value").kind.base == "int"
    assert compile_expr("ratio * 2", NS, want="value").kind.base == "float"
    assert compile_expr("ip_ttl / 2", NS, want="value").kind.base == "float"
    assert compile_expr("tcp_flags & 'SYN'", NS, want="value").kind == TCP
    assert compile_expr("ip_src", NS, want="value").kind.base == "addr"
    with pytest.raises(ValueError, match="want must be"):
        compile_expr("1", NS, want="int")
    assert err("None", want="value").message == "None alone is not a value"


# =========================================================================== coercion

def test_addr_literals_ipv4_and_ipv6():
    src = np.array([0xC0000201, 0xC0000202, V6 | 1, V6 | 2, 0], dtype=np.uint64)
    keys6 = {"2001:db8::1": V6 | 1, "2001:db8::2": V6 | 2}
    e = compile_expr("ip_src == '192.0.2.1' or ip_src == '2001:DB8::2'", NS)
    assert e.evaluate(Env({"ip_src": src}, addr_key=keys6.get)).tolist() == [True, False, False, True, False]
    # an IPv6 literal the table never saw equals nothing, and differs from everything
    e = compile_expr("ip_src == '2001:db8::99'", NS)
    assert e.evaluate(Env({"ip_src": src}, addr_key=keys6.get)).tolist() == [False] * 5
    e = compile_expr("ip_src != '2001:db8::99'", NS)
    assert e.evaluate(Env({"ip_src": src}, addr_key=keys6.get)).tolist() == [True] * 5
    # without any addr_key an IPv6 literal is unknown too; the namespace may give a default
    assert compile_expr("ip_src == '2001:db8::1'", NS).evaluate({"ip_src": src}).tolist() == [False] * 5
    ns = Namespace({"ip_src": "addr"}, addr_key=keys6.get)
    assert compile_expr("ip_src == '[2001:db8::1]'", ns).evaluate({"ip_src": src}).tolist() == \
        [False, False, True, False, False]
    # tuples of addresses mix both families
    e = compile_expr("ip_src in ('192.0.2.2', '2001:db8::1', '2001:db8::77')", NS)
    assert e.evaluate(Env({"ip_src": src}, addr_key=keys6.get)).tolist() == [False, True, True, False, False]


def test_mac_enum_flags_literals():
    macs = np.array([0x020000000002, 0x02000000000B], dtype=np.uint64)
    assert ev("eth_src == '02:00:00:00:00:02'", eth_src=macs) == [True, False]
    assert ev("eth_src == '02-00-00-00-00-0B'", eth_src=macs) == [False, True]
    ops = np.array([1, 2, 2], dtype=np.uint16)
    assert ev("op == 'reply'", op=ops) == [False, True, True]
    assert ev("op in ('request',)", op=ops) == [True, False, False]
    assert ev("'reply' == op", op=ops) == [False, True, True]
    flags = np.array([0x02, 0x12, 0x10, 0x04, 0x11], dtype=np.uint16)
    assert ev("tcp_flags == 'SYN'", tcp_flags=flags) == [True, False, False, False, False]
    assert ev("tcp_flags & 'SYN|ACK' == 'SYN|ACK'", tcp_flags=flags) == [False, True, False, False, False]
    assert ev("has_flag(tcp_flags, 'SYN', 'ACK')", tcp_flags=flags) == [False, True, False, False, False]
    assert ev("has_flag(tcp_flags, 'ACK')", tcp_flags=flags) == [False, True, True, False, True]
    assert ev("any_flag(tcp_flags, 'FIN', 'RST')", tcp_flags=flags) == [False, False, False, True, True]
    assert ev("has_flag(tcp_flags, 0x10)", tcp_flags=flags) == [False, True, True, False, True]
    assert ev("tcp_flags & 0x04 != 0", tcp_flags=flags) == [False, False, False, True, False]
    assert ev("ip_ttl == 1.0", ip_ttl=np.array([1, 2])) == [True, False]
    assert ev("ratio > 1", ratio=np.array([0.5, 1.5])) == [False, True]
    assert ev("df == True", df=np.array([1, 0])) == [True, False]
    assert ev("name == 'a'", name=np.array(["a", "b"])) == [True, False]
    assert ev("name in servers", name=np.array(["a", "b"], dtype=object), servers={"b", "c"}) == [False, True]


def test_set_constants_take_keys_text_or_addresses():
    src = np.array([0xCB007164, 0xCB007165, V6 | 3], dtype=np.uint64)
    e = compile_expr("ip_src in service.vips", NS)
    for vips in ({"203.0.113.100"}, [0xCB007164], frozenset({ipaddress.ip_address("203.0.113.100")}),
                 np.array([0xCB007164], dtype=np.uint64)):
        assert e.evaluate(Env({"ip_src": src, "service.vips": vips})).tolist() == [True, False, False]
    env6 = Env({"ip_src": src, "service.vips": ["2001:db8::3", "2001:db8::4"]},
               addr_key={"2001:db8::3": V6 | 3}.get)
    assert e.evaluate(env6).tolist() == [False, False, True]
    assert e.evaluate(Env({"ip_src": src, "service.vips": set()})).tolist() == [False] * 3
    assert compile_expr("ip_src not in service.vips", NS).evaluate(
        Env({"ip_src": src, "service.vips": set()})).tolist() == [True] * 3
    assert ev("eth_src in director.macs", eth_src=np.array([2, 3], np.uint64),
              director__macs={"00:00:00:00:00:03"}) == [False, True]
    assert ev("ip_ttl in ports", ip_ttl=np.array([80, 81]), ports=[80, 443]) == [True, False]
    assert ev("'203.0.113.100' in service.vips", n=2, service__vips={"203.0.113.100"}) == [True, True]


# =========================================================================== arithmetic

def test_arithmetic_widens_unsigned_columns():
    ttl = np.array([0, 1, 64], dtype=np.uint8)
    assert compile_expr("ip_ttl - 1", NS, want="value").evaluate({"ip_ttl": ttl}).tolist() == [-1, 0, 63]
    assert ev("ip_ttl - 1 < 0", ip_ttl=ttl) == [True, False, False]
    assert ev("ip_ttl + 250 > 255", ip_ttl=ttl) == [False, False, True]
    seq = np.array([0xFFFFFFFF, 5], dtype=np.uint32)
    assert ev("(tcp_seq + 2) % 4294967296 == 1", tcp_seq=seq) == [True, False]
    assert ev("ip_ttl // 2 == 32 and ip_ttl % 7 == 1", ip_ttl=ttl) == [False, False, True]
    assert ev("-ip_ttl == -64", ip_ttl=ttl) == [False, False, True]
    assert ev("~ip_id & 0xFF == 0xFE", ip_id=np.array([1, 2])) == [True, False]
    assert ev("1 << ip_ttl == 2", ip_ttl=ttl) == [False, True, False]
    assert ev("ip_id >> 8 == 1", ip_id=np.array([0x100, 0x200])) == [True, False]
    assert ev("ip_id ^ 3 == 0 or ip_id | 4 == 6", ip_id=np.array([3, 2, 1])) == [True, True, False]
    assert ev("abs(ip_ttl - 10) == 10", ip_ttl=ttl) == [True, False, False]
    assert ev("min(ip_ttl, 5, 3) == 3 and max(ip_ttl, 1) == ip_ttl", ip_ttl=ttl) == [False, False, True]
    assert ev("ratio * 2 == 3.0 and ip_ttl / 2 == 32.0", ratio=np.array([1.5, 1.5, 1.5]), ip_ttl=ttl) == \
        [False, False, True]
    assert ev("1 <= ip_ttl < 64", ip_ttl=ttl) == [False, True, False]
    assert ev("0 < ip_ttl <= 64 != 63", ip_ttl=ttl) == [False, True, True]
    # a constant-only expression is broadcast
    assert ev("2 + 2 == 4", n=3) == [True, True, True]
    assert ev("'a' == 'b'", n=2) == [False, False]


def test_division_by_zero_and_bad_shift_are_absent():
    v = compile_expr("ip_ttl // ip_id", NS, want="value")
    vals, present = v.evaluate_masked({"ip_ttl": np.array([6, 6]), "ip_id": np.array([3, 0])})
    assert vals[0] == 2 and present.tolist() == [True, False]
    assert ev("ip_ttl % ip_id == 0", ip_ttl=np.array([6, 6]), ip_id=np.array([3, 0])) == [True, False]
    assert ev("ip_ttl / ip_id != 1", ip_ttl=np.array([6, 6]), ip_id=np.array([3, 0])) == [True, False]
    assert ev("present(1 << ip_ttl)", ip_ttl=np.array([3, 64, -1])) == [True, False, False]


def test_conditional_expression():
    ttl = np.array([10, 20, 30])
    df = np.array([True, False, True])
    assert compile_expr("ip_ttl if df else 0", NS, want="value").evaluate({"ip_ttl": ttl, "df": df}).tolist() == \
        [10, 0, 30]
    assert ev("(ip_ttl if df else ratio) > 15", ip_ttl=ttl, df=df, ratio=np.array([99.5, 1.0, 1.0])) == \
        [False, False, True]
    assert ev("(ip_ttl if df else None) is None", ip_ttl=ttl, df=df) == [False, True, False]
    assert ev("('a' if df else 'b') == name", df=df, name=np.array(["a", "a", "b"])) == [True, False, False]


# =========================================================================== absent values

def test_absent_values():
    n = 4
    ttl = Masked(np.array([64, 64, 0, 0]), np.array([True, False, True, False]))
    assert ev("ip_ttl == 64", ip_ttl=ttl) == [True, False, False, False]
    assert ev("ip_ttl != 64", ip_ttl=ttl) == [False, False, True, False]          # absent: False
    assert ev("not (ip_ttl == 64)", ip_ttl=ttl) == [False, True, True, True]      # absent: True
    assert ev("ip_ttl in (0, 64)", ip_ttl=ttl) == [True, False, True, False]
    assert ev("ip_ttl not in (1,)", ip_ttl=ttl) == [True, False, True, False]
    assert ev("ip_ttl - 1 == 63", ip_ttl=ttl) == [True, False, False, False]
    assert ev("present(ip_ttl)", ip_ttl=ttl) == [True, False, True, False]
    assert ev("present(ip_ttl + ip_id)", ip_ttl=ttl, ip_id=Masked(np.zeros(n), np.array([1, 1, 0, 1]))) == \
        [True, False, False, False]
    assert ev("ip_ttl is None", ip_ttl=ttl) == [False, True, False, True]
    assert ev("ip_ttl == None", ip_ttl=ttl) == [False, True, False, True]
    assert ev("ip_ttl is not None", ip_ttl=ttl) == [True, False, True, False]
    assert ev("None != ip_ttl", ip_ttl=ttl) == [True, False, True, False]
    assert ev("df or ip_ttl == 0", df=Masked(np.ones(n, bool), np.array([0, 0, 0, 1], bool)), ip_ttl=ttl) == \
        [False, False, True, True]
    # a declared sentinel: toa_addr 0 and tcp_mss 0 mean "no option"
    assert ev("toa_addr is None", toa_addr=np.array([0, 0xC6336410], np.uint64)) == [True, False]
    assert ev("toa_addr != '198.51.100.16'", toa_addr=np.array([0, 0xC6336411], np.uint64)) == [False, True]
    assert ev("tcp_mss < 1460", tcp_mss=np.array([0, 1400])) == [False, True]
    # a constant given as None is absent everywhere
    assert ev("ip_ttl == profile.ttl_decrement", ip_ttl=np.array([1, 1]), profile__ttl_decrement=None) == \
        [False, False]
    # prefix masks: every out.* name is absent where the out leg has no packet
    e = Env({"in.ip_ttl": np.array([64, 64, 64]), "out.ip_ttl": np.array([63, 64, 0]),
             "profile.ttl_decrement": 1}, present={"out": np.array([True, True, False])})
    check = compile_expr("out.ip_ttl == in.ip_ttl - profile.ttl_decrement", NS)
    assert check.evaluate(e).tolist() == [True, False, False]
    vals, present = compile_expr("out.ip_ttl", NS, want="value").evaluate_masked(e)
    assert present.tolist() == [True, True, False]


# =========================================================================== vectorised evaluation

def test_vectorised_100k_rows_against_numpy():
    n = 100_000
    rng = np.random.default_rng(7)
    ttl = rng.integers(0, 256, n).astype(np.uint8)
    src = (0xCB007100 + rng.integers(0, 8, n)).astype(np.uint64)
    flags = rng.integers(0, 32, n).astype(np.uint16)
    op = rng.integers(1, 3, n).astype(np.uint16)
    out_ttl = rng.integers(0, 256, n).astype(np.uint8)
    present = rng.random(n) < 0.9

    class Lazy(Mapping):
        """Counts reads: each used name is read once per Env, unused names never."""
        def __init__(self, d):
            self.d, self.reads = d, []

        def __getitem__(self, k):
            self.reads.append(k)
            return self.d[k]

        def __iter__(self):
            return iter(self.d)

        def __len__(self):
            return len(self.d)

    values = Lazy({"ip_ttl": ttl, "ip_src": src, "tcp_flags": flags, "op": op, "in.ip_ttl": ttl,
                   "out.ip_ttl": Masked(out_ttl, present), "profile.ttl_decrement": 1,
                   "service.vips": {"203.0.113.1", "203.0.113.2"}, "eth_src": np.zeros(n, np.uint64)})
    e = Env(values, n)
    text = ("op == 'reply' and ip_src in service.vips and has_flag(tcp_flags, 'SYN') "
            "or out.ip_ttl != in.ip_ttl - profile.ttl_decrement and ip_ttl > 1")
    got = compile_expr(text, NS).evaluate(e)
    vip = (src == 0xCB007101) | (src == 0xCB007102)
    want = ((op == 2) & vip & ((flags & 2) == 2)) | \
        (present & (out_ttl.astype(np.int64) != ttl.astype(np.int64) - 1) & (ttl > 1))
    assert got.dtype == np.bool_ and got.shape == (n,)
    assert np.array_equal(got, want)
    assert 1000 < int(got.sum()) < n
    assert sorted(values.reads) == sorted(["op", "ip_src", "service.vips", "tcp_flags", "out.ip_ttl",
                                           "in.ip_ttl", "profile.ttl_decrement", "ip_ttl"])
    # a second expression on the same Env reuses the converted columns
    compile_expr("ip_ttl > 3 and op == 'request'", NS).evaluate(e)
    assert values.reads.count("ip_ttl") == 1 and values.reads.count("op") == 1
    # value expressions too
    v, p = compile_expr("out.ip_ttl - in.ip_ttl", NS, want="value").evaluate_masked(e)
    assert v.shape == (n,) and np.array_equal(p, present)
    assert np.array_equal(v[present], out_ttl[present].astype(np.int64) - ttl[present])


# =========================================================================== env

def test_env_checks():
    e = compile_expr("ip_ttl == 1", NS)
    with pytest.raises(ValueError, match="'ip_ttl' has 2 rows, expected 3"):
        e.evaluate(Env({"ip_ttl": np.zeros(2), "x": np.zeros(3)}, 3))
    with pytest.raises(KeyError, match="no value for 'ip_ttl'"):
        e.evaluate(Env({"x": np.zeros(3)}))
    with pytest.raises(ValueError, match="no array among the values"):
        Env({"a": 1})
    with pytest.raises(ValueError, match="give n"):
        Env(type("M", (Mapping,), {"__getitem__": lambda s, k: 1, "__iter__": lambda s: iter(()),
                                   "__len__": lambda s: 0})())
    with pytest.raises(ValueError, match="presence mask 'out' has shape"):
        Env({"a": np.zeros(3)}, present={"out": np.zeros(2, bool)})
    with pytest.raises(ValueError, match="does not fit kind addr"):
        compile_expr("ip_src == '192.0.2.1'", NS).evaluate(Env({"ip_src": "not an address"}, 1))
    assert e.evaluate(Env({"ip_ttl": 1}, 2)).tolist() == [True, True]        # a scalar constant


def test_unbound_expression_cannot_evaluate():
    e = compile_expr("foo.bar == 1 and has_flag(x, 'ANY')", None)
    assert not e.bound and e.names == {"foo.bar", "x"}
    with pytest.raises(RuntimeError, match="without a namespace"):
        e.evaluate({"x": np.zeros(1)})
    with pytest.raises(ExprError, match="unknown function 'exec'"):
        compile_expr("exec('x')", None)


# =========================================================================== kinds, namespace

def test_kind_specs():
    assert Kind.parse("int") == Kind("int")
    assert Kind.parse("set_addr") == Kind("addr", True)
    k = Kind.parse("enum:request=1,reply=2")
    assert k.code("reply") == 2 and k.label(1) == "request" and str(k) == "enum:request=1,reply=2"
    assert Kind.parse("enum:a,b,c").code("c") == 2
    f = Kind.parse("flags:FIN=0x1,SYN=0x2")
    assert f == Kind.flags({"FIN": 1, "SYN": 2}) and str(f) == "flags:FIN=0x1,SYN=0x2"
    assert Kind.parse(str(f)) == f and Kind.parse("set_enum:a=1").is_set
    for bad, msg in (("integer", "unknown kind 'integer' (did you mean 'int'?)"), ("enum", "needs its labels"),
                     ("flags:A", "needs its bit value"), ("int:x", "only enum and flags take labels"),
                     ("enum:a,a", "labels must be unique")):
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
            Kind.parse(bad)
    with pytest.raises(ValueError, match="not a \\(dotted\\) identifier"):
        Namespace({"out.": "int"})
    ns = Namespace({"a": "int"}).extend({"b.c": Var("mac", doc="x")})
    assert "b.c" in ns and ns.kind("b.c").base == "mac" and len(ns) == 2 and ns["b.c"].doc == "x"


def test_format_value():
    assert format_value(Kind("addr"), 0xC0000201) == "192.0.2.1"
    assert format_value(Kind("addr"), V6 | 4) == "<ipv6 #4>"
    assert format_value(Kind("addr"), V6 | 4, addr_str=lambda k: "2001:db8::4") == "2001:db8::4"
    assert format_value(Kind("addr"), int(UNKNOWN_ADDR_KEY)) == "(unknown address)"
    assert format_value(Kind("mac"), 0x02000000000B) == "02:00:00:00:00:0b"
    assert format_value(Kind.parse("enum:request=1,reply=2"), 2) == "reply"
    assert format_value(Kind.parse("enum:request=1,reply=2"), 9) == "9"
    assert format_value(TCP, 0x12) == "SYN|ACK" and format_value(TCP, 0) == "0"
    assert format_value(TCP, 0x102) == "SYN|0x100"
    assert format_value(Kind("bool"), True) == "true" and format_value(Kind("float"), 0.25) == "0.25"
    assert format_value(Kind("addr", True), [0xC0000202, 0xC0000201]) == "192.0.2.1, 192.0.2.2"


# =========================================================================== templates

def test_template_render():
    t = compile_template("{eth_src} claims {ip_src} ({op}, {tcp_flags}); TTL {in.ip_ttl - 1} {{literal}}", NS)
    assert t.names == {"eth_src", "ip_src", "op", "tcp_flags", "in.ip_ttl"}
    e = Env({"eth_src": np.array([0x02000000000B, 2], np.uint64),
             "ip_src": np.array([0xCB007164, V6 | 1], np.uint64), "op": np.array([2, 1]),
             "tcp_flags": np.array([0x12, 0]), "in.ip_ttl": Masked(np.array([64, 0]), np.array([True, False]))},
            addr_str=lambda k: "2001:db8::1" if k == V6 | 1 else str(ipaddress.IPv4Address(k)))
    assert t.render(e) == ["02:00:00:00:00:0b claims 203.0.113.100 (reply, SYN|ACK); TTL 63 {literal}",
                           "00:00:00:00:00:02 claims 2001:db8::1 (request, 0); TTL - {literal}"]
    assert t.render(e, np.array([1])) == [t.render(e)[1]]
    assert t.render(e, np.array([False, True])) == [t.render(e)[1]]
    assert compile_template("no fields", NS).render(e) == ["no fields", "no fields"]
    assert compile_template("{'}' if df else 'x'}", NS).fields[0].text == "'}' if df else 'x'"


@pytest.mark.parametrize("text, message, offset", [
    ("TTL {ip_tl} low", "unknown name 'ip_tl' (did you mean 'ip_ttl'?)", 5),
    ("TTL {ip_ttl", "unclosed '{' in a template", 4),
    ("TTL ip_ttl}", "single '}' in a template", 10),
    ("TTL {}", "empty template field", 4),
    ("TTL {ip_ttl {x}}", "'{' inside a template field", 12),
    ("a\nb {ip_ttl + ip_src}", "'+' needs numbers; 'ip_src' is an addr", 14),
    ("{__import__('os')}", "unknown function '__import__'", 1),
    ("{lambda: 1}", "lambda: not allowed", 1),
])
def test_template_errors(text, message, offset):
    with pytest.raises(ExprError) as ei:
        compile_template(text, NS)
    assert message in ei.value.message
    assert ei.value.offset == offset
    assert ei.value.text == text
