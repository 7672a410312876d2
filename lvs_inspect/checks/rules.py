"""Rule files: load ``rules/**/*.yaml`` into :class:`Rule` objects, with friendly errors.

The fields of a rule file are settled in ``rules/SCHEMA.md`` (the one place); this module
enforces them. A file holds one rule (a mapping) or several (a list of mappings). Every
error is an :class:`~lvs_inspect.errors.InputError` naming the file, the line, the key and,
inside an expression or a template, the column::

    rules/dr/DR101.yaml: line 7: key 'select': column 18: unknown name 'sender_mca' (did you mean 'sender_mac'?)

API::

    rules = load_rules([rules_dir(), Path("extra")], namespaces)   # namespaces: {scope: Namespace}
    rules = select_rules(rules, select="DR,NAT202", ignore="DR104")
    for rule in rules:
        if rule.applies_to(mode, profile):
            fires = rule.violations(env)                  # bool array: select and not assert
            findings = rule.findings(env, np.flatnonzero(fires))

``namespaces=None`` checks every expression for syntax and the whitelist only (enough for
``lvs-inspect rules`` to print documentation); such rules cannot be evaluated.
"""
from __future__ import annotations

import bisect
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import yaml

from ..errors import InputError
from ..topology.model import PROFILES, Mode
from .expr import Env, Expr, ExprError, Namespace, Template, compile_expr, compile_template
from .finding import Finding, Severity

__all__ = ["Rule", "RuleTests", "FixtureCase", "load_rules", "load_rule_file", "select_rules",
           "parse_selectors", "FIELDS", "SCOPES", "STATUSES", "SEVERITIES", "MODES", "LEGS",
           "PAIRS", "PROFILE_NAMES", "CODE_RE", "NAME_RE"]

# =========================================================================== vocabulary

#: libyaml when PyYAML was built with it (ten times faster); its nodes carry the same marks
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

CODE_RE = re.compile(r"^[A-Z]{2,5}[0-9]{3}$")
NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
FIXTURE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*$")  # a folder under fixtures/

STATUSES = ("preview", "stable", "deprecated")
SCOPES = ("packet", "pair", "connection", "arp", "service")
SEVERITIES = ("error", "warning", "info")
MODES = tuple(m.value for m in Mode)
PROFILE_NAMES = tuple(PROFILES)
#: the hops a packet can be on (lvs_inspect.flows.legs.LEGS without "other")
LEGS = ("client-director", "director-rs", "rs-director", "director-client", "rs-client", "client-rs")
#: pair scope: a packet entering the director on the first leg and leaving it on the second
PAIRS = (("client-director", "director-rs"), ("rs-director", "director-client"))

#: every key of a rule file: key -> (required, what it holds); the order is the documented one
FIELDS: dict[str, tuple[str, str]] = {
    "code": ("yes", "stable code, 2-5 capitals and 3 digits (DR101); never reused"),
    "name": ("yes", "kebab-case readable name (rs-answers-arp-for-vip)"),
    "title": ("yes", "one line saying what is wrong"),
    "status": ("yes", "preview | stable | deprecated"),
    "modes": ("yes", "list of nat, dr, tun, fullnat"),
    "scope": ("yes", "packet | pair | connection | arp | service"),
    "legs": ("pair scope", "pair: [in-leg, out-leg]; packet: optional list of legs"),
    "profiles": ("no", "list of linux, linux-legacy, alibaba, dpvs (default: all)"),
    "severity": ("yes", "error | warning | info"),
    "select": ("select or assert", "condition choosing the rows the rule looks at (default: all)"),
    "assert": ("select or assert", "condition that must hold on every selected row (default: never)"),
    "message": ("yes", "template: what is wrong, with {fields}"),
    "mac": ("no", "expression: the MAC the finding is about"),
    "expected": ("no", "mapping label -> expression: the values the mode requires"),
    "observed": ("no", "mapping label -> expression: the values seen"),
    "why": ("yes", "why it matters"),
    "fix": ("error/warning", "template: how to fix it (sysctl, route, setting)"),
    "falsepositives": ("no", "list: benign situations that trigger the rule"),
    "references": ("no", "list: documentation, source files, RFCs"),
    "tests": ("unless deprecated", "fires: [fixture or {fixture: count}], quiet: [fixture]"),
}
_REQUIRED = ("code", "name", "title", "status", "modes", "scope", "severity", "message", "why")


# =========================================================================== the model

