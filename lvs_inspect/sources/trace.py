"""Trace files as a source: read with progress, analyse once, hand out the result."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from ..capture import PacketTable, TraceReader
from ..checks.engine import analyse
from ..errors import InputError
from ..topology import Topology
from . import Emit, Snapshot


class TraceSource:
    """``TraceSource(["a.pcapng"], topology_path="topo.toml")``; ``run(emit, stop)`` in a thread.

    Emits a snapshot at most every ``interval`` seconds of ``clock`` while reading (stage
    "reading" with the share of bytes read), one per analysis stage, then the final one (stage
    "done" with the analysis, or "error" with the one-line message). ``stop`` ends the read after
    the current chunk; nothing more is emitted then.
    """

    def __init__(self, paths: Sequence[str], *, topology_path: str | None = None,
                 topology: Topology | None = None, rule_dirs: Sequence[str] = (), select: str | None = None,
                 ignore: str | None = None, toa_kinds: Sequence[int] = (254, 253, 200),
                 gue_ports: Sequence[int] = (6080,), clock: Callable[[], float] = time.monotonic,
                 interval: float = 0.1, chunk_bytes: int | None = None):
        self.paths = [str(p) for p in paths]
        self.title = ", ".join(self.paths)
        self.topology_path = topology_path
        self.topology = topology
        self.rule_dirs, self.select, self.ignore = tuple(rule_dirs), select, ignore
        self.toa_kinds, self.gue_ports = tuple(toa_kinds), tuple(gue_ports)
        self.clock = clock
        self.interval = interval
        self.chunk_bytes = chunk_bytes

    def run(self, emit: Emit, stop: threading.Event) -> None:
        frames = 0
        last = [float("-inf")]

        def snap(stage: str, fraction: float | None = None, *, force: bool = False, **kw) -> None:
            now = self.clock()
            if force or now - last[0] >= self.interval:
                last[0] = now
                emit(Snapshot(stage=stage, clock=now, fraction=fraction, frames=frames, **kw))

        try:
            opts = {"chunk_bytes": self.chunk_bytes} if self.chunk_bytes else {}
            reader = TraceReader(self.paths, toa_kinds=self.toa_kinds, gue_ports=self.gue_ports, stop=stop,
                                 **opts)
            snap("reading", 0.0, force=True)
            parts = []
            for part in reader:
                parts.append(part)
                frames += len(part)
                snap("reading", reader.fraction())
            if stop.is_set():
                return
            table = PacketTable.concat(parts) if parts else reader.empty()
            del parts
            snap("reading", 1.0, force=True)
            analysis = analyse(table, topology_path=self.topology_path, topology=self.topology,
                               rule_dirs=self.rule_dirs, select=self.select, ignore=self.ignore,
                               toa_kinds=self.toa_kinds, label=self.title,
                               progress=lambda stage, fraction=None: snap(stage, 1.0, force=True))
            if stop.is_set():
                return
            notes = ("topology inferred from the trace",) if analysis.result.topology == "inferred" else ()
            snap("done", 1.0, force=True, analysis=analysis, notes=notes)
        except InputError as e:
            snap("error", None, force=True, error=str(e))
