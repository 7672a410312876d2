"""The rule expression language: closed, typed, checked at load time, evaluated over whole tables.

A rule's ``select`` and ``assert`` (and the ``{fields}`` of its message and fix templates) are
Python *expression syntax*, parsed with :func:`ast.parse` (mode ``"eval"``) and then compiled
against a whitelist. Nothing is ever passed to ``eval``: the compiler builds a tree of numpy
operations, so a rule file cannot run code. Evaluation is vectorised: one numpy operation per
node over whole columns, never a Python loop over rows.

What an expression may contain
------------------------------
- names and dotted names declared by the scope's :class:`Namespace`: ``ip_ttl``, ``out.ip_ttl``,
  ``in.ip_src``, ``rs.ip``, ``service.vips``, ``director.macs``, ``profile.ttl_decrement``;
- literals: int, float, str, ``True``/``False``, ``None``; tuples, lists or sets of literals
  (only on the right of ``in`` / ``not in``);
- comparisons ``== != < <= > >=`` (chained: ``1 <= ttl < 64``), ``in`` / ``not in`` (against a
  literal tuple or a set-valued name), ``x is None`` / ``x is not None`` (presence tests);
- arithmetic ``+ - * / // %`` and unary ``- +``; bitwise ``& | ^ ~ << >>`` on integers and flags;
- ``and`` / ``or`` / ``not`` on conditions; ``a if cond else b``;
- the functions in :data:`FUNCTIONS`:

  ==========================  ===================================================================
  ``abs(x)``                  absolute value of a number
  ``min(a, b, ...)``          element-wise minimum of two or more numbers (``max`` likewise)
  ``present(x)``              True where ``x`` has a value (see *Absent values*)
  ``has_flag(x, "A", ...)``   True where every named flag is set in the flags value ``x``
  ``any_flag(x, "A", ...)``   True where at least one of the named flags is set
  ==========================  ===================================================================

  Membership in a list of values is written with ``in``: ``proto in ("tcp", "udp")`` (there is
  no ``any_of``). A flag argument may name several flags at once: ``has_flag(tcp_flags, "SYN|ACK")``.

Anything else (calls of anything but those functions, attribute access on anything but a name,
subscripts, lambdas, comprehensions, f-strings, ``:=``, ``*`` unpacking, ``**``, dict literals,
unknown names, unknown functions) is a load-time :class:`ExprError` carrying the line and the
column inside the expression; unknown names, functions, enum values and flag names come with a
did-you-mean.

Types (:class:`Kind`)
---------------------
Every name has a kind: ``int``, ``float``, ``bool``, ``str``, ``addr`` (an address key of the
packet table), ``mac`` (48-bit value), ``enum:<label>=<code>,...`` (an integer column whose
values have names, e.g. ``enum:request=1,reply=2``; without ``=code`` the labels are numbered
from 0), ``flags:<name>=<bit value>,...`` (an integer bit set with named bits, e.g.
``flags:FIN=0x01,SYN=0x02``), and the set kinds ``set_addr``, ``set_mac``, ``set_int``, ``set_str``
(generally ``set_<kind>``), which are constants of the table (a VIP list, director MACs).

Literals take the kind of the other operand:

- a string against an ``addr`` is an IP address: ``ip_src == "203.0.113.1"``. IPv4 literals are
  their 32-bit key; IPv6 keys are interned per table, so an IPv6 literal is resolved when the
  expression is evaluated (``Env.addr_key``, else ``Namespace.addr_key``); one that never
  appeared in the table compares unequal to everything;
- a string against a ``mac`` is a MAC address: ``eth_src == "02:00:00:00:00:02"``;
- a string against an ``enum`` must be one of its labels (load-time error otherwise);
- a string against ``flags`` names flags: ``tcp_flags & "SYN|ACK" == "SYN"``; an int is a bit value;
- an int against an ``int``/``float`` is a number (ints must fit in 64 bits).

Type errors are load-time errors: comparing a ``mac`` with an ``addr``, ``+`` on addresses,
ordering (``<``) on addresses, MACs, enums or strings, ``and`` on integers, a condition
(``select``/``assert``) that is not a bool.

Arithmetic is done in int64 (columns are widened first, so ``ttl - 1`` on a uint8 column of 0
is -1, not 255) or float64; wrap-around at 2**64 is silent; write ``% 4294967296`` for sequence
number arithmetic. Division (``/ // %``) by zero and shifts by a count outside 0..63 give an
*absent* value.

Absent values
-------------
A value may be absent on some rows: a column given as :class:`Masked` (values + a *present*
mask), a prefix mask in :class:`Env` (``present={"out": mask}`` makes every ``out.*`` name
absent where the mask is False), a :class:`Var` declared with an ``absent`` sentinel (a TOA
address of 0 means no TOA), or a constant given as ``None``. Then:

- arithmetic, ``abs``/``min``/``max``, ``a if c else b`` propagate absence;
- **every comparison with an absent operand is False**, including ``!=``, ``in`` and ``not in``
  (so ``not (x == 1)`` is True where ``x`` is absent, but ``x != 1`` is False);
- a bool value that is absent counts as False in ``and``/``or``/``not``/``if`` and as a result;
- ``present(x)``, ``x is not None`` and ``x != None`` test presence; ``x is None`` and
  ``x == None`` test absence. A rule that must treat absence explicitly says so.

API for the engine
------------------
::

    ns = Namespace({"ip_ttl": "int", "ip_src": "addr", "op": "enum:request=1,reply=2",
                    "tcp_flags": Kind.flags(TCP_FLAGS), "toa_addr": Var("addr", absent=0),
                    "service.vips": "set_addr"}, addr_key=table.addr_key)
    e = compile_expr('op == "reply" and ip_src in service.vips', ns)     # ExprError if bad
    env = Env({"ip_ttl": t["ip_ttl"], ...}, n=len(t), addr_key=t.addr_key, addr_str=t.addr_str)
    mask = e.evaluate(env)                # bool ndarray of n rows
    values, present = e.evaluate_masked(env)    # any kind, both arrays of n rows
    tpl = compile_template("{sender_mac} claims {sender_ip}", ns)
    tpl.render(env, rows)                 # one string per selected row

:class:`Env` takes any ``Mapping`` of values (a lazy one that materialises a column on first
access is fine: only the names an expression uses are read, once per Env). A value is a 1-D
numpy array of ``n`` rows, a scalar constant, a :class:`Masked` pair, ``None`` (absent), or for
set kinds any iterable of members (keys or text: ``{"203.0.113.1", 3405803777}``) or an array.
"""
from __future__ import annotations

import ast
import difflib
import io
import ipaddress
import keyword
import tokenize
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..net import mac_str, parse_ip, parse_mac

__all__ = ["Kind", "Var", "Namespace", "Masked", "Env", "Expr", "Template", "ExprError",
           "compile_expr", "compile_template", "format_value", "FUNCTIONS", "UNKNOWN_ADDR_KEY"]

#: the key an IPv6 literal gets when the table never saw that address: no row holds it
UNKNOWN_ADDR_KEY = np.uint64(0xFFFF_FFFF_FFFF_FFFF)

#: whitelisted functions: name -> one-line documentation
FUNCTIONS: dict[str, str] = {
    "abs": "abs(x): absolute value of a number",
    "min": "min(a, b, ...): element-wise minimum of two or more numbers",
    "max": "max(a, b, ...): element-wise maximum of two or more numbers",
    "present": "present(x): True where x has a value",
    "has_flag": 'has_flag(x, "A", ...): True where every named flag is set in x',
    "any_flag": 'any_flag(x, "A", ...): True where at least one named flag is set in x',
}

_SCALAR_BASES = ("int", "float", "bool", "str", "addr", "mac", "enum", "flags")
_NUMERIC = ("int", "float", "flags")
_INTEGRAL = ("int", "flags")


def _suggest(word: str, choices: Iterable[str]) -> str:
    m = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{m[0]}'?)" if m else ""


# =========================================================================== kinds and names

