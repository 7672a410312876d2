"""The lab: real traces from network namespaces (issue 6).

``lvs-inspect lab run`` builds a client, a router, a director and real servers in network
namespaces, makes real HTTP requests through the director (the kernel with nftables, or the
reference forwarder running live), captures every vantage point into one pcapng and writes a
fixture folder that explains itself: ``trace.pcapng``, ``topology.toml``, ``expected.json``,
``README.md``. See docs/lab.md.

Modules: :mod:`.plan` (cases, faults, expected findings; no side effects), :mod:`.netns`
(namespaces and processes, always torn down), :mod:`.run` (one run), :mod:`.kernel` (nftables
directors), :mod:`.topo` (topology files), :mod:`.expected` (expected.json and the comparison),
:mod:`.readme`; programs run inside the namespaces: :mod:`.httpd`, :mod:`.client`,
:mod:`.decap` (TUN decapsulation stand-in), :mod:`.toainject` (a client forging TOA).
"""
