"""Trace sources: snapshots while reading, one final analysis, errors as one line, stop honoured."""
from __future__ import annotations

import itertools
import threading
from pathlib import Path

from lvs_inspect.sources import TraceSource

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def _run(src, stop=None):
    out = []
    src.run(out.append, stop or threading.Event())
    return out


def test_snapshots_then_one_analysis_with_a_frozen_clock():
    ticks = itertools.count()
    folder = FIX / "synth" / "dr-arp-leak"
    snaps = _run(TraceSource([str(folder / "trace.pcapng")], topology_path=str(folder / "topology.toml"),
                             clock=lambda: float(next(ticks)), interval=0, chunk_bytes=32 << 10))
    stages = [s.stage for s in snaps]
    assert stages[0] == "reading" and stages[-1] == "done" and stages.count("done") == 1
    assert "stitching" in stages and "checking" in stages
    reading = [s.fraction for s in snaps if s.stage == "reading"]
    assert reading == sorted(reading) and reading[-1] == 1.0
    assert [s.clock for s in snaps] == sorted(s.clock for s in snaps)
    final = snaps[-1]
    assert final.analysis is not None and final.notes == ()
    assert {f.code for f in final.analysis.findings} >= {"DR101"}
    assert final.frames == len(final.analysis.table)


def test_inferred_topology_is_said():
    snaps = _run(TraceSource([str(FIX / "synth" / "nat" / "trace.pcapng")]))
    assert snaps[-1].notes == ("topology inferred from the trace",)


def test_error_is_a_snapshot_not_an_exception(tmp_path):
    bad = tmp_path / "x.pcap"
    bad.write_bytes(b"not a capture at all")
    snaps = _run(TraceSource([str(bad)]))
    assert snaps[-1].stage == "error" and str(bad) in snaps[-1].error and snaps[-1].done


def test_stop_ends_without_a_result():
    stop = threading.Event()
    stop.set()
    snaps = _run(TraceSource([str(FIX / "synth" / "nat" / "trace.pcapng")], chunk_bytes=16 << 10), stop)
    assert all(s.analysis is None for s in snaps)