@dataclass(frozen=True)
class Kind:
    """The type of a name or an expression.

    ``base`` is one of int, float, bool, str, addr, mac, enum, flags (``any`` is the kind of
    every name when rules are compiled without a namespace); ``is_set`` marks a set constant of
    that element kind; ``labels`` holds (label, code) pairs of enums and (flag, bit) pairs of
    flags.
    """

    base: str
    is_set: bool = False
    labels: tuple[tuple[str, int], ...] = ()

    # ---- construction
    @classmethod
    def parse(cls, spec: "str | Kind") -> "Kind":
        """``"int"``, ``"set_addr"``, ``"enum:request=1,reply=2"``, ``"flags:FIN=0x1,SYN=0x2"``."""
        if isinstance(spec, Kind):
            return spec
        s = str(spec).strip()
        is_set = s.startswith("set_")
        if is_set:
            s = s[4:]
        base, _, rest = s.partition(":")
        if base not in _SCALAR_BASES:
            raise ValueError(f"unknown kind '{spec}'{_suggest(base, _SCALAR_BASES)}; "
                             f"kinds: {', '.join(_SCALAR_BASES)} and set_<kind>")
        labels: tuple[tuple[str, int], ...] = ()
        if base in ("enum", "flags"):
            if not rest.strip():
                raise ValueError(f"kind '{spec}' needs its labels: {base}:a=1,b=2")
            pairs = []
            for i, item in enumerate(p.strip() for p in rest.split(",")):
                label, eq, code = item.partition("=")
                if not eq:
                    if base == "flags":
                        raise ValueError(f"kind '{spec}': flag '{label}' needs its bit value (name=0x..)")
                    pairs.append((label.strip(), i))
                else:
                    pairs.append((label.strip(), int(code.strip(), 0)))
            labels = tuple(pairs)
        elif rest:
            raise ValueError(f"kind '{spec}': only enum and flags take labels")
        k = cls(base, is_set, labels)
        k._check()
        return k

    @classmethod
    def enum(cls, labels: Mapping[str, int] | Iterable[str]) -> "Kind":
        items = labels.items() if isinstance(labels, Mapping) else ((l, i) for i, l in enumerate(labels))
        k = cls("enum", False, tuple((str(a), int(b)) for a, b in items))
        k._check()
        return k

    @classmethod
    def flags(cls, bits: Mapping[str, int]) -> "Kind":
        k = cls("flags", False, tuple((str(a), int(b)) for a, b in bits.items()))
        k._check()
        return k

    def _check(self) -> None:
        names = [l for l, _ in self.labels]
        if len(set(names)) != len(names) or any(not n for n in names):
            raise ValueError(f"kind {self}: labels must be unique and non-empty")
        if self.base == "flags" and any(b <= 0 for _, b in self.labels):
            raise ValueError(f"kind {self}: flag bit values must be positive")

    # ---- queries
    @property
    def element(self) -> "Kind":
        return Kind(self.base, False, self.labels)

    def set_of(self) -> "Kind":
        return Kind(self.base, True, self.labels)

    def code(self, label: str) -> int | None:
        for l, c in self.labels:
            if l == label:
                return c
        return None

    def label(self, code: int) -> str | None:
        for l, c in self.labels:
            if c == code:
                return l
        return None

    def label_names(self) -> list[str]:
        return [l for l, _ in self.labels]

    def __str__(self) -> str:
        s = self.base
        if self.labels:
            if self.base == "flags":
                s += ":" + ",".join(f"{l}={c:#x}" for l, c in self.labels)
            else:
                s += ":" + ",".join(f"{l}={c}" for l, c in self.labels)
        return ("set_" + s) if self.is_set else s

    def describe(self) -> str:
        """Short form for error messages (``enum`` without its labels)."""
        return ("set_" if self.is_set else "") + self.base


ANY = Kind("any")
_BOOL, _INT, _FLOAT, _STR = Kind("bool"), Kind("int"), Kind("float"), Kind("str")
_NONE, _TUPLE = Kind("none"), Kind("tuple")      # kinds of uncoerced literals only


@dataclass(frozen=True)
class Var:
    """A declared name: its kind, an optional sentinel that means "absent" (compared after the
    value is converted to the kind, e.g. ``Var("addr", absent=0)``), and a line of documentation."""

    kind: Kind
    absent: Any = None
    doc: str = ""

    def __init__(self, kind: "Kind | str", absent: Any = None, doc: str = ""):
        object.__setattr__(self, "kind", Kind.parse(kind))
        object.__setattr__(self, "absent", absent)
        object.__setattr__(self, "doc", doc)


class Namespace:
    """The names a scope offers to rule expressions.

    ``Namespace(names, addr_key=None, title="")``: ``names`` maps each name (dotted names are
    written in full: ``"out.ip_ttl"``) to a :class:`Kind`, a kind spec string or a :class:`Var`.
    ``addr_key(text) -> key | None`` resolves IPv6 literals when the :class:`Env` given at
    evaluation has no ``addr_key`` of its own (IPv4 literals need neither).
    """

    def __init__(self, names: Mapping[str, "Kind | str | Var"], *,
                 addr_key: Callable[[str], int | None] | None = None, title: str = ""):
        self.vars: dict[str, Var] = {}
        for name, spec in names.items():
            parts = name.split(".")
            if not all(p.isidentifier() for p in parts):
                raise ValueError(f"namespace name '{name}' is not a (dotted) identifier")
            self.vars[name] = spec if isinstance(spec, Var) else Var(spec)
        self.addr_key = addr_key
        self.title = title

    def __contains__(self, name: str) -> bool:
        return name in self.vars

    def __getitem__(self, name: str) -> Var:
        return self.vars[name]

    def __iter__(self):
        return iter(self.vars)

    def __len__(self) -> int:
        return len(self.vars)

    def kind(self, name: str) -> Kind:
        return self.vars[name].kind

    def extend(self, more: Mapping[str, "Kind | str | Var"]) -> "Namespace":
        """A copy with more names (same addr_key and title)."""
        d: dict[str, Any] = dict(self.vars)
        d.update(more)
        return Namespace(d, addr_key=self.addr_key, title=self.title)


# =========================================================================== evaluation env

@dataclass(frozen=True)
class Masked:
    """A column with a companion presence mask (``present[i]`` False: row i has no value)."""

    values: Any
    present: Any


class Env:
    """What an expression is evaluated against: ``values`` (name -> value, see the module
    docstring), the row count ``n``, optional prefix presence masks (``{"out": mask}`` or a full
    name), and the table's address functions (``addr_key(text) -> key|None`` for IPv6 literals,
    ``addr_str(key) -> text`` for messages). Converted columns are cached per Env, so the
    select, assert and message fields of a rule share them."""

    def __init__(self, values: Mapping[str, Any], n: int | None = None, *,
                 present: Mapping[str, Any] | None = None,
                 addr_key: Callable[[str], int | None] | None = None,
                 addr_str: Callable[[int], str] | None = None):
        if n is None:
            if not isinstance(values, dict):
                raise ValueError("Env: give n (the row count) with a non-dict mapping")
            n = next((len(v) for v in values.values() if isinstance(v, np.ndarray) and v.ndim == 1), None)
            if n is None:
                n = next((len(np.asarray(v.values)) for v in values.values()
                          if isinstance(v, Masked) and np.ndim(v.values) == 1), None)
            if n is None:
                raise ValueError("Env: no array among the values; give n")
        self.values = values
        self.n = int(n)
        self.present = dict(present or {})
        for k, m in self.present.items():
            if isinstance(m, np.ndarray) and m.shape != (self.n,):
                raise ValueError(f"Env: presence mask '{k}' has shape {m.shape}, expected ({self.n},)")
        self.addr_key = addr_key
        self.addr_str = addr_str
        self._cache: dict[Any, Any] = {}


# =========================================================================== errors

