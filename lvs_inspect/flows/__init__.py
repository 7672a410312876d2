"""Flows: put every packet on its leg and stitch connections across hops and vantage points.

    flows = stitch(table, topology)
    flows.leg[i], flows.conn[i], flows.connections (a pandas DataFrame, one row per connection)

Legs (``LEGS``): client-director, director-rs, rs-director, director-client (NAT, FullNAT),
rs-client (DR/TUN replies; in NAT a reply that bypasses the director), client-rs (traffic to
the VIP that reaches a real server without passing the director), other.

Everything is computed over whole columns: a loop runs over services and real servers (a
handful), never over packets.
"""
from __future__ import annotations

from .legs import (LEG_CODES, LEGS, MODE_CODES, MODES, Endpoints, classify_legs)
from .stitch import Flows, stitch

__all__ = ["stitch", "Flows", "LEGS", "LEG_CODES", "MODES", "MODE_CODES", "classify_legs", "Endpoints"]
