"""The lab live: regenerate a few cases in network namespaces and check the verdicts, the
clean-up on success, on Ctrl-C and after a killed run, and that the root namespace is untouched.

Needs root (network namespaces, nftables, packet capture): marked ``lab``; CI runs as root.
About 35 s.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lvs_inspect.checks.engine import audit
from lvs_inspect.lab.expected import compare, load_expected

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _needs_root_and_tools():
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (network namespaces, nftables, packet capture): "
                    "run them as root or deselect them with -m 'not lab'")
    missing = [t for t in ("ip", "nft", "dumpcap", "mergecap") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"the lab tests need {', '.join(missing)} (Debian: apt-get install iproute2 nftables tshark)")


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _root_state() -> str:
    parts = [subprocess.run(cmd, capture_output=True, text=True, check=False).stdout for cmd in (
        ["ip", "-br", "link"], ["ip", "-br", "addr"], ["ip", "route"], ["ip", "neigh", "show", "nud", "permanent"])]
    for key in ("net/ipv4/ip_forward", "net/ipv4/conf/all/arp_ignore", "net/ipv4/conf/all/rp_filter"):
        parts.append(Path("/proc/sys", key).read_text())
    return "\n".join(parts)


def _lab(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lvs_inspect", "lab", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


CASES = [
    ("nat", None, "kernel", ()),
    ("dr", "arp-leak", "kernel", ()),
    ("fullnat", None, "forwarder", ()),
    ("tun", None, "forwarder", ()),
    ("fullnat", "toa-wrong", "forwarder", ("--profile", "alibaba")),   # the director's fault option
]


@pytest.mark.parametrize("mode,fault,director,extra", CASES,
                         ids=[f"{m}-{f or 'healthy'}-{d}" for m, f, d, _ in CASES])
def test_live_case_verdict(mode, fault, director, extra, tmp_path):
    before_ns, before_root = _namespaces(), _root_state()
    out = tmp_path / "case"
    args = ["run", "--mode", mode, "--director", director, "--requests", "4", "--out", str(out), *extra]
    if fault:
        args += ["--fault", fault]
    r = _lab(*args)
    assert r.returncode == 0, f"lab run exit {r.returncode}:\n{r.stdout}\n{r.stderr}"
    for name in ("trace.pcapng", "topology.toml", "expected.json", "README.md"):
        assert (out / name).is_file()
    # the same verdict from a fresh audit of the files on disk
    exp = load_expected(out / "expected.json")
    rep = audit([str(out / "trace.pcapng")], topology_path=str(out / "topology.toml")).to_json_dict()
    assert compare(exp, rep["findings"]) == []
    assert rep["summary"]["connections"] >= 4
    assert sorted(rep["inputs"][0]["interfaces"]) == sorted(
        ["client", "rs1", "rs2"] + (["director-c", "director-r"] if mode in ("nat", "fullnat") else ["director"]))
    assert (out / "trace.pcapng").stat().st_size < 400_000
    # nothing left behind, nothing changed outside the namespaces
    # (other programs may create namespaces meanwhile: only the lab's prefix counts)
    assert not {n for n in _namespaces() - before_ns if n.startswith("lvslab")}
    assert _root_state() == before_root


def _wait_for_namespaces(proc: subprocess.Popen, timeout: float = 20) -> set[str]:
    prefix = f"lvslab{proc.pid}-"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = {n for n in _namespaces() if n.startswith(prefix)}
        if len(mine) >= 6:           # c, r, d, sw, rs1, rs2
            return mine
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the run did not create its namespaces")


def test_ctrl_c_removes_the_namespaces(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "lvs_inspect", "lab", "run", "--mode", "dr", "--director",
                             "kernel", "--fault", "rs-no-vip", "--requests", "6", "--out", str(tmp_path / "x")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mine = _wait_for_namespaces(proc)
    time.sleep(1.0)                  # well inside the run: services and captures started
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted; namespaces removed" in err
    assert not mine & _namespaces()


def test_sigterm_removes_the_namespaces(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "lvs_inspect", "lab", "run", "--mode", "nat", "--director",
                             "kernel", "--requests", "50", "--out", str(tmp_path / "x")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mine = _wait_for_namespaces(proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert not mine & _namespaces()


def test_lab_clean_removes_what_a_killed_run_left(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "lvs_inspect", "lab", "run", "--mode", "nat", "--director",
                             "kernel", "--requests", "50", "--out", str(tmp_path / "x")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mine = _wait_for_namespaces(proc)
    time.sleep(1.0)
    proc.kill()                      # no chance to clean up
    proc.communicate(timeout=10)
    assert mine <= _namespaces()
    r = _lab("clean")
    assert r.returncode == 0, r.stderr
    assert not mine & _namespaces()
    for ns in mine:
        assert f"deleted {ns}" in r.stdout


def test_a_failing_run_removes_the_namespaces(tmp_path):
    from lvs_inspect.lab.netns import LabError, run_prefix
    from lvs_inspect.lab.plan import make_plan
    from lvs_inspect.lab.run import run_case
    before_root = _root_state()
    plan = make_plan("nat", None, "forwarder", requests=1)
    plan.director_args = ["--no-such-option"]          # the director refuses to start
    with pytest.raises(LabError, match="director did not become ready"):
        run_case(plan, tmp_path / "x", command="test", log=lambda m: None)
    assert not {n for n in _namespaces() if n.startswith(run_prefix() + "-")}
    assert _root_state() == before_root