class ExprError(ValueError):
    """A load-time error in an expression or a template.

    ``line`` and ``col`` are 1-based and count characters inside the expression text;
    ``offset`` is the 0-based character offset into it (the rule loader maps it to the file).
    """

    def __init__(self, message: str, text: str, offset: int):
        self.message = message
        self.text = text
        self.offset = max(0, min(offset, len(text)))
        before = text[:self.offset]
        self.line = before.count("\n") + 1
        self.col = self.offset - (before.rfind("\n") + 1) + 1
        super().__init__(f"line {self.line}, column {self.col}: {message}")


# =========================================================================== values helpers

def _and_p(a, b):
    """Combine presence: True (all present), False (none), or a bool array."""
    if a is True:
        return b
    if b is True:
        return a
    if a is False or b is False:
        return False
    return np.logical_and(a, b)


def _norm_p(p):
    if isinstance(p, (bool, np.bool_)):
        return bool(p)
    p = np.asarray(p, dtype=bool)
    if p.ndim == 0:
        return bool(p)
    return p


def _truth(v, p):
    """A bool value where absent counts as False."""
    if p is True:
        return v
    if p is False:
        return False
    return np.logical_and(v, p)


def _scalar(x):
    if isinstance(x, np.ndarray) and x.ndim == 0:
        return x[()]
    return x


def _num(v):
    """Widen integer data to int64 (and bool to int64) before arithmetic."""
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "uib" and v.dtype != np.int64:
            return v.astype(np.int64)
        if v.dtype.kind == "f" and v.dtype != np.float64:
            return v.astype(np.float64)
        return v
    if isinstance(v, (bool, np.bool_)):
        return np.int64(v)
    if isinstance(v, (int, np.integer)):
        return np.int64(v)
    if isinstance(v, (float, np.floating)):
        return np.float64(v)
    return v


def _zero(kind: Kind):
    b = kind.base
    if b in ("addr", "mac"):
        return np.uint64(0)
    if b == "float":
        return np.float64(0)
    if b == "bool":
        return False
    if b == "str":
        return ""
    return np.int64(0)


def _resolve_addr(text: str, addr_key) -> np.uint64:
    a = parse_ip(text)
    if a.version == 4:
        return np.uint64(int(a))
    if addr_key is None:
        return UNKNOWN_ADDR_KEY
    k = addr_key(str(a))
    return UNKNOWN_ADDR_KEY if k is None else np.uint64(int(k))


def _addr_key_fn(env: Env, ns: "Namespace | None"):
    if env.addr_key is not None:
        return env.addr_key
    return ns.addr_key if ns is not None else None


def _convert_scalar(value, kind: Kind, env: Env, ns, name: str):
    """A constant from the env -> the kind's numpy scalar (or str/bool)."""
    b = kind.base
    try:
        if b == "addr":
            if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
                value = str(value)
            if isinstance(value, str):
                return _resolve_addr(value, _addr_key_fn(env, ns))
            return np.uint64(int(value))
        if b == "mac":
            if isinstance(value, str):
                return np.uint64(int(parse_mac(value)))
            return np.uint64(int(value))
        if b == "enum" and isinstance(value, str):
            c = kind.code(value)
            if c is None:
                raise ValueError(f"'{value}' is not one of {kind.label_names()}")
            return np.int64(c)
        if b in ("int", "enum", "flags"):
            return np.int64(int(value))
        if b == "float":
            return np.float64(value)
        if b == "bool":
            return bool(value)
        if b == "str":
            return str(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"env value of '{name}' does not fit kind {kind.describe()}: {e}") from None
    return value


def _convert_array(arr: np.ndarray, kind: Kind):
    b = kind.base
    if b in ("addr", "mac"):
        return arr if arr.dtype == np.uint64 else arr.astype(np.uint64)
    if b in ("int", "enum", "flags"):
        if arr.dtype.kind == "u" and arr.dtype.itemsize == 8:
            return arr.astype(np.int64)
        if arr.dtype.kind == "b":
            return arr.astype(np.int64)
        if arr.dtype.kind not in "ui":
            return arr.astype(np.int64)
        return arr
    if b == "float":
        return arr if arr.dtype.kind == "f" else arr.astype(np.float64)
    if b == "bool":
        return arr if arr.dtype == np.bool_ else arr.astype(bool)
    return arr


def _members(raw, kind: Kind, env: Env, ns, name: str) -> np.ndarray:
    """A set constant -> a 1-D array of member keys/values (for np.isin)."""
    el = kind.element
    if isinstance(raw, np.ndarray):
        return _convert_array(raw.reshape(-1), el)
    if raw is None:
        raw = ()
    if isinstance(raw, (str, bytes)):
        raw = (raw,)
    vals = [_convert_scalar(v, el, env, ns, name) for v in raw]
    if el.base == "addr":
        vals = [v for v in vals if v != UNKNOWN_ADDR_KEY]
    if el.base in ("addr", "mac"):
        return np.array(vals, dtype=np.uint64)
    if el.base in ("int", "enum", "flags"):
        return np.array(vals, dtype=np.int64)
    if el.base == "float":
        return np.array(vals, dtype=np.float64)
    if el.base == "bool":
        return np.array(vals, dtype=bool)
    return np.array(vals, dtype=object)


def _lookup(env: Env, ns: "Namespace | None", name: str, var: Var):
    key = ("name", name, var)
    hit = env._cache.get(key)
    if hit is not None:
        return hit
    try:
        raw = env.values[name]
    except KeyError:
        raise KeyError(f"the evaluation environment has no value for '{name}'") from None
    kind = var.kind
    if kind.is_set:
        if isinstance(raw, Masked):
            raw = raw.values
        res = (_members(raw, kind, env, ns, name), True)
        env._cache[key] = res
        return res
    p: Any = True
    if isinstance(raw, Masked):
        p = _norm_p(raw.present)
        raw = raw.values
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        m = env.present.get(".".join(parts[:i]))
        if m is not None:
            p = _and_p(p, _norm_p(m))
    if raw is None:
        res = (_zero(kind), False)
        env._cache[key] = res
        return res
    if isinstance(raw, np.ndarray) and raw.ndim == 1:
        if len(raw) != env.n:
            raise ValueError(f"env: '{name}' has {len(raw)} rows, expected {env.n}")
        v = _convert_array(raw, kind)
    else:
        if isinstance(raw, np.ndarray):
            raw = raw[()]
        if isinstance(raw, np.generic):
            raw = raw.item()
        v = _convert_scalar(raw, kind, env, ns, name)
    if isinstance(p, np.ndarray) and len(p) != env.n:
        raise ValueError(f"env: presence of '{name}' has {len(p)} rows, expected {env.n}")
    if var.absent is not None:
        sentinel = _convert_scalar(var.absent, kind, env, ns, name)
        p = _and_p(p, _norm_p(v != sentinel))
    res = (v, p)
    env._cache[key] = res
    return res


# =========================================================================== formatting

def format_value(kind: Kind, value, *, addr_str: Callable[[int], str] | None = None) -> str:
    """One value as text for messages and expected/observed fields."""
    b = kind.base
    if kind.is_set:
        items = value if isinstance(value, (list, tuple, np.ndarray, set, frozenset)) else [value]
        return ", ".join(sorted(format_value(kind.element, v, addr_str=addr_str) for v in items))
    if isinstance(value, np.generic):
        value = value.item()
    if b == "addr":
        k = int(value)
        if k == int(UNKNOWN_ADDR_KEY):
            return "(unknown address)"
        if addr_str is not None:
            return addr_str(k)
        if k >> 63:
            return f"<ipv6 #{k & ((1 << 63) - 1)}>"
        return str(ipaddress.IPv4Address(k & 0xFFFFFFFF))
    if b == "mac":
        return mac_str(int(value))
    if b == "enum":
        lab = kind.label(int(value))
        return lab if lab is not None else str(int(value))
    if b == "flags":
        v = int(value)
        names = [l for l, bit in kind.labels if v & bit == bit]
        rest = v
        for l, bit in kind.labels:
            if v & bit == bit:
                rest &= ~bit
        if rest:
            names.append(hex(rest))
        return "|".join(names) if names else "0"
    if b == "bool":
        return "true" if value else "false"
    if b == "float":
        return f"{float(value):g}"
    return str(value)


