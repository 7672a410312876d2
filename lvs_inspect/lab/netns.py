"""Network namespaces for one lab run: created with a per-run prefix, torn down on every exit.

Everything a run creates lives inside namespaces called ``<prefix>-<role>``: the veth pairs are
created directly in their namespaces (``ip -n NS link add ... peer ... netns NS2``), so the
root namespace never sees an interface, a route or a sysctl change. Every background process is
started in its own session (a terminal's Ctrl-C reaches only the lab, which then stops them in
order: captures last, so that they flush) and stopped by its PID.

:func:`leftovers` and :func:`clean` find and remove the namespaces of runs that died without
cleaning up (SIGKILL, power loss): the prefix carries the PID of the run that made them.
"""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

PREFIX = "lvslab"
_NS_RE = re.compile(rf"^({PREFIX}(\d+))-([A-Za-z0-9_.-]+)$")


class LabError(RuntimeError):
    """A step of the set-up failed: the message says which and what the tool printed."""


def run_prefix(pid: int | None = None) -> str:
    return f"{PREFIX}{os.getpid() if pid is None else pid}"


def _ip_netns_list() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Leftover:
    namespace: str
    run_pid: int
    alive: bool          # the run that made it is still running
    pids: list[int]      # processes still inside it


def leftovers() -> list[Leftover]:
    """Namespaces named like a lab run's, with the processes inside them."""
    found = []
    for ns in _ip_netns_list():
        m = _NS_RE.match(ns)
        if not m:
            continue
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout
        pids = [int(x) for x in out.split() if x.isdigit()]
        run_pid = int(m.group(2))
        found.append(Leftover(ns, run_pid, _pid_alive(run_pid) and run_pid != os.getpid(), pids))
    return found


def clean(*, include_running: bool = False, log=print) -> int:
    """Stop the processes left in dead runs' namespaces (by PID) and delete the namespaces.

    Namespaces of a run that is still alive are kept unless ``include_running``. Returns the
    number of namespaces deleted."""
    n = 0
    for lo in leftovers():
        if lo.alive and not include_running:
            log(f"keeping {lo.namespace}: run {lo.run_pid} is still running (--force removes it)")
            continue
        _stop_pids(lo.pids)
        r = subprocess.run(["ip", "netns", "del", lo.namespace], capture_output=True, text=True, check=False)
        if r.returncode == 0:
            n += 1
            log(f"deleted {lo.namespace}" + (f" (stopped {len(lo.pids)} process(es))" if lo.pids else ""))
        else:
            log(f"could not delete {lo.namespace}: {r.stderr.strip()}")
    return n


