"""Where the data files shipped with lvs-inspect live (rules, bundled fixtures)."""
from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def rules_dir() -> Path:
    """The rule pack: inside an installed wheel ``lvs_inspect/_rules``, in a checkout ``rules/``."""
    packaged = _PKG / "_rules"
    if packaged.is_dir():
        return packaged
    checkout = _PKG.parent / "rules"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"no rule files next to {_PKG}: the installation is incomplete")


#: the bundled demo: a lab capture (real kernel TCP and ARP, nftables as the DR director) in which a
#: real server left at arp_ignore=0 answers ARP for the VIP and takes the clients off the director
DEMO = "dr-arp-leak-kernel"
DEMO_TITLE = "a DR real server answers ARP for the VIP (lab capture)"


def demo_dir() -> Path:
    """The demo fixture folder (trace.pcapng, topology.toml): inside a wheel ``lvs_inspect/_demo``,
    in a checkout ``fixtures/lab/dr-arp-leak-kernel``."""
    for d in (_PKG / "_demo", _PKG.parent / "fixtures" / "lab" / DEMO):
        if (d / "trace.pcapng").is_file():
            return d
    raise FileNotFoundError(f"no demo trace next to {_PKG}: the installation is incomplete")