@dataclass(frozen=True)
class FixtureCase:
    """A fixture the rule must fire on; ``count``: exactly that many findings (None: at least one)."""

    name: str
    count: int | None = None


@dataclass(frozen=True)
class RuleTests:
    fires: tuple[FixtureCase, ...] = ()
    quiet: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class Rule:
    code: str
    name: str
    title: str
    status: str
    modes: tuple[str, ...]
    scope: str
    severity: Severity
    message: Template
    why: str
    legs: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()            # empty: every profile
    select: Expr | None = None
    assertion: Expr | None = None             # the file's `assert`
    fix: Template | None = None
    mac: Expr | None = None
    expected: dict[str, Expr] = field(default_factory=dict)
    observed: dict[str, Expr] = field(default_factory=dict)
    falsepositives: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    tests: RuleTests = RuleTests()
    path: str = ""
    line: int = 0

    def __repr__(self) -> str:
        return f"Rule({self.code} {self.name})"

    @property
    def deprecated(self) -> bool:
        return self.status == "deprecated"

    @property
    def names(self) -> frozenset[str]:
        """Every namespace name the rule reads (select, assert, templates, values)."""
        out: set[str] = set()
        for e in self.expressions():
            out |= e.names
        return frozenset(out)

    def expressions(self) -> list[Expr]:
        out = [e for e in (self.select, self.assertion, self.mac) if e is not None]
        out += self.message.fields + (self.fix.fields if self.fix else [])
        out += list(self.expected.values()) + list(self.observed.values())
        return out

    def applies_to(self, mode: str, profile: str | None = None) -> bool:
        """True when the rule checks services in ``mode`` under ``profile``."""
        if str(mode) not in self.modes:
            return False
        return not self.profiles or profile is None or str(profile) in self.profiles

    def violations(self, env: Env | Mapping[str, Any], n: int | None = None) -> np.ndarray:
        """Bool array: rows where ``select`` holds and ``assert`` does not (vectorised)."""
        e = env if isinstance(env, Env) else Env(env, n)
        sel = self.select.evaluate(e) if self.select is not None else np.ones(e.n, dtype=bool)
        if self.assertion is None:
            return sel
        return sel & ~self.assertion.evaluate(e)

    def render_message(self, env: Env, rows) -> list[str]:
        return self.message.render(env, rows)

    def render_fix(self, env: Env, rows) -> list[str]:
        if self.fix is None:
            return [""] * _count(env, rows)
        return self.fix.render(env, rows)

    def render_values(self, which: str, env: Env, rows) -> list[dict[str, str]]:
        """``which`` = "expected" or "observed": one {label: text} per row."""
        exprs = self.expected if which == "expected" else self.observed
        cols = {label: e.format(env, rows) for label, e in exprs.items()}
        return [{label: col[i] for label, col in cols.items()} for i in range(_count(env, rows))]

    def findings(self, env: Env, rows) -> list[Finding]:
        """One Finding per row of ``rows`` with what the rule knows (code, name, severity,
        title, message, fix, mac, expected, observed); the engine adds service, real server,
        connection and frames."""
        msgs = self.render_message(env, rows)
        fixes = self.render_fix(env, rows)
        exp = self.render_values("expected", env, rows)
        obs = self.render_values("observed", env, rows)
        macs = self.mac.format(env, rows) if self.mac is not None else [None] * len(msgs)
        return [Finding(code=self.code, name=self.name, severity=self.severity, message=m, fix=f,
                        title=self.title, mac=(mac if mac not in (None, "-") else None),
                        expected=x, observed=o)
                for m, f, x, o, mac in zip(msgs, fixes, exp, obs, macs)]


def _count(env: Env, rows) -> int:
    if rows is None:
        return env.n
    if isinstance(rows, np.ndarray) and rows.dtype == np.bool_:
        return int(rows.sum())
    return len(rows)


# =========================================================================== YAML with positions

def _suggest(word: str, choices: Iterable[str]) -> str:
    m = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{m[0]}'?)" if m else ""


