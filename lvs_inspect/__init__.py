"""lvs-inspect: packet-trace analyzer and mode validator for LVS/IPVS-style load balancers."""

__version__ = "0.1.0"
