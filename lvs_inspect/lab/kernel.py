"""The kernel as the director: nftables rulesets that give NAT, FullNAT and DR on the wire
(there is no IPVS in this kernel; SEMANTICS §13 records what each looks like).

* NAT: ``dnat`` in prerouting (conntrack NAT: the first packet of a connection picks the real
  server, round robin with ``numgen inc``; the replies are rewritten back by conntrack);
* FullNAT: the same plus ``snat`` to the LIP toward the real servers — no TOA, no sequence delta,
  the TTL decremented both ways, the client's port kept as lport when it is free;
* DR: a netdev ingress ``fwd ip to RIP`` on the director's interface: only the MACs change and the
  TTL drops by one; the real server is chosen by a hash of the client's address and port
  (``numgen`` there would be per packet, not per connection).

TUN cannot be done by this kernel (no IPIP/GRE/FOU driver).
"""
from __future__ import annotations

from . import plan as P
from .plan import Plan


def ruleset(plan: Plan) -> str:
    srv = plan.servers
    n = len(srv)
    if plan.mode in ("nat", "fullnat"):
        targets = ", ".join(f"{i} : {s.ip} . {s.director_port}" for i, s in enumerate(srv))
        out = [f"# lvs-inspect lab: the kernel as a {plan.mode.upper()} director (nftables conntrack NAT)",
               "table ip lvslab {",
               "    chain pre {",
               "        type nat hook prerouting priority dstnat; policy accept;",
               "        # the first packet of each connection picks the next real server (round robin)",
               f"        ip daddr {P.VIP} tcp dport {P.VPORT} dnat ip to numgen inc mod {n} map {{ {targets} }}",
               "    }"]
        if plan.mode == "fullnat":
            out += ["    chain post {",
                    "        type nat hook postrouting priority srcnat; policy accept;",
                    "        # FullNAT-shaped: the real servers see the local address (LIP), not the client",
                    f'        oifname "director-r" ip daddr {{ {", ".join(s.ip for s in srv)} }} snat ip to {P.LIP}',
                    "    }"]
        out.append("}")
        return "\n".join(out) + "\n"
    if plan.mode == "dr":
        targets = ", ".join(f"{i} : {s.ip}" for i, s in enumerate(srv))
        return "\n".join([
            "# lvs-inspect lab: the kernel as a DR director (nftables netdev fwd: only the MACs change)",
            "table netdev lvslab {",
            "    chain ingress {",
            '        type filter hook ingress device "director" priority 0; policy accept;',
            "        # per connection: a hash of the client's address and port picks the real server",
            (f"        ip daddr {P.VIP} tcp dport {P.VPORT} fwd ip to jhash ip saddr . tcp sport mod {n} "
            f'map {{ {targets} }} device "director"'),
            "    }",
            "}"]) + "\n"
    raise ValueError(f"the kernel cannot be a {plan.mode} director here")
