"""``lvs-inspect rules [CODE]``: the documentation generated from the rule files."""
from __future__ import annotations

import sys

from ..errors import InputError
from .common import EXIT_OK, add_rule_options


def register(sub) -> None:
    p = sub.add_parser("rules", help="the documentation of the rules",
                       description="Without CODE: the index of every rule. With CODE (or a name): its full "
                                   "documentation. --names SCOPE lists what a rule of that scope may use.")
    p.add_argument("code", nargs="?", metavar="CODE")
    add_rule_options(p, selection=False)
    p.add_argument("--names", metavar="SCOPE", help="list the names of a scope (packet, pair, connection, arp, service)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checks.docs import render_index, render_namespace, render_rule
    from ..checks.engine import namespaces
    from ..checks.rules import load_rules
    from ..resources import rules_dir

    if args.names:
        ns = namespaces()
        if args.names not in ns:
            raise InputError("--names", f"unknown scope '{args.names}'; one of {', '.join(ns)}")
        sys.stdout.write(render_namespace(args.names, ns[args.names]) + "\n")
        return EXIT_OK
    rules = load_rules([rules_dir(), *args.rules])
    if args.code is None:
        sys.stdout.write(render_index(rules) + "\n")
        return EXIT_OK
    want = args.code.upper()
    for r in rules:
        if r.code == want or r.name == args.code:
            sys.stdout.write(render_rule(r) + "\n")
            return EXIT_OK
    raise InputError(args.code, "no such rule; `lvs-inspect rules` lists them")
