"""Where the TUI and the live monitor get their data.

A *source* runs in a plain thread (``source.run(emit, stop)``) and hands out :class:`Snapshot`
objects through ``emit`` a few times a second at most: what stage it is at, how much of the input
it has read, the latest complete :class:`~lvs_inspect.checks.engine.Analysis`, and for a live
capture the rates and the drops of every interface. Consumers (the Textual app, ``lvs-inspect
watch``, tests) only ever see snapshots, never one message per packet; a newer snapshot replaces
an older one that has not been shown yet.

* :class:`TraceSource` (:mod:`.trace`) — trace files, analysed once;
* :class:`LiveSource` (:mod:`.live`) — dumpcap on live interfaces, analysed in windows.

The clock is injected (``clock=``) so that tests freeze it. Nothing here imports Textual.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..checks.engine import Analysis


@dataclass(frozen=True)
class InterfaceStats:
    """One capture interface as the capture engine reports it."""
    name: str
    received: int = 0                 # frames the analyzer got from this interface
    dropped_kernel: int | None = None       # dropped by the kernel / capture buffer (dumpcap's "ifdrop")
    dropped_capture: int | None = None      # dropped by the capture engine ("osdrop")


@dataclass(frozen=True)
class LiveStats:
    interfaces: tuple[InterfaceStats, ...] = ()
    packets_per_second: float = 0.0
    bytes_per_second: float = 0.0
    dropped_analyzer: int = 0         # frames the analyzer could not keep up with (never hidden)
    window_seconds: float = 0.0       # the span of traffic the current analysis covers
    ring_files: tuple[str, ...] = ()  # the pcapng ring, oldest first: any moment can be audited again
    paused: bool = False


@dataclass(frozen=True)
class Snapshot:
    stage: str                        # reading | inferring the topology | stitching | checking | done | live | error
    clock: float                      # the source's clock when it was taken
    fraction: float | None = None     # share of the input read (None: unknown, e.g. a stream or live)
    frames: int = 0                   # frames read so far
    analysis: Analysis | None = None  # the latest complete analysis (None until the first one)
    live: LiveStats | None = None
    error: str | None = None          # stage "error": one line naming the file and where
    notes: tuple[str, ...] = field(default=())   # e.g. "topology inferred from the trace"

    @property
    def done(self) -> bool:
        return self.stage in ("done", "error")


Emit = Callable[[Snapshot], None]


class Source(Protocol):
    title: str                        # what the UI shows as the source (file names, interfaces)

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Produce snapshots until the input is exhausted or ``stop`` is set."""


from .live import LiveSource  # noqa: E402  (needs the classes above)
from .trace import TraceSource  # noqa: E402

__all__ = ["Emit", "InterfaceStats", "LiveSource", "LiveStats", "Snapshot", "Source", "TraceSource"]
