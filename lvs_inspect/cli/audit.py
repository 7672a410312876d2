"""``lvs-inspect audit``: check every hop of every connection and report the findings."""
from __future__ import annotations

import sys

from .common import (
    FORMAT_CHOICES,
    add_rule_options,
    add_topology_option,
    add_trace_options,
    reader_kwargs,
)


def register(sub) -> None:
    p = sub.add_parser("audit", help="check every hop of every connection against the mode's rewrites",
                       description="Decode the traces, stitch every connection across hops and capture points, "
                                   "evaluate the rules (rules/*.yaml and --rules packs) and report the findings. "
                                   "Exit status: 0 nothing at or above --fail-on, 1 findings at or above it, "
                                   "2 the tool could not do its job.")
    p.add_argument("traces", nargs="+", metavar="TRACE")
    add_topology_option(p, "inferred from the trace")
    p.add_argument("--format", choices=FORMAT_CHOICES, default="text")
    p.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE instead of stdout")
    p.add_argument("--fail-on", choices=("error", "warning", "info", "never"), default="error")
    add_rule_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress line on a terminal")
    add_trace_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checks.engine import audit
    from ..report import exit_code, render

    show = sys.stderr.isatty() and not args.no_progress

    def progress(stage: str, fraction: float | None = None) -> None:
        if show:
            print(f"\r{progress_line(stage, fraction)}\033[K", end="", file=sys.stderr, flush=True)

    kw = reader_kwargs(args)
    result = audit(args.traces, topology_path=args.topology, rule_dirs=args.rules, select=args.select,
                   ignore=args.ignore, toa_kinds=kw["toa_kinds"], gue_ports=kw["gue_ports"],
                   stdin=sys.stdin.buffer, progress=progress)
    if show:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    if args.format == "github":
        from ..report import github
        out = github.outputs(result)
        text = out.annotations
        github.append_step_summary(out.summary)
    else:
        color = args.format == "text" and not args.output and sys.stdout.isatty()
        text = render(result, args.format, color=color)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return exit_code(result, args.fail_on)


BAR = 30


def progress_line(stage: str, fraction: float | None) -> str:
    """``lvs-inspect: reading [#########.....................]  31%`` (a bar while the share of the
    input read is known, the stage name alone after that)."""
    if fraction is None:
        return f"lvs-inspect: {stage}..."
    done = round(max(0.0, min(1.0, fraction)) * BAR)
    return f"lvs-inspect: {stage} [{'#' * done}{'.' * (BAR - done)}] {fraction * 100:3.0f}%"
