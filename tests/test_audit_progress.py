"""Progress of a long read: the share of input bytes, growing to 1; the audit's bar line."""
from __future__ import annotations

import gzip
from pathlib import Path

from lvs_inspect.capture import TraceReader
from lvs_inspect.checks.engine import audit
from lvs_inspect.cli.audit import progress_line

FIX = Path(__file__).resolve().parents[1] / "fixtures"
TRACE = FIX / "synth" / "nat" / "trace.pcapng"


def _fractions(paths, **kw):
    seen = []
    for _ in TraceReader([str(p) for p in paths], chunk_bytes=16 << 10, progress=seen.append, **kw):
        pass
    return seen


def test_fractions_grow_to_one_over_several_inputs():
    seen = _fractions([TRACE, TRACE])
    assert len(seen) > 4
    assert seen == sorted(seen) and 0 < seen[0] < 0.5 and seen[-1] == 1.0


def test_gzip_progress_counts_compressed_bytes(tmp_path):
    gz = tmp_path / "t.pcapng.gz"
    gz.write_bytes(gzip.compress(TRACE.read_bytes()))
    seen = _fractions([gz])
    assert seen and seen[-1] == 1.0 and all(0 <= f <= 1 for f in seen)


def test_stdin_has_no_fraction():
    with open(TRACE, "rb") as f:
        seen = _fractions(["-"], stdin=f)
    assert seen and all(f is None for f in seen)


def test_audit_reports_stages_in_order():
    stages = []
    audit([str(TRACE)], topology_path=str(TRACE.parent / "topology.toml"),
          progress=lambda stage, fraction=None: stages.append(stage))
    order = [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s]
    assert order == ["reading", "stitching", "checking"]


def test_progress_line():
    assert progress_line("reading", 0.5) == "lvs-inspect: reading [###############...............]  50%"
    assert progress_line("stitching", None) == "lvs-inspect: stitching..."