ABSENT_TEXT = "-"


# =========================================================================== compiled nodes

_NOLIT = object()


@dataclass
class _N:
    kind: Kind
    ev: Callable[[Any], tuple]           # ctx -> (value, present)
    node: ast.AST
    lit: Any = _NOLIT                    # the Python literal while not coerced to a kind


def _unbound(ctx):
    raise RuntimeError("expression compiled without a namespace cannot be evaluated")


class _Ctx:
    __slots__ = ("env", "ns")

    def __init__(self, env: Env, ns):
        self.env = env
        self.ns = ns

    def addr(self, text: str):
        key = ("addr", text)
        v = self.env._cache.get(key)
        if v is None:
            v = _resolve_addr(text, _addr_key_fn(self.env, self.ns))
            self.env._cache[key] = v
        return v


_CMP = {ast.Eq: np.equal, ast.NotEq: np.not_equal, ast.Lt: np.less, ast.LtE: np.less_equal,
        ast.Gt: np.greater, ast.GtE: np.greater_equal}
_CMP_SYM = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
            ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}
_ARITH = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.true_divide,
          ast.FloorDiv: np.floor_divide, ast.Mod: np.remainder}
_BITS = {ast.BitAnd: np.bitwise_and, ast.BitOr: np.bitwise_or, ast.BitXor: np.bitwise_xor,
         ast.LShift: np.left_shift, ast.RShift: np.right_shift}
_BIN_SYM = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
            ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>",
            ast.Pow: "**", ast.MatMult: "@"}

_DISALLOWED = {
    ast.Lambda: "lambda", ast.ListComp: "a list comprehension", ast.SetComp: "a set comprehension",
    ast.DictComp: "a dict comprehension", ast.GeneratorExp: "a generator expression",
    ast.Subscript: "subscripts (x[...])", ast.Slice: "slices", ast.JoinedStr: "f-strings",
    ast.FormattedValue: "f-strings", ast.NamedExpr: "':=' (assignment expressions)",
    ast.Starred: "'*' unpacking", ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield",
    ast.Dict: "dict literals",
}


_KW = "__kw_"


def _alias_keywords(text: str) -> tuple[str, list[int]]:
    """Rename a keyword that touches a dot (``in.ip_src``, ``x.if``) to ``__kw_in`` so that
    Python's parser accepts it; returns the new text and the offsets (in ``text``) where the
    prefix went, to map error positions back."""
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return text, []
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    inserts = []
    for i, t in enumerate(toks):
        if t.type != tokenize.NAME or not keyword.iskeyword(t.string) or t.string in ("True", "False", "None"):
            continue
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        prv = toks[i - 1] if i > 0 else None
        if (nxt is not None and nxt.type == tokenize.OP and nxt.string == "." and nxt.start == t.end) or \
                (prv is not None and prv.type == tokenize.OP and prv.string == "." and prv.end == t.start):
            inserts.append(starts[t.start[0] - 1] + t.start[1])
    if not inserts:
        return text, []
    out, last = [], 0
    for o in inserts:
        out.append(text[last:o])
        out.append(_KW)
        last = o
    out.append(text[last:])
    return "".join(out), inserts


def _lit_desc(v) -> str:
    if v is None:
        return "None"
    if isinstance(v, bool):
        return "a bool"
    if isinstance(v, int):
        return "an int"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, str):
        return "a string"
    return type(v).__name__


