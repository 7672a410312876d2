"""``lvs-inspect director -t TOPOLOGY -i IFACE [-i IFACE ...] [--ready-file PATH]``: the
reference forwarder as the live director of the network namespace it runs in.

Contract (what the lab relies on)
---------------------------------
* Run it inside the director's namespace, as root::

      ip netns exec NS python -m lvs_inspect director -t topo.toml -i d-c -i d-r

  ``-i`` names every interface to forward on (client side and real-server side, or the one
  shared segment of a DR set-up). ``-t`` takes any topology format ``-t`` takes elsewhere.
* Before it is started, the namespace must be set up: interfaces up with their addresses,
  the VIPs configured on the client-facing interface and the FullNAT local addresses (LIPs)
  on the real-server-facing one (the kernel answers ARP for them; the director never answers
  ARP), routes toward the clients and real servers. ``ip_forward`` may stay 0 (the director
  forwards service traffic itself; with 1, a NAT real server's packet without a connection is
  forwarded unchanged, as the kernel would).
* When the sockets are bound and the nftables table ``netdev lvs_inspect_director`` is
  installed, it prints ``ready`` (one line, flushed) on stdout and, with ``--ready-file``,
  creates that file (its content is the process id). Nothing else is written to stdout.
* It forwards until SIGTERM or SIGINT, then removes the nft table and the neighbour entries
  it created, prints one JSON line of statistics on stderr (``"event": "director-stats"``:
  packets in/out, drops by reason, connections, packets per second) and exits 0.
* Exit 2 with one line on stderr (``lvs-inspect: ...``) and nothing on stdout when it cannot
  start: not root, no such interface, a bad topology (file, line and key named), nft or ip
  missing, the nft table already present (another director in the namespace).
* ``--toa-port-byteorder host`` is a fault-injection option for the lab: the port in the
  TOA option of FullNAT services is written in host (little-endian) order, byte-swapped on
  the wire, as buggy TOA modules and directors do. The default, ``network``, is right.
* Notices while running (an interface down, a VIP not configured, a next hop that does not
  resolve) are single lines on stderr starting with ``lvs-inspect director:``.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

from .common import EXIT_ERROR, EXIT_OK


def register(sub) -> None:
    p = sub.add_parser(
        "director", help="run the reference forwarder as a live director (AF_PACKET, root)",
        description="Forward NAT, DR, TUN and FullNAT traffic in this network namespace with the "
                    "reference model, on AF_PACKET sockets. Prints 'ready' when forwarding; stops "
                    "on SIGTERM/SIGINT and prints its statistics as one JSON line on stderr.")
    p.add_argument("-t", "--topology", required=True, metavar="TOPOLOGY",
                   help="topology: TOML, ipvsadm -Sn/-Ln output or keepalived.conf")
    p.add_argument("-i", "--interface", action="append", required=True, metavar="IFACE",
                   help="an interface to forward on (repeat for each)")
    p.add_argument("--profile", metavar="NAME",
                   help="override the topology's implementation profile (linux, linux-legacy, "
                        "alibaba, dpvs)")
    p.add_argument("--ready-file", metavar="PATH",
                   help="create PATH (holding the pid) once forwarding has started")
    p.add_argument("--toa-port-byteorder", choices=("network", "host"), default="network",
                   help="fault injection for the lab: 'host' writes the TOA option's client port "
                        "byte-swapped (little-endian), as buggy TOA modules/directors do "
                        "(default: network, the right order)")
    p.set_defaults(func=run)


def _fail(msg: str) -> int:
    print(f"lvs-inspect: director: {msg}", file=sys.stderr, flush=True)
    return EXIT_ERROR


def run(args) -> int:
    from ..errors import InputError
    from ..forwarder.live import DirectorError, LiveDirector
    from ..topology import load_topology

    if os.geteuid() != 0:
        return _fail("needs root (AF_PACKET sockets and nftables: CAP_NET_RAW, CAP_NET_ADMIN); "
                     "run it with sudo or inside `ip netns exec` as root")
    try:
        topo = load_topology(args.topology, profile=args.profile)
    except ValueError as e:          # an unknown --profile
        return _fail(str(e))
    except InputError as e:
        print(f"lvs-inspect: {e}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            director = LiveDirector(topo, args.interface, stop=stop,
                                    toa_port_byteorder=args.toa_port_byteorder)
            director.open()
        except DirectorError as e:
            return _fail(str(e))
        try:
            if args.ready_file:
                tmp = f"{args.ready_file}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    f.write(f"{os.getpid()}\n")
                os.replace(tmp, args.ready_file)
            try:
                print("ready", flush=True)
            except (BrokenPipeError, ValueError):
                pass
            director.run()
        finally:
            director.close()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return EXIT_OK