def _stop_pids(pids: list[int], timeout: float = 2.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for pid in pids:
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass
class Proc:
    """A background process of the run."""
    name: str
    popen: subprocess.Popen
    log: Path
    stdout_pipe: bool = False
    lines: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_text(self, limit: int = 2000) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            text = ""
        text = "\n".join(self.lines) + ("\n" if self.lines else "") + text
        return text.strip()[-limit:]


class Netlab:
    """The namespaces, interfaces and processes of one run; :meth:`close` removes them all.

    Use as a context manager: ``with Netlab(workdir) as lab: ...``."""

    def __init__(self, workdir: Path, *, prefix: str | None = None, verbose: bool = False, log=None):
        self.workdir = Path(workdir)
        self.prefix = prefix or run_prefix()
        self.namespaces: list[str] = []
        self.procs: list[Proc] = []
        self.verbose = verbose
        self._log = log or (lambda msg: None)
        self.commands: list[str] = []     # every set-up command, for the README

    # ------------------------------------------------------------------ context
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    # ------------------------------------------------------------------ commands
    def sh(self, *cmd: str, input: str | None = None, check: bool = True, record: bool = True,
           timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a command to completion (in the root namespace only for ``ip netns``/``ip -n``)."""
        if record:
            self.commands.append(" ".join(cmd))
        if self.verbose:
            self._log("+ " + " ".join(cmd))
        r = subprocess.run(list(cmd), input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise LabError(f"`{' '.join(cmd)}` failed (exit {r.returncode}): "
                           f"{(r.stderr or r.stdout).strip()[:500]}")
        return r

    def nsx(self, role: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
        """Run a command inside the namespace of ``role``."""
        return self.sh("ip", "netns", "exec", self.ns(role), *cmd, **kw)

    def add_ns(self, role: str) -> str:
        name = self.ns(role)
        self.namespaces.append(name)     # first: a signal right after the add must not leak it
        self.sh("ip", "netns", "add", name)
        self.sh("ip", "-n", name, "link", "set", "lo", "up")
        # IPv6 off: no router solicitations or DAD in the traces; a new namespace starts with
        # the kernel's built-in defaults (rp_filter 0, arp_ignore 0, ip_forward 0)
        self.sysctl(role, **{"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1})
        return name

    def sysctl(self, role: str, **values) -> None:
        args = [f"{k}={v}" for k, v in values.items()]
        self.nsx(role, "sysctl", "-qw", *args)

    def veth(self, role1: str, if1: str, mac1: str, role2: str, if2: str, mac2: str, *, mtu: int | None = None) -> None:
        """A veth pair, each end created directly in its namespace."""
        self.sh("ip", "-n", self.ns(role1), "link", "add", if1, "address", mac1, "type", "veth",
                "peer", "name", if2, "address", mac2, "netns", self.ns(role2))
        for role, ifname in ((role1, if1), (role2, if2)):
            # no segmentation offload: TCP then hands the device segments of one MSS, so every
            # capture shows frames as a wire would (a veth otherwise passes 64 KB TSO super-frames)
            self.ip(role, "link", "set", ifname, "gso_max_segs", "1")
            if mtu:
                self.ip(role, "link", "set", ifname, "mtu", str(mtu))

    def ip(self, role: str, *args: str) -> subprocess.CompletedProcess:
        return self.sh("ip", "-n", self.ns(role), *args)

    def bridge(self, role: str, name: str, ports: list[str]) -> None:
        """A bridge (a switch) in ``role``'s namespace, without multicast snooping (it would send
        IGMP queries of its own) and without bridge netfilter."""
        self.ip(role, "link", "add", name, "type", "bridge", "mcast_snooping", "0")
        for p in ports:
            self.ip(role, "link", "set", p, "master", name)
            self.ip(role, "link", "set", p, "up")
        self.ip(role, "link", "set", name, "up")

    def nft(self, role: str, ruleset: str, name: str = "ruleset.nft") -> None:
        """Load ``ruleset`` into ``role``'s namespace (recorded as ``nft -f NAME``)."""
        self.commands.append(f"ip netns exec {self.ns(role)} nft -f {name}")
        self.nsx(role, "nft", "-f", "-", input=ruleset, record=False)

    # ------------------------------------------------------------------ processes
    def spawn(self, name: str, role: str, cmd: list[str], *, pipe_stdout: bool = False,
              env: dict | None = None) -> Proc:
        """Start ``cmd`` inside ``role``'s namespace in the background (its own session)."""
        log = self.workdir / f"{name}.log"
        full = ["ip", "netns", "exec", self.ns(role), *cmd]
        self.commands.append(" ".join(full) + " &")
        if self.verbose:
            self._log("+ " + " ".join(full) + " &")
        with open(log, "wb") as logf:
            p = subprocess.Popen(full, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE if pipe_stdout else logf, stderr=logf,
                                 start_new_session=True, env=env)
        proc = Proc(name, p, log, pipe_stdout)
        self.procs.append(proc)
        return proc

    def wait_line(self, proc: Proc, word: str, timeout: float = 10.0) -> None:
        """Wait until ``proc`` prints a line starting with ``word`` on its stdout."""
        assert proc.stdout_pipe
        deadline = time.monotonic() + timeout
        fd = proc.popen.stdout.fileno()
        buf = b""
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None and not select.select([fd], [], [], 0)[0]:
                break
            r, _, _ = select.select([fd], [], [], 0.1)
            if not r:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                if proc.popen.poll() is None:
                    time.sleep(0.05)
                    continue
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                proc.lines.append(text)
                if text.split()[:1] == [word]:
                    return
        state = f"exited with status {proc.popen.returncode}" if proc.popen.poll() is not None else "timed out"
        raise LabError(f"{proc.name} did not become ready ({state}): {proc.log_text() or 'no output'}")

    def wait_file(self, proc: Proc, path: Path, timeout: float = 10.0) -> None:
        """Wait until ``path`` exists and is not empty (dumpcap writes its header once capturing)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and path.stat().st_size > 0:
                return
            if proc.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise LabError(f"{proc.name} did not start: {proc.log_text() or 'no output'}")

    def stop(self, proc: Proc, *, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int | None:
        """Signal ``proc`` by its PID and wait for it (SIGKILL after ``timeout``)."""
        p = proc.popen
        if p.poll() is None:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if p.stdout is not None:
            try:
                rest = p.stdout.read()
            except (OSError, ValueError):
                rest = b""
            if rest:
                proc.lines += [x.strip() for x in rest.decode(errors="replace").splitlines() if x.strip()]
            p.stdout.close()
        return p.returncode

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc, timeout=3.0)

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Stop every process (newest first), then delete every namespace; never raises.
        SIGINT/SIGTERM/SIGHUP wait until it is done (a second Ctrl-C must not leave namespaces)."""
        blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            self._close()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _close(self) -> None:
        try:
            self.stop_all()
        except Exception:        # noqa: BLE001 - the namespaces must go even so
            for proc in self.procs:
                if proc.popen.poll() is None:
                    try:
                        proc.popen.kill()
                    except ProcessLookupError:
                        continue
        for ns in reversed(self.namespaces):
            # processes that ``ip netns exec`` left behind (none should be) are stopped by PID
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout
            _stop_pids([int(x) for x in out.split() if x.isdigit()])
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.namespaces.clear()


class Interrupted(Exception):
    """SIGTERM or SIGHUP during a run (SIGINT raises KeyboardInterrupt)."""


def install_signal_handlers():
    """SIGTERM/SIGHUP raise :class:`Interrupted` in the main thread so that ``finally`` blocks run;
    returns a function restoring the previous handlers."""
    previous = {}

    def handler(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, handler)
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)

    def restore():
        for sig, h in previous.items():
            signal.signal(sig, h)
    return restore
