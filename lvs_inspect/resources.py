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