def _kind_of_node(node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag.endswith(":null"):
        return "nothing"
    text = " ".join(str(node.value).split())
    return f"'{text[:40]}...'" if len(text) > 40 else f"'{text}'"


def _one_line(message: str) -> str:
    return " ".join(message.split()) if "\n" in message else message


class _Source:
    """One rule file's text, for positions: YAML marks are 0-based."""

    def __init__(self, path: str, text: str):
        self.path = path
        self.text = text
        self.starts = [0]
        for i, ch in enumerate(text):
            if ch == "\n":
                self.starts.append(i + 1)

    def line_col(self, index: int) -> tuple[int, int]:
        i = bisect.bisect_right(self.starts, index) - 1
        return i + 1, index - self.starts[i] + 1

    def error(self, node, message: str, key: str | None = None) -> InputError:
        line = node.start_mark.line + 1 if node is not None else None
        return InputError(self.path, _one_line(message), line=line, key=key)

    def scalar_index(self, node: yaml.ScalarNode, offset: int) -> int:
        """Index in the file of character ``offset`` of the scalar's (folded, unescaped) value.

        Folding and escapes change only whitespace and a few characters, so the value's
        non-blank characters are matched in order against the raw text of the node."""
        start, end = node.start_mark.index, node.end_mark.index
        if node.style in ("|", ">"):
            nl = self.text.find("\n", start, end)
            start = nl + 1 if nl >= 0 else start
        elif node.style in ("'", '"'):
            start += 1
        value = node.value
        j = start
        for i, ch in enumerate(value):
            if i == offset:
                if ch.isspace():
                    # point at the next non-blank raw character
                    while j < end and self.text[j].isspace():
                        j += 1
                    return min(j, max(start, end - 1))
                k = self.text.find(ch, j, end)
                return k if k >= 0 else min(j, max(start, end - 1))
            if ch.isspace():
                continue
            k = self.text.find(ch, j, end)
            if k >= 0:
                j = k + 1
        return min(j, max(start, end - 1)) if end > start else start

    def expr_error(self, node: yaml.ScalarNode, lead: int, err: ExprError, key: str) -> InputError:
        line, col = self.line_col(self.scalar_index(node, lead + err.offset))
        return InputError(self.path, _one_line(f"column {col}: {err.message}"), line=line, key=key)


# =========================================================================== loading

def load_rules(dirs: Sequence[Path | str] | Path | str, namespaces: Mapping[str, Namespace] | None = None,
               *, allow_empty: bool = False) -> list[Rule]:
    """Load every ``*.yaml``/``*.yml`` under each directory (recursively; a file path is read
    as one rule file), compile the expressions against ``namespaces[rule.scope]`` and return
    the rules sorted by code. Raises InputError for a bad file, a missing directory, a
    directory without rule files (unless ``allow_empty``), and duplicate codes or names."""
    if isinstance(dirs, (str, Path)):
        dirs = [dirs]
    files: list[Path] = []
    for d in dirs:
        p = Path(d)
        if p.is_file():
            files.append(p)
            continue
        if not p.is_dir():
            raise InputError(str(d), "no such rule directory")
        found = sorted(x for x in p.rglob("*") if x.suffix in (".yaml", ".yml") and x.is_file()
                       and not any(part.startswith(".") for part in x.relative_to(p).parts))
        if not found and not allow_empty:
            raise InputError(str(d), "no rule files (*.yaml) in this directory")
        files.extend(found)
    rules: list[Rule] = []
    by_code: dict[str, Rule] = {}
    by_name: dict[str, Rule] = {}
    for f in files:
        for r in load_rule_file(f, namespaces):
            if r.code in by_code:
                o = by_code[r.code]
                raise InputError(r.path, f"code {r.code} is already used by {o.path} line {o.line} "
                                         "(codes are never reused)", line=r.line, key="code")
            if r.name in by_name:
                o = by_name[r.name]
                raise InputError(r.path, f"name '{r.name}' is already used by {o.code} in {o.path} "
                                         f"line {o.line}", line=r.line, key="name")
            by_code[r.code] = r
            by_name[r.name] = r
            rules.append(r)
    rules.sort(key=lambda r: r.code)
    return rules


def load_rule_file(path: Path | str, namespaces: Mapping[str, Namespace] | None = None) -> list[Rule]:
    """The rules of one file (a mapping: one rule; a list of mappings: several)."""
    spath = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise InputError(spath, e.strerror or str(e)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(spath, f"not UTF-8 text ({e.reason})", offset=e.start) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    src = _Source(spath, text)
    loader = _LOADER(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            msg = " ".join(x for x in (e.context, e.problem) if x) or "YAML syntax error"
            raise InputError(spath, f"YAML: {msg}", line=mark.line + 1 if mark else None) from None
        except yaml.YAMLError as e:
            raise InputError(spath, f"YAML: {e}") from None
        if root is None:
            raise InputError(spath, "empty rule file")
        if isinstance(root, yaml.MappingNode):
            items = [root]
        elif isinstance(root, yaml.SequenceNode):
            items = list(root.value)
            if not items:
                raise src.error(root, "empty list of rules")
        else:
            raise src.error(root, "a rule file holds a mapping (one rule) or a list of rules, "
                                  f"not {_kind_of_node(root)}")
        out = []
        for node in items:
            if not isinstance(node, yaml.MappingNode):
                raise src.error(node, f"each rule is a mapping of keys (code, name, ...), not {_kind_of_node(node)}")
            out.append(_RuleParser(src, loader, node, namespaces).parse())
        return out
    finally:
        loader.dispose()


class _RuleParser:
    def __init__(self, src: _Source, loader, node: yaml.MappingNode, namespaces):
        self.src = src
        self.loader = loader
        self.node = node
        self.namespaces = namespaces
        self.ns: Namespace | None = None
        self.keys: dict[str, tuple[Any, Any]] = {}

    def err(self, node, message: str, key: str | None = None) -> InputError:
        return self.src.error(node, message, key)

    # ---- structure
    def parse(self) -> Rule:
        for knode, vnode in self.node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise self.err(knode, "keys are plain words (code, name, ...)")
            k = knode.value
            if k in self.keys:
                raise self.err(knode, f"duplicate key (first on line {self.keys[k][0].start_mark.line + 1})", k)
            self.keys[k] = (knode, vnode)
        for k, (knode, _) in self.keys.items():
            if k not in FIELDS:
                raise self.err(knode, f"unknown key '{k}'{_suggest(k, FIELDS)}", k)
        missing = [k for k in _REQUIRED if k not in self.keys]
        if missing:
            which = ", ".join(f"'{k}'" for k in missing)
            raise self.err(self.node, f"missing required key{'s' if len(missing) > 1 else ''} {which}")

        code = self.text("code")
        if not CODE_RE.match(code):
            raise self.err(self.v("code"), f"code '{code}' must be 2-5 capital letters and 3 digits, like DR101", "code")
        name = self.text("name")
        if not NAME_RE.match(name):
            raise self.err(self.v("name"), f"name '{name}' must be kebab-case (lower-case words joined "
                                            "by '-'), like rs-answers-arp-for-vip", "name")
        title = self.text("title")
        if "\n" in title:
            raise self.err(self.v("title"), "title is one line", "title")
        status = self.choice("status", STATUSES)
        modes = self.choices("modes", MODES)
        scope = self.choice("scope", SCOPES)
        legs = self.legs(scope)
        profiles = self.choices("profiles", PROFILE_NAMES) if "profiles" in self.keys else ()
        severity = Severity.parse(self.choice("severity", SEVERITIES))

        if self.namespaces is not None:
            ns = self.namespaces.get(scope)
            if ns is None:
                raise self.err(self.v("scope"), f"scope '{scope}' has no namespace in this version "
                                                 f"(available: {', '.join(sorted(self.namespaces))})", "scope")
            self.ns = ns
        if "select" not in self.keys and "assert" not in self.keys:
            raise self.err(self.node, "a rule needs 'select', 'assert' or both")
        select = self.expr("select", "bool") if "select" in self.keys else None
        assertion = self.expr("assert", "bool") if "assert" in self.keys else None
        message = self.template("message")
        mac = self.expr("mac", "value") if "mac" in self.keys else None
        if mac is not None and mac.kind.base not in ("mac", "any"):
            raise self.err(self.v("mac"), f"'mac' must be a MAC address expression, "
                                          f"'{mac.text}' is {mac.kind.describe()}", "mac")
        expected = self.value_map("expected")
        observed = self.value_map("observed")
        why = self.text("why")
        if "fix" in self.keys:
            fix = self.template("fix")
        elif severity >= Severity.WARNING:
            raise self.err(self.node, f"missing required key 'fix' (every {severity} rule says how to fix it)")
        else:
            fix = None
        falsepositives = self.text_list("falsepositives") if "falsepositives" in self.keys else ()
        references = self.text_list("references") if "references" in self.keys else ()
        if "tests" in self.keys:
            tests = self.tests()
        elif status != "deprecated":
            raise self.err(self.node, "missing required key 'tests' (fixtures the rule fires on and "
                                      "stays quiet on)")
        else:
            tests = RuleTests()
        if status != "deprecated" and (not tests.fires or not tests.quiet):
            which = "fires" if not tests.fires else "quiet"
            raise self.err(self.v("tests"), f"tests needs a non-empty '{which}' list", "tests")
        return Rule(code=code, name=name, title=title, status=status, modes=modes, scope=scope,
                    severity=severity, message=message, why=why, legs=legs, profiles=profiles,
                    select=select, assertion=assertion, fix=fix, mac=mac, expected=expected,
                    observed=observed, falsepositives=falsepositives, references=references,
                    tests=tests, path=self.src.path, line=self.node.start_mark.line + 1)

    # ---- field readers
    def v(self, key: str):
        return self.keys[key][1]

    def scalar(self, node, key: str, what: str = "text") -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.err(node, f"expected {what}, got {_kind_of_node(node)}", key)
        if node.tag.endswith(":null") and node.value in ("", "~", "null", "Null", "NULL"):
            raise self.err(node, f"expected {what}, got nothing", key)
        return node.value

    def text(self, key: str) -> str:
        node = self.v(key)
        s = self.scalar(node, key).strip()
        if not s:
            raise self.err(node, "is empty", key)
        return s

    def choice(self, key: str, choices: Sequence[str], node=None) -> str:
        node = node if node is not None else self.v(key)
        s = self.scalar(node, key, f"one of {', '.join(choices)}").strip()
        if s not in choices:
            raise self.err(node, f"'{s}' is not one of {', '.join(choices)}{_suggest(s, choices)}", key)
        return s

    def seq(self, key: str, example: str):
        node = self.v(key)
        if not isinstance(node, yaml.SequenceNode):
            raise self.err(node, f"expected a list like {example}, got {_kind_of_node(node)}", key)
        if not node.value:
            raise self.err(node, f"empty list; expected a list like {example}", key)
        return node

    def choices(self, key: str, choices: Sequence[str]) -> tuple[str, ...]:
        node = self.seq(key, f"[{', '.join(choices[:2])}]")
        out: list[str] = []
        for item in node.value:
            s = self.choice(key, choices, item)
            if s in out:
                raise self.err(item, f"'{s}' is listed twice", key)
            out.append(s)
        return tuple(out)

    def text_list(self, key: str) -> tuple[str, ...]:
        node = self.seq(key, "['one', 'two']")
        out = []
        for item in node.value:
            s = self.scalar(item, key, "text").strip()
            if not s:
                raise self.err(item, "empty entry", key)
            out.append(s)
        return tuple(out)

    def legs(self, scope: str) -> tuple[str, ...]:
        if "legs" not in self.keys:
            if scope == "pair":
                raise self.err(self.node, "missing required key 'legs' (a pair rule names its two legs: "
                                          f"{' or '.join('[' + ', '.join(p) + ']' for p in PAIRS)})")
            return ()
        if scope not in ("pair", "packet"):
            raise self.err(self.keys["legs"][0], f"'legs' applies to the packet and pair scopes, not '{scope}'", "legs")
        legs = self.choices("legs", LEGS)
        if scope == "pair" and legs not in PAIRS:
            raise self.err(self.v("legs"), f"a pair is a packet entering the director and leaving it: "
                                            f"{' or '.join('[' + ', '.join(p) + ']' for p in PAIRS)}, "
                                            f"not [{', '.join(legs)}]", "legs")
        return legs

    def _compile_at(self, node, key: str, fn):
        text = self.scalar(node, key, "an expression")
        lead = len(text) - len(text.lstrip())
        try:
            return fn(text.strip())
        except ExprError as e:
            raise self.src.expr_error(node, lead, e, key) from None

    def expr(self, key: str, want: str) -> Expr:
        return self._compile_at(self.v(key), key, lambda t: compile_expr(t, self.ns, want=want))

    def template(self, key: str) -> Template:
        node = self.v(key)
        if not self.scalar(node, key).strip():
            raise self.err(node, "is empty", key)
        return self._compile_at(node, key, lambda t: compile_template(t, self.ns))

    def value_map(self, key: str) -> dict[str, Expr]:
        if key not in self.keys:
            return {}
        node = self.v(key)
        if not isinstance(node, yaml.MappingNode) or not node.value:
            raise self.err(node, f"expected a mapping of label: expression, got {_kind_of_node(node)}", key)
        out: dict[str, Expr] = {}
        for knode, vnode in node.value:
            label = self.scalar(knode, key, "a label").strip()
            if not label:
                raise self.err(knode, "empty label", key)
            if label in out:
                raise self.err(knode, f"label '{label}' is given twice", key)
            out[label] = self._compile_at(vnode, f"{key}.{label}",
                                          lambda t: compile_expr(t, self.ns, want="value"))
        return out

    def tests(self) -> RuleTests:
        node = self.v("tests")
        if not isinstance(node, yaml.MappingNode):
            raise self.err(node, f"expected a mapping with 'fires' and 'quiet', got {_kind_of_node(node)}", "tests")
        fires: list[FixtureCase] = []
        quiet: list[str] = []
        seen: dict[str, int] = {}
        for knode, vnode in node.value:
            k = self.scalar(knode, "tests", "'fires' or 'quiet'")
            if k not in ("fires", "quiet"):
                raise self.err(knode, f"unknown key '{k}'{_suggest(k, ('fires', 'quiet'))}; tests has "
                                      "'fires' and 'quiet'", f"tests.{k}")
            key = f"tests.{k}"
            if not isinstance(vnode, yaml.SequenceNode):
                raise self.err(vnode, f"expected a list of fixture names, got {_kind_of_node(vnode)}", key)
            for item in vnode.value:
                count = None
                if isinstance(item, yaml.MappingNode) and k == "fires":
                    if len(item.value) != 1:
                        raise self.err(item, "a counted fixture is one 'name: count' pair", key)
                    nnode, cnode = item.value[0]
                    fx = self.scalar(nnode, key, "a fixture name").strip()
                    try:
                        c = self.loader.construct_object(cnode, deep=True) \
                            if isinstance(cnode, yaml.ScalarNode) else None
                    except yaml.YAMLError:
                        c = None
                    if isinstance(c, bool) or not isinstance(c, int) or c < 1:
                        raise self.err(cnode, f"the count of '{fx}' must be a whole number >= 1", key)
                    count = c
                else:
                    fx = self.scalar(item, key, "a fixture name").strip()
                if not FIXTURE_RE.match(fx):
                    raise self.err(item, f"'{fx}' is not a fixture folder name", key)
                if fx in seen:
                    raise self.err(item, f"fixture '{fx}' is listed twice (first on line {seen[fx]})", key)
                seen[fx] = item.start_mark.line + 1
                if k == "fires":
                    fires.append(FixtureCase(fx, count))
                else:
                    quiet.append(fx)
        return RuleTests(tuple(fires), tuple(quiet))


# =========================================================================== --select / --ignore

def parse_selectors(value: str | Iterable[str] | None) -> list[str]:
    """``"DR,NAT202"`` or ``["DR", "NAT202"]`` -> ``["DR", "NAT202"]`` (blank entries dropped)."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        out.extend(s.strip() for s in str(item).split(",") if s.strip())
    return out


def _match_len(sel: str, rule: Rule) -> int:
    """How specifically ``sel`` matches ``rule``: -1 no match; ALL 0; a prefix its length;
    the full code or the name 100."""
    if sel.upper() == "ALL":
        return 0
    if sel == rule.name or sel.upper() == rule.code:
        return 100
    if rule.code.startswith(sel.upper()):
        return len(sel)
    return -1


def select_rules(rules: Sequence[Rule], select: str | Iterable[str] | None = None,
                 ignore: str | Iterable[str] | None = None, *, preview: bool = True) -> list[Rule]:
    """Filter like ruff: a selector is ``ALL``, a code prefix (``DR`` selects DR101, DR102...;
    ``DR1`` DR1xx), a full code or a rule name. A rule is kept when its most specific ``select``
    match is more specific than its most specific ``ignore`` match (``--select DR101 --ignore DR``
    keeps DR101). No ``select``: every rule. Deprecated rules are kept only when selected by
    full code or name; preview rules only when ``preview`` is true or they are selected by full
    code or name. A selector matching no rule is an InputError (``--select``/``--ignore``)."""
    sels, igns = parse_selectors(select), parse_selectors(ignore)
    for opt, lst in (("--select", sels), ("--ignore", igns)):
        for s in lst:
            if not any(_match_len(s, r) >= 0 for r in rules):
                cands = [r.code for r in rules] + [r.name for r in rules]
                raise InputError(opt, f"'{s}' matches no rule{_suggest(s.upper(), cands) or _suggest(s, cands)}")
    out = []
    for r in rules:
        best_sel = max((_match_len(s, r) for s in sels), default=0 if not sels else -1)
        best_ign = max((_match_len(s, r) for s in igns), default=-1)
        if best_sel < 0 or best_ign >= best_sel:
            continue
        if r.status == "deprecated" and best_sel < 100:
            continue
        if r.status == "preview" and not preview and best_sel < 100:
            continue
        out.append(r)
    return out