class _Compiler:
    def __init__(self, text: str, ns: "Namespace | None", base_offset: int = 0, full_text: str | None = None):
        self.text = text
        self.ns = ns
        # errors are reported against full_text (a template) at base_offset + offset in text
        self.full_text = text if full_text is None else full_text
        self.base = base_offset
        # `in.ip_src`: a keyword before a dot is renamed so that Python's parser takes it
        ptext, self.inserts = _alias_keywords(text)
        self.ptext = ptext
        self.wrapped = "(" + ptext + "\n)"
        self.wlines = self.wrapped.split("\n")
        self.names: set[str] = set()

    # ---- positions
    def _offset(self, lineno: int, byte_col: int, chars: bool = False) -> int:
        """Offset in self.text of a position in the wrapped text (ast: byte columns)."""
        lineno = max(1, lineno)
        if lineno > len(self.wlines) - 1:        # the closing ')' line: end of text
            return len(self.text)
        line = self.wlines[lineno - 1]
        col = byte_col if chars else len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))
        off = sum(len(l) + 1 for l in self.wlines[:lineno - 1]) + col - 1   # minus the '(' in front
        shift = 0
        for k, o in enumerate(self.inserts):         # back to the text as written
            start = o + len(_KW) * k
            if off >= start + len(_KW):
                shift = len(_KW) * (k + 1)
            elif off >= start:
                return o
        return max(0, min(off - shift, len(self.text)))

    def err(self, node: ast.AST | None, message: str) -> ExprError:
        off = 0 if node is None else self._offset(node.lineno, node.col_offset)
        return ExprError(message, self.full_text, self.base + off)

    def src(self, node: ast.AST) -> str:
        s = ast.get_source_segment(self.wrapped, node)
        if s is None:
            s = ast.unparse(node)
        return " ".join(s.replace(_KW, "").split())

    # ---- entry
    def compile(self, want: str) -> _N:
        if not self.text.strip():
            raise ExprError("empty expression", self.full_text, self.base)
        try:
            tree = ast.parse(self.wrapped, mode="eval")
        except SyntaxError as e:
            off = self._offset(e.lineno or 1, (e.offset or 1) - 1, chars=True)
            raise ExprError(f"syntax error: {e.msg}", self.full_text, self.base + off) from None
        n = self.visit(tree.body)
        if n.kind == _TUPLE:
            raise self.err(n.node, "a tuple can only follow 'in' or 'not in'")
        if want == "bool":
            if n.kind.base not in ("bool", "any"):
                hint = ""
                if n.kind.base in _INTEGRAL:
                    hint = f" (compare it: {self.src(n.node)} != 0)"
                raise self.err(n.node, f"a condition must be true/false, but '{self.src(n.node)}' "
                                       f"is {self._kdesc(n)}{hint}")
            n = self.as_kind(n, _BOOL)
        elif n.lit is not _NOLIT and n.kind == _NONE:
            raise self.err(n.node, "None alone is not a value")
        return n

    def _kdesc(self, n: _N) -> str:
        if n.lit is not _NOLIT:
            return _lit_desc(n.lit)
        k = n.kind.describe()
        return ("an " if k[0] in "aeiou" else "a ") + k

    # ---- dispatch
    def visit(self, node: ast.AST) -> _N:
        m = getattr(self, "v_" + type(node).__name__, None)
        if m is None:
            what = _DISALLOWED.get(type(node), f"'{type(node).__name__}'")
            raise self.err(node, f"{what}: not allowed in a rule expression")
        return m(node)

    # ---- literals
    def _literal_value(self, node: ast.AST):
        if isinstance(node, ast.Constant):
            v = node.value
            if v is None or isinstance(v, (bool, int, float, str)):
                return v
            raise self.err(node, f"{type(v).__name__} literals are not allowed")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
                and isinstance(node.operand, ast.Constant) \
                and isinstance(node.operand.value, (int, float)) and not isinstance(node.operand.value, bool):
            v = node.operand.value
            return -v if isinstance(node.op, ast.USub) else v
        raise self.err(node, "a tuple holds literals only (numbers, strings, True/False)")

    def v_Constant(self, node: ast.Constant) -> _N:
        v = self._literal_value(node)
        if v is None:
            return _N(_NONE, lambda c: (np.int64(0), False), node, lit=None)
        if isinstance(v, bool):
            return _N(_BOOL, lambda c, v=v: (v, True), node, lit=v)
        if isinstance(v, int):
            self._check_int(v, node)
            return _N(_INT, lambda c, v=np.int64(v): (v, True), node, lit=v)
        if isinstance(v, float):
            return _N(_FLOAT, lambda c, v=np.float64(v): (v, True), node, lit=v)
        return _N(_STR, lambda c, v=v: (v, True), node, lit=v)

    def _check_int(self, v: int, node) -> None:
        if not -(1 << 63) <= v < (1 << 63):
            raise self.err(node, f"integer {v} does not fit in 64 bits")

    def _collection(self, node) -> _N:
        vals = tuple(self._literal_value(e) for e in node.elts)
        for e, v in zip(node.elts, vals):
            if v is None:
                raise self.err(e, "None cannot be a member of a tuple")
            if isinstance(v, int) and not isinstance(v, bool):
                self._check_int(v, e)
        return _N(_TUPLE, lambda c: (vals, True), node, lit=vals)

    v_Tuple = v_List = v_Set = _collection

    # ---- names
    def _dotted(self, node) -> str:
        parts = []
        cur = node
        while isinstance(cur, ast.Attribute):
            parts.append(cur.attr)
            cur = cur.value
        if not isinstance(cur, ast.Name):
            raise self.err(node, f"attribute access is only for dotted names like out.ip_ttl, "
                                 f"not on '{self.src(cur)}'")
        parts.append(cur.id)
        return ".".join(p[len(_KW):] if p.startswith(_KW) else p for p in reversed(parts))

    def v_Name(self, node) -> _N:
        return self._name(self._dotted(node), node)

    v_Attribute = v_Name

    def _name(self, name: str, node) -> _N:
        self.names.add(name)
        if self.ns is None:
            return _N(ANY, _unbound, node)
        var = self.ns.vars.get(name)
        if var is None:
            hint = _suggest(name, self.ns.vars)
            if not hint and name in FUNCTIONS:
                hint = f" ({name} is a function: {FUNCTIONS[name]})"
            raise self.err(node, f"unknown name '{name}'{hint}")
        ns = self.ns
        return _N(var.kind, lambda c: _lookup(c.env, ns, name, var), node)

    # ---- coercion of literals
    def as_kind(self, n: _N, kind: Kind, other: _N | None = None) -> _N:
        """Coerce an uncoerced literal to ``kind`` (a no-op for other nodes)."""
        if n.lit is _NOLIT or kind.base == "any":
            return n
        v, node, b = n.lit, n.node, kind.base
        against = f" (compared with '{self.src(other.node)}', {other.kind.describe()})" if other else ""
        if kind.is_set:
            raise self.err(node, f"a set is compared with 'in', not with a literal{against}")
        if n.kind == _TUPLE:
            raise self.err(node, "a tuple can only follow 'in' or 'not in'")
        if v is None:
            raise self.err(node, "None only tests presence: x is None / x is not None")
        if b in ("int", "float"):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise self.err(node, f"expected a number, got {_lit_desc(v)} {v!r}{against}")
            if isinstance(v, float) or b == "float":
                return _N(_FLOAT, lambda c, x=np.float64(v): (x, True), node)
            return _N(_INT, lambda c, x=np.int64(v): (x, True), node)
        if b == "flags":
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise self.err(node, f"expected flag names like \"SYN|ACK\" or an int, got {_lit_desc(v)}{against}")
            bits = self._flag_bits(v, kind, node) if isinstance(v, str) else v
            return _N(kind, lambda c, x=np.int64(bits): (x, True), node)
        if b == "bool":
            if not isinstance(v, bool):
                raise self.err(node, f"expected True or False, got {_lit_desc(v)} {v!r}{against}")
            return _N(_BOOL, lambda c, x=v: (x, True), node)
        if b == "str":
            if not isinstance(v, str):
                raise self.err(node, f"expected a string, got {_lit_desc(v)} {v!r}{against}")
            return _N(_STR, lambda c, x=v: (x, True), node)
        if b == "enum":
            if not isinstance(v, str):
                raise self.err(node, f"expected one of {', '.join(repr(l) for l in kind.label_names())}, "
                                     f"got {_lit_desc(v)} {v!r}{against}")
            code = kind.code(v)
            if code is None:
                raise self.err(node, f"'{v}' is not one of {', '.join(repr(l) for l in kind.label_names())}"
                                     f"{_suggest(v, kind.label_names())}")
            return _N(kind, lambda c, x=np.int64(code): (x, True), node)
        if b == "addr":
            if not isinstance(v, str):
                raise self.err(node, f"expected an IP address as a string, got {_lit_desc(v)} {v!r}{against}")
            try:
                a = parse_ip(v)
            except ValueError as e:
                raise self.err(node, str(e)) from None
            if a.version == 4:
                return _N(kind, lambda c, x=np.uint64(int(a)): (x, True), node)
            text = str(a)
            return _N(kind, lambda c: (c.addr(text), True), node)
        if b == "mac":
            if not isinstance(v, str):
                raise self.err(node, f"expected a MAC address as a string, got {_lit_desc(v)} {v!r}{against}")
            try:
                m = parse_mac(v)
            except ValueError as e:
                raise self.err(node, str(e)) from None
            return _N(kind, lambda c, x=np.uint64(int(m)): (x, True), node)
        raise self.err(node, f"cannot use {_lit_desc(v)} as {kind.describe()}")

    def _flag_bits(self, text: str, kind: Kind, node) -> int:
        bits = 0
        for part in text.split("|"):
            p = part.strip()
            code = kind.code(p)
            if code is None:
                raise self.err(node, f"unknown flag '{p}'{_suggest(p, kind.label_names())}; "
                                     f"flags: {', '.join(kind.label_names())}")
            bits |= code
        return bits

    def _members_of(self, tup: _N, kind: Kind, left: _N) -> _N:
        """A literal tuple coerced element-wise to ``kind`` -> node yielding a member array."""
        els = [self.as_kind(_N(self._lit_kind(v), lambda c: None, tup.node, lit=v), kind, left) for v in tup.lit]
        b = kind.base
        dtype = {"addr": np.uint64, "mac": np.uint64, "float": np.float64, "bool": bool,
                 "str": object}.get(b, np.int64)
        if any(e.kind.base == "float" for e in els) and b == "int":
            dtype = np.float64
        if b == "any":
            vals = tup.lit
            return _N(_TUPLE, lambda c: (np.array(vals, dtype=object), True), tup.node)
        evs = [e.ev for e in els]

        def ev(c):
            return np.array([f(c)[0] for f in evs], dtype=dtype), True
        return _N(kind.set_of(), ev, tup.node)

    @staticmethod
    def _lit_kind(v) -> Kind:
        if isinstance(v, bool):
            return _BOOL
        if isinstance(v, int):
            return _INT
        if isinstance(v, float):
            return _FLOAT
        return _STR

    def unify(self, a: _N, b: _N, what: str, node) -> tuple[_N, _N]:
        """Coerce a literal operand to the other side's kind and check the kinds agree."""
        if a.lit is not _NOLIT and b.lit is not _NOLIT:
            if a.kind == _TUPLE or b.kind == _TUPLE:
                raise self.err(node, "a tuple can only follow 'in' or 'not in'")
            ka, kb = a.kind.base, b.kind.base
            num = ("int", "float")
            if not (ka == kb or (ka in num and kb in num)):
                raise self.err(node, f"{what}: {_lit_desc(a.lit)} and {_lit_desc(b.lit)} do not mix")
            return self.as_kind(a, a.kind), self.as_kind(b, b.kind)
        if a.lit is not _NOLIT:
            a = self.as_kind(a, b.kind, b)
        elif b.lit is not _NOLIT:
            b = self.as_kind(b, a.kind, a)
        self.check_compatible(a, b, what, node)
        return a, b

    def check_compatible(self, a: _N, b: _N, what: str, node) -> None:
        ka, kb = a.kind, b.kind
        if ka.base == "any" or kb.base == "any":
            return
        ok = ka.base == kb.base and ka.is_set == kb.is_set
        if ka.base in _NUMERIC and kb.base in _NUMERIC and not ka.is_set and not kb.is_set:
            ok = True
            if ka.base == kb.base == "flags" and ka.labels != kb.labels:
                ok = False
        if ok and ka.base == "enum" and ka.labels != kb.labels:
            ok = False
        if not ok:
            raise self.err(node, f"{what}: '{self.src(a.node)}' is {self._kdesc(a)} and "
                                 f"'{self.src(b.node)}' is {self._kdesc(b)}")

    # ---- comparisons
    def v_Compare(self, node: ast.Compare) -> _N:
        left = self.visit(node.left)
        parts = []
        for op, right_node in zip(node.ops, node.comparators):
            right = self.visit(right_node)
            parts.append(self._compare(left, op, right, node))
            left = right
        if len(parts) == 1:
            return parts[0]
        evs = [p.ev for p in parts]

        def ev(c):
            r = evs[0](c)[0]
            for f in evs[1:]:
                r = np.logical_and(r, f(c)[0])
            return r, True
        return _N(_BOOL, ev, node)

    def _compare(self, a: _N, op, b: _N, node) -> _N:
        sym = _CMP_SYM[type(op)]
        if isinstance(op, (ast.In, ast.NotIn)):
            return self._membership(a, b, isinstance(op, ast.NotIn), node)
        none_a, none_b = a.lit is None and a.kind == _NONE, b.lit is None and b.kind == _NONE
        if isinstance(op, (ast.Is, ast.IsNot)) and not (none_a or none_b):
            raise self.err(node, f"'{sym}' only tests presence against None; compare values with == or !=")
        if none_a or none_b:
            if none_a and none_b:
                raise self.err(node, "None compared with None")
            if not isinstance(op, (ast.Eq, ast.NotEq, ast.Is, ast.IsNot)):
                raise self.err(node, f"'{sym}' with None: only ==, !=, is, is not test presence")
            x = b if none_a else a
            if x.lit is not _NOLIT:
                raise self.err(node, "None compared with a literal")
            want_present = isinstance(op, (ast.NotEq, ast.IsNot))
            f = x.ev

            def ev(c):
                p = f(c)[1]
                if p is True or p is False:
                    return (p if want_present else not p), True
                return (p if want_present else np.logical_not(p)), True
            return _N(_BOOL, ev, node)
        a, b = self.unify(a, b, f"cannot compare with '{sym}'", node)
        k = a.kind if a.kind.base != "any" else b.kind
        if k.is_set:
            raise self.err(node, f"sets are tested with 'in', not '{sym}'")
        if not isinstance(op, (ast.Eq, ast.NotEq)) and k.base not in ("int", "float", "flags", "any"):
            raise self.err(node, f"'{sym}' orders numbers only; '{self.src(a.node)}' is {self._kdesc(a)} "
                                 "(use == or !=)")
        fn = _CMP[type(op)]
        fa, fb = a.ev, b.ev

        def ev(c):
            va, pa = fa(c)
            vb, pb = fb(c)
            r = fn(va, vb)
            return _truth(r, _and_p(pa, pb)), True
        return _N(_BOOL, ev, node)

    def _membership(self, a: _N, b: _N, negate: bool, node) -> _N:
        sym = "not in" if negate else "in"
        if a.kind == _TUPLE:
            raise self.err(a.node, "a tuple can only follow 'in' or 'not in'")
        if a.lit is None and a.kind == _NONE:
            raise self.err(a.node, f"None {sym} ...: test presence with 'x is None'")
        if b.kind == _TUPLE:
            if a.lit is not _NOLIT:
                a = self.as_kind(a, self._lit_kind(a.lit))
            if a.kind.is_set:
                raise self.err(a.node, f"'{sym}' needs a single value on its left, "
                                       f"'{self.src(a.node)}' is {self._kdesc(a)}")
            b = self._members_of(b, a.kind, a)
        elif b.kind.is_set or b.kind.base == "any":
            if a.lit is not _NOLIT:
                a = self.as_kind(a, b.kind.element, b)
            if a.kind.is_set:
                raise self.err(a.node, f"'{sym}' needs a single value on its left, "
                                       f"'{self.src(a.node)}' is {self._kdesc(a)}")
            if a.kind.base != "any" and b.kind.base != "any":
                ea, eb = a.kind, b.kind.element
                okk = (ea.base == eb.base and ea.labels == eb.labels) or \
                    (ea.base in ("int", "float") and eb.base in ("int", "float"))
                if not okk:
                    raise self.err(node, f"'{sym}': '{self.src(a.node)}' is {self._kdesc(a)} but "
                                         f"'{self.src(b.node)}' holds {eb.describe()} values")
        else:
            raise self.err(b.node, f"the right side of '{sym}' must be a set-valued name (like service.vips) "
                                   f"or a tuple of literals, not '{self.src(b.node)}' ({self._kdesc(b)})")
        fa, fb = a.ev, b.ev

        def ev(c):
            va, pa = fa(c)
            members, _ = fb(c)
            if isinstance(va, np.ndarray):
                r = np.isin(va, members)
            else:
                r = bool(np.isin(np.asarray([va]), members)[0])
            if negate:
                r = np.logical_not(r)
            return _truth(r, pa), True
        return _N(_BOOL, ev, node)

    # ---- arithmetic and bits
    def v_BinOp(self, node: ast.BinOp) -> _N:
        op = type(node.op)
        sym = _BIN_SYM.get(op, op.__name__)
        if op not in _ARITH and op not in _BITS:
            raise self.err(node, f"'{sym}' is not allowed in a rule expression")
        a, b = self.visit(node.left), self.visit(node.right)
        allowed = ("int", "float", "flags", "any") if op in _ARITH else ("int", "flags", "any")
        need = "numbers" if op in _ARITH else "integers or flags"
        for x in (a, b):
            if x.kind in (_TUPLE, _NONE) or (x.lit is not _NOLIT and isinstance(x.lit, str) and op not in _BITS):
                raise self.err(x.node, f"'{sym}' needs {need}, not {self._kdesc(x)}")
            if x.lit is _NOLIT and (x.kind.base not in allowed or x.kind.is_set):
                raise self.err(x.node, f"'{sym}' needs {need}; '{self.src(x.node)}' is {self._kdesc(x)}")
        a, b = self.unify(a, b, f"'{sym}' mixes kinds", node)
        for x in (a, b):
            if x.kind.base not in allowed or x.kind.is_set:
                raise self.err(x.node, f"'{sym}' needs {need}; '{self.src(x.node)}' is {self._kdesc(x)}")
        kinds = (a.kind.base, b.kind.base)
        if "any" in kinds:
            rk = ANY
        elif op is ast.Div or "float" in kinds:
            rk = _FLOAT
        elif op in (ast.BitAnd, ast.BitOr, ast.BitXor) and "flags" in kinds:
            rk = a.kind if a.kind.base == "flags" else b.kind
        else:
            rk = _INT
        fn = _ARITH.get(op) or _BITS[op]
        fa, fb = a.ev, b.ev
        divides = op in (ast.Div, ast.FloorDiv, ast.Mod)
        shifts = op in (ast.LShift, ast.RShift)

        def ev(c):
            va, pa = fa(c)
            vb, pb = fb(c)
            va, vb = _num(va), _num(vb)
            p = _and_p(pa, pb)
            if divides:
                bad = vb == 0
                if np.any(bad):
                    vb = np.where(bad, 1, vb)
                    p = _and_p(p, _norm_p(np.logical_not(bad)))
            elif shifts:
                bad = (vb < 0) | (vb > 63)
                if np.any(bad):
                    vb = np.where(bad, 0, vb)
                    p = _and_p(p, _norm_p(np.logical_not(bad)))
            with np.errstate(all="ignore"):
                r = fn(va, vb)
            return _scalar(r), p
        return _N(rk, ev, node)

    def v_UnaryOp(self, node: ast.UnaryOp) -> _N:
        if isinstance(node.op, (ast.USub, ast.UAdd)) and isinstance(node.operand, ast.Constant) \
                and isinstance(node.operand.value, (int, float)) and not isinstance(node.operand.value, bool):
            return self._const_node(self._literal_value(node), node)
        x = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            if x.kind.base not in ("bool", "any") or x.lit is not _NOLIT and not isinstance(x.lit, bool):
                raise self.err(node, f"'not' needs a condition; '{self.src(x.node)}' is {self._kdesc(x)}")
            x = self.as_kind(x, _BOOL)
            f = x.ev

            def ev(c):
                v, p = f(c)
                return np.logical_not(_truth(v, p)), True
            return _N(_BOOL, ev, node)
        if isinstance(node.op, ast.Invert):
            if x.kind.base not in ("int", "flags", "any") or x.kind.is_set:
                hint = " (use 'not' for conditions)" if x.kind.base == "bool" else ""
                raise self.err(node, f"'~' needs an integer; '{self.src(x.node)}' is {self._kdesc(x)}{hint}")
            x = self.as_kind(x, _INT)
            f = x.ev

            def ev(c):
                v, p = f(c)
                return _scalar(np.invert(_num(v))), p
            return _N(_INT if x.kind.base != "any" else ANY, ev, node)
        # unary minus / plus on an expression
        if x.kind.base not in ("int", "float", "flags", "any") or x.kind.is_set:
            raise self.err(node, f"unary '-' needs a number; '{self.src(x.node)}' is {self._kdesc(x)}")
        f = x.ev
        neg = isinstance(node.op, ast.USub)
        rk = _FLOAT if x.kind.base == "float" else (ANY if x.kind.base == "any" else _INT)

        def ev(c):
            v, p = f(c)
            v = _num(v)
            return (_scalar(np.negative(v)) if neg else v), p
        return _N(rk, ev, node)

    def _const_node(self, v, node) -> _N:
        if isinstance(v, int):
            self._check_int(v, node)
            return _N(_INT, lambda c, x=np.int64(v): (x, True), node, lit=v)
        return _N(_FLOAT, lambda c, x=np.float64(v): (x, True), node, lit=v)

    # ---- logic
    def v_BoolOp(self, node: ast.BoolOp) -> _N:
        sym = "and" if isinstance(node.op, ast.And) else "or"
        xs = []
        for v in node.values:
            x = self.visit(v)
            if x.kind.base not in ("bool", "any") or (x.lit is not _NOLIT and not isinstance(x.lit, bool)):
                hint = f" (compare it: {self.src(x.node)} != 0)" if x.kind.base in _INTEGRAL and x.lit is _NOLIT else ""
                raise self.err(x.node, f"'{sym}' needs conditions; '{self.src(x.node)}' is {self._kdesc(x)}{hint}")
            xs.append(self.as_kind(x, _BOOL).ev)
        red = np.logical_and if sym == "and" else np.logical_or

        def ev(c):
            r = _truth(*xs[0](c))
            for f in xs[1:]:
                r = red(r, _truth(*f(c)))
            return r, True
        return _N(_BOOL, ev, node)

    def v_IfExp(self, node: ast.IfExp) -> _N:
        t = self.visit(node.test)
        if t.kind.base not in ("bool", "any") or (t.lit is not _NOLIT and not isinstance(t.lit, bool)):
            raise self.err(node.test, f"'if' needs a condition; '{self.src(t.node)}' is {self._kdesc(t)}")
        t = self.as_kind(t, _BOOL)
        a, b = self.visit(node.body), self.visit(node.orelse)
        for x in (a, b):
            if x.kind == _TUPLE:
                raise self.err(x.node, "a tuple can only follow 'in' or 'not in'")
        a_none, b_none = a.kind == _NONE, b.kind == _NONE
        if a_none and b_none:
            raise self.err(node, "both branches are None")
        if a_none or b_none:
            other = b if a_none else a
            if other.lit is not _NOLIT:
                other = self.as_kind(other, other.kind)
            kind = other.kind
            zero = _zero(kind)
            none = _N(kind, lambda c: (zero, False), (a if a_none else b).node)
            a, b = (none, other) if a_none else (other, none)
        else:
            a, b = self.unify(a, b, "the branches of 'if' differ", node)
            kind = a.kind if a.kind.base != "any" else b.kind
            if kind.base in _NUMERIC and "float" in (a.kind.base, b.kind.base):
                kind = _FLOAT
        ft, fa, fb = t.ev, a.ev, b.ev

        def ev(c):
            cond = _truth(*ft(c))
            va, pa = fa(c)
            vb, pb = fb(c)
            v = np.where(cond, va, vb)
            if pa is True and pb is True:
                p = True
            else:
                p = _norm_p(np.where(cond, pa, pb))
            return _scalar(v), p
        return _N(kind, ev, node)

    # ---- functions
    def v_Call(self, node: ast.Call) -> _N:
        if not isinstance(node.func, ast.Name):
            what = self.src(node.func)
            raise self.err(node, f"calling '{what}' is not allowed; functions: {', '.join(FUNCTIONS)}")
        fname = node.func.id
        if fname not in FUNCTIONS:
            if self.ns is not None and fname in self.ns.vars:
                raise self.err(node, f"'{fname}' is a name, not a function")
            raise self.err(node, f"unknown function '{fname}'{_suggest(fname, FUNCTIONS)}; "
                                 f"functions: {', '.join(FUNCTIONS)}")
        if node.keywords:
            raise self.err(node, f"{fname}() takes no keyword arguments")
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise self.err(a, "'*' unpacking is not allowed in a rule expression")
        return getattr(self, "f_" + fname)(node, node.args)

    def _arity(self, node, args, lo: int, hi: int | None, usage: str) -> None:
        if len(args) < lo or (hi is not None and len(args) > hi):
            raise self.err(node, f"usage: {usage}")

    def _number(self, x: _N, fname: str) -> _N:
        if x.kind.base not in ("int", "float", "flags", "any") or x.kind.is_set or \
                (x.lit is not _NOLIT and (isinstance(x.lit, (bool, str)) or x.lit is None)):
            raise self.err(x.node, f"{fname}() needs numbers; '{self.src(x.node)}' is {self._kdesc(x)}")
        return x

    def f_abs(self, node, args) -> _N:
        self._arity(node, args, 1, 1, FUNCTIONS["abs"])
        x = self._number(self.visit(args[0]), "abs")
        x = self.as_kind(x, x.kind)
        f = x.ev
        rk = _FLOAT if x.kind.base == "float" else (ANY if x.kind.base == "any" else _INT)

        def ev(c):
            v, p = f(c)
            return _scalar(np.abs(_num(v))), p
        return _N(rk, ev, node)

    def _minmax(self, node, args, fname: str) -> _N:
        self._arity(node, args, 2, None, FUNCTIONS[fname])
        xs = [self._number(self.visit(a), fname) for a in args]
        xs = [self.as_kind(x, x.kind) for x in xs]
        bases = {x.kind.base for x in xs}
        rk = ANY if "any" in bases else (_FLOAT if "float" in bases else _INT)
        red = np.minimum if fname == "min" else np.maximum
        fs = [x.ev for x in xs]

        def ev(c):
            v, p = fs[0](c)
            v = _num(v)
            for f in fs[1:]:
                w, q = f(c)
                v = red(v, _num(w))
                p = _and_p(p, q)
            return _scalar(v), p
        return _N(rk, ev, node)

    def f_min(self, node, args) -> _N:
        return self._minmax(node, args, "min")

    def f_max(self, node, args) -> _N:
        return self._minmax(node, args, "max")

    def f_present(self, node, args) -> _N:
        self._arity(node, args, 1, 1, FUNCTIONS["present"])
        x = self.visit(args[0])
        if x.lit is not _NOLIT:
            raise self.err(x.node, "present() takes a name or an expression, not a literal")
        f = x.ev

        def ev(c):
            p = f(c)[1]
            return p, True
        return _N(_BOOL, ev, node)

    def _flags_fn(self, node, args, fname: str) -> _N:
        self._arity(node, args, 2, None, FUNCTIONS[fname])
        x = self.visit(args[0])
        if x.kind.base not in ("flags", "int", "any") or x.kind.is_set or x.lit is not _NOLIT:
            raise self.err(x.node, f"{fname}() tests a flags value; '{self.src(x.node)}' is {self._kdesc(x)}")
        mask = 0
        for a in args[1:]:
            if not isinstance(a, ast.Constant) or isinstance(a.value, bool) or not isinstance(a.value, (str, int)):
                raise self.err(a, f"{fname}() takes flag names as string literals, e.g. \"SYN\"")
            if isinstance(a.value, str):
                if x.kind.base == "int":
                    raise self.err(a, f"'{self.src(x.node)}' has no flag names; give bit values (0x02)")
                if x.kind.base == "any":
                    continue
                mask |= self._flag_bits(a.value, x.kind, a)
            else:
                self._check_int(a.value, a)
                mask |= a.value
        f = x.ev
        m = np.int64(mask)
        want_all = fname == "has_flag"

        def ev(c):
            v, p = f(c)
            hit = np.bitwise_and(_num(v), m)
            r = (hit == m) if want_all else (hit != 0)
            return _truth(r, p), True
        return _N(_BOOL, ev, node)

    def f_has_flag(self, node, args) -> _N:
        return self._flags_fn(node, args, "has_flag")

    def f_any_flag(self, node, args) -> _N:
        return self._flags_fn(node, args, "any_flag")


