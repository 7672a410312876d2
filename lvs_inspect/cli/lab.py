"""``lvs-inspect lab run|list|clean``: real traces from network namespaces (docs/lab.md)."""
from __future__ import annotations

import sys

from .common import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("lab", help="make real traces in network namespaces (needs root)",
                       description="Build a client, a router, a director and real servers in network namespaces, "
                                   "make real requests, capture every vantage point and write a fixture folder "
                                   "(trace.pcapng, topology.toml, expected.json, README.md). See docs/lab.md.")
    lsub = p.add_subparsers(dest="lab_command", metavar="{run,list,clean}")
    lsub.required = True
    r = lsub.add_parser("run", help="run one case and write its fixture folder",
                        description="Run one case. Exit status: 0 the audit of the new trace agrees with its "
                                    "expected.json, 1 it disagrees (the README says how), 2 the lab could not run "
                                    "(not root, a tool missing, a combination the lab cannot make).")
    r.add_argument("--mode", required=True, choices=("nat", "dr", "tun", "fullnat"))
    r.add_argument("--fault", metavar="NAME", help="the misconfiguration to make (`lvs-inspect lab list`)")
    r.add_argument("--director", choices=("forwarder", "kernel"), default="forwarder",
                   help="who forwards: the reference forwarder live (default) or the kernel with nftables")
    r.add_argument("--requests", "-n", type=int, default=10, metavar="N", help="HTTP requests (default 10)")
    r.add_argument("--profile", choices=("linux", "linux-legacy", "alibaba", "dpvs"),
                   help="declared implementation profile (default: dpvs for FullNAT by the forwarder, else linux)")
    r.add_argument("--tun", choices=("ipip", "gue", "gre"), help="TUN encapsulation (default ipip)")
    r.add_argument("--size", type=int, default=2000, metavar="BYTES", help="bytes in each answer (default 2000)")
    r.add_argument("--out", "-o", required=True, metavar="DIR", help="the fixture folder to write")
    r.add_argument("--verbose", "-v", action="store_true", help="print every set-up command")
    r.set_defaults(func=run_cmd)
    lst = lsub.add_parser("list", help="the modes x faults x directors the lab can run")
    lst.set_defaults(func=list_cmd)
    c = lsub.add_parser("clean", help="remove namespaces left by lab runs that died")
    c.add_argument("--force", action="store_true", help="also those of runs that are still running")
    c.set_defaults(func=clean_cmd)


def run_cmd(args) -> int:
    from ..lab.netns import Interrupted, LabError
    from ..lab.plan import make_plan
    from ..lab.run import run_case

    try:
        plan = make_plan(args.mode, args.fault, args.director, profile=args.profile, tun=args.tun,
                         requests=args.requests)
    except ValueError as e:
        print(f"lvs-inspect: lab run: {e}", file=sys.stderr)
        return EXIT_ERROR
    argv = ["lab", "run", "--mode", args.mode]
    if args.fault:
        argv += ["--fault", args.fault]
    argv += ["--director", args.director]
    if args.profile:
        argv += ["--profile", args.profile]
    if args.tun:
        argv += ["--tun", args.tun]
    if args.requests != 10:
        argv += ["--requests", str(args.requests)]
    if args.size != 2000:
        argv += ["--size", str(args.size)]
    argv += ["--out", args.out]
    command = "lvs-inspect " + " ".join(argv)
    try:
        res = run_case(plan, args.out, command=command, verbose=args.verbose, size=args.size,
                       log=lambda m: print(m, file=sys.stderr))
    except PermissionError as e:
        print(f"lvs-inspect: lab run: {e}", file=sys.stderr)
        return EXIT_ERROR
    except LabError as e:
        print(f"lvs-inspect: lab run: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Interrupted as e:
        print(f"lvs-inspect: lab run: stopped by {e}; namespaces removed", file=sys.stderr)
        return 128 + 15
    except KeyboardInterrupt:
        print("lvs-inspect: lab run: interrupted; namespaces removed", file=sys.stderr)
        return 130
    c = res.client
    s = res.report["summary"]
    codes = sorted({f["code"] for f in res.report["findings"]})
    print(f"{plan.case}: {c['ok']}/{c['requests']} requests answered; {s['frames']} frames, "
          f"{res.trace_bytes} bytes in {res.out}/trace.pcapng; findings: {', '.join(codes) or 'none'}")
    if res.problems:
        print("the audit disagrees with expected.json:", file=sys.stderr)
        for p in res.problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_FINDINGS
    print("the audit agrees with expected.json")
    return EXIT_OK


def list_cmd(args) -> int:
    from ..lab.plan import DIRECTORS, FAULTS, MODES, supported

    def cell(mode, fault):
        ok = [d for d in DIRECTORS if supported(mode, fault, d) is None]
        return "+".join("fwd" if d == "forwarder" else "kernel" for d in ok) or "-"

    w = max(len(n) for n in FAULTS) + 2
    print("Cases `lvs-inspect lab run` can make (fwd = --director forwarder, kernel = --director kernel):")
    print()
    print(f"{'fault':<{w}}" + "".join(f"{m:<13}" for m in MODES) + "what")
    print(f"{'(healthy)':<{w}}" + "".join(f"{cell(m, None):<13}" for m in MODES) + "the set-up as it should be")
    for name, f in FAULTS.items():
        print(f"{name:<{w}}" + "".join(f"{cell(m, name):<13}" for m in MODES) + f.title)
    print()
    print("Why some cells are empty:")
    print("  tun, kernel: the kernel cannot encapsulate here (no IPIP/GRE/FOU driver)")
    for name, f in FAULTS.items():
        usable = [(m, d) for m in f.modes for d in f.directors]
        blocked = [supported(m, name, d) for m, d in usable]
        if all(blocked):
            reason = blocked[0].replace(f"fault '{name}' ", "")
            print(f"  {name}: {reason}")
        elif f.why_only:
            print(f"  {name}: {f.why_only}")
    from ..lab.run import director_command_available
    why = director_command_available()
    if why:
        print()
        print(f"Note: {why}.")
    return EXIT_OK


def clean_cmd(args) -> int:
    import os

    from ..lab.netns import clean, leftovers
    if os.geteuid() != 0:
        print("lvs-inspect: lab clean: needs root (it deletes network namespaces)", file=sys.stderr)
        return EXIT_ERROR
    if not leftovers():
        print("no lab namespaces left over")
        return EXIT_OK
    n = clean(include_running=args.force)
    print(f"removed {n} namespace(s)")
    return EXIT_OK
