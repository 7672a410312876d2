"""Every rule fires on the fixtures it names under `tests.fires` and stays quiet on `tests.quiet`.

One audit per fixture (all rules at once); the fixture's topology.toml is used when it has one,
otherwise the topology is inferred from the trace, as `lvs-inspect audit` does without -t.
"""
from __future__ import annotations

from collections import Counter
from functools import lru_cache
from pathlib import Path

import pytest

from lvs_inspect.checks.engine import audit, namespaces
from lvs_inspect.checks.rules import load_rules
from lvs_inspect.resources import rules_dir

FIX = Path(__file__).resolve().parents[1] / "fixtures"
RULES = load_rules([rules_dir()], namespaces())


def _trace(folder: Path) -> Path:
    traces = sorted(p for p in folder.iterdir() if p.name.startswith("trace."))
    assert traces, f"{folder}: no trace file"
    return traces[0]


@lru_cache(maxsize=None)
def findings_of(fixture: str) -> Counter:
    folder = FIX / fixture
    topo = folder / "topology.toml"
    result = audit([str(_trace(folder))], topology_path=str(topo) if topo.exists() else None)
    return Counter(f.code for f in result.findings)


CASES = [(r.code, case.name, case.count, True) for r in RULES if not r.deprecated for case in r.tests.fires]
CASES += [(r.code, fx, None, False) for r in RULES if not r.deprecated for fx in r.tests.quiet]


def test_every_rule_names_fixtures_that_exist():
    missing = sorted({(code, fx) for code, fx, _, _ in CASES if not (FIX / fx).is_dir()})
    assert not missing, f"rules name fixtures that do not exist: {missing}"


@pytest.mark.parametrize("code,fixture,count,fires", CASES, ids=[f"{c}-{'fires' if f else 'quiet'}-{x}"
                                                                  for c, x, _, f in CASES])
def test_rule_on_fixture(code, fixture, count, fires):
    if not (FIX / fixture).is_dir():
        pytest.fail(f"{code}: fixture {fixture} does not exist")
    got = findings_of(fixture)[code]
    if fires:
        assert got >= 1, f"{code} must fire on {fixture}; findings there: {dict(findings_of(fixture))}"
        if count is not None:
            assert got == count
    else:
        assert got == 0, f"{code} must stay quiet on {fixture}"


HEALTHY = ["engine/lab-nat-http", "engine/lab-dr-http", "engine/lab-fullnat-http"] + sorted(
    str(p.relative_to(FIX)) for p in FIX.glob("synth/*") if p.is_dir() and "-" not in p.name)


@pytest.mark.parametrize("fixture", HEALTHY)
def test_healthy_traces_have_no_error_or_warning(fixture):
    assert not findings_of(fixture), f"false findings on a healthy trace: {dict(findings_of(fixture))}"