# =========================================================================== public objects

class Expr:
    """A compiled expression. ``kind`` is its result kind; ``names`` the names it reads."""

    def __init__(self, text: str, root: _N, ns: "Namespace | None", names: frozenset[str]):
        self.text = text
        self._root = root
        self.kind = root.kind if root.kind not in (_TUPLE, _NONE) else ANY
        self.namespace = ns
        self.names = names

    def __repr__(self) -> str:
        return f"Expr({self.text!r}, kind={self.kind.describe()})"

    @property
    def bound(self) -> bool:
        """False when compiled without a namespace (checked for syntax only; cannot evaluate)."""
        return self.namespace is not None

    def _env(self, env, n) -> Env:
        if not self.bound:
            raise RuntimeError(f"expression {self.text!r} was compiled without a namespace: "
                               "it can be documented but not evaluated")
        return env if isinstance(env, Env) else Env(env, n)

    def evaluate_masked(self, env: "Env | Mapping[str, Any]", n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(values, present), both arrays of ``env.n`` rows."""
        e = self._env(env, n)
        v, p = self._root.ev(_Ctx(e, self.namespace))
        if not (isinstance(v, np.ndarray) and v.ndim == 1):
            v = np.full(e.n, v, dtype=object if isinstance(v, str) else None)
        if p is True or p is False:
            p = np.full(e.n, p, dtype=bool)
        return v, p

    def evaluate(self, env: "Env | Mapping[str, Any]", n: int | None = None) -> np.ndarray:
        """A condition: a bool array (absent counts as False). A value: the value array
        (use :meth:`evaluate_masked` to know where it is absent)."""
        e = self._env(env, n)
        v, p = self._root.ev(_Ctx(e, self.namespace))
        if self.kind.base == "bool":
            r = _truth(v, p)
            if isinstance(r, np.ndarray) and r.ndim == 1:
                return r if r.dtype == np.bool_ else r.astype(bool)
            return np.full(e.n, bool(r), dtype=bool)
        if isinstance(v, np.ndarray) and v.ndim == 1:
            return v
        return np.full(e.n, v, dtype=object if isinstance(v, str) else None)

    def format(self, env: "Env", rows=None) -> list[str]:
        """The value on each of ``rows`` (int indices or a bool mask; None: all) as text."""
        e = self._env(env, None)
        if self.kind.is_set:     # a set constant: the same text on every row
            value, present = self._root.ev(_Ctx(e, self.namespace))
            n = e.n if rows is None else (int(np.count_nonzero(rows)) if np.asarray(rows).dtype == np.bool_
                                         else len(rows))
            text = ABSENT_TEXT if value is None else format_value(self.kind, value, addr_str=e.addr_str)
            return [text] * n
        v, p = self.evaluate_masked(e)
        if rows is not None:
            v, p = v[rows], p[rows]
        return [format_value(self.kind, x, addr_str=e.addr_str) if ok else ABSENT_TEXT
                for x, ok in zip(v.tolist() if v.dtype != object else list(v), p.tolist())]


def compile_expr(text: str, namespace: "Namespace | None", *, want: str = "bool") -> Expr:
    """Parse and type-check ``text`` against ``namespace``.

    ``want``: ``"bool"`` for conditions (select/assert), ``"value"`` for anything else.
    ``namespace=None`` checks syntax and the whitelist only (the Expr cannot be evaluated).
    Raises :class:`ExprError`.
    """
    if want not in ("bool", "value"):
        raise ValueError(f"want must be 'bool' or 'value', not {want!r}")
    c = _Compiler(str(text), namespace)
    root = c.compile(want)
    return Expr(str(text), root, namespace, frozenset(c.names))


# =========================================================================== templates

class Template:
    """A message template: literal text with ``{expression}`` fields; ``{{`` and ``}}`` are
    literal braces. Each field is compiled as a value expression of the scope's namespace."""

    def __init__(self, text: str, parts: tuple, ns):
        self.text = text
        self.parts = parts                       # str | (field text, Expr)
        self.namespace = ns

    @property
    def fields(self) -> list[Expr]:
        return [p[1] for p in self.parts if not isinstance(p, str)]

    @property
    def names(self) -> frozenset[str]:
        out: set[str] = set()
        for e in self.fields:
            out |= e.names
        return frozenset(out)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"

    def render(self, env: Env, rows=None) -> list[str]:
        """One string per row of ``rows`` (int indices or a bool mask; None: every row).

        Fields are evaluated over the whole env (vectorised); only the formatting of the
        selected rows runs per row."""
        if rows is None:
            count = env.n
        elif isinstance(rows, np.ndarray) and rows.dtype == np.bool_:
            count = int(rows.sum())
        else:
            count = len(rows)
        cols: list[list[str] | str] = []
        for p in self.parts:
            cols.append(p if isinstance(p, str) else p[1].format(env, rows))
        return ["".join(c if isinstance(c, str) else c[i] for c in cols) for i in range(count)]


def compile_template(text: str, namespace: "Namespace | None") -> Template:
    """Parse ``{field}`` placeholders and compile each (ExprError with the offset in ``text``)."""
    text = str(text)
    parts: list = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "{" and text.startswith("{{", i):
            buf.append("{")
            i += 2
            continue
        if ch == "}" and text.startswith("}}", i):
            buf.append("}")
            i += 2
            continue
        if ch == "}":
            raise ExprError("single '}' in a template (write '}}' for a brace)", text, i)
        if ch == "{":
            j, quote = i + 1, None
            while j < n:
                cj = text[j]
                if quote:
                    if cj == "\\":
                        j += 1
                    elif cj == quote:
                        quote = None
                elif cj in "'\"":
                    quote = cj
                elif cj == "{":
                    raise ExprError("'{' inside a template field", text, j)
                elif cj == "}":
                    break
                j += 1
            if j >= n:
                raise ExprError("unclosed '{' in a template (write '{{' for a brace)", text, i)
            src = text[i + 1:j]
            if not src.strip():
                raise ExprError("empty template field '{}'", text, i)
            if buf:
                parts.append("".join(buf))
                buf = []
            comp = _Compiler(src, namespace, base_offset=i + 1, full_text=text)
            root = comp.compile("value")
            parts.append((src, Expr(src, root, namespace, frozenset(comp.names))))
            i = j + 1
            continue
        buf.append(ch)
        i += 1
    if buf:
        parts.append("".join(buf))
    return Template(text, tuple(parts), namespace)
