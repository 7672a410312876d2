"""Driving dumpcap (Wireshark's capture engine) for the live source: its command line, its
messages, and the drop counts of its capture sockets while it runs.

Drops while dumpcap runs
------------------------
dumpcap reports drops only when it stops: the pcapng stream it writes ends with one interface
statistics block per interface (ISB: ``ifrecv``, ``ifdrop``), and its stderr gets the line
``Packets received/dropped on interface 'eth0': R/D (pcap:P/dumpcap:Q/flushed:F/ps_ifdrop:I)``.
Nothing is written while it runs (not in the stream, and in ring-buffer mode its files carry no
ISB either: checked with dumpcap 4.0). ``dumpcap -S`` prints statistics once a second, but of
interfaces it opens itself for that purpose, in a mode that does not capture. /proc/net/dev
counts what the interface dropped, not what the capture socket dropped.

The kernel keeps the count that matters on the capture socket itself (``PACKET_STATISTICS``:
``tp_packets``, ``tp_drops``; what libpcap's ``pcap_stats`` reads and dumpcap reports as
``pcap:``). :class:`SocketDrops` borrows a duplicate of each of dumpcap's packet sockets with
``pidfd_getfd(2)`` (Linux >= 5.6; we started dumpcap, and reading another process's descriptors
needs the same rights as ptrace: root or the same user) and reads that counter every half
second. The kernel resets the counter on every read, and libpcap adds up what it reads, so a
drop is counted once, either by us or in dumpcap's closing report: the total is our sum plus
dumpcap's final ``pcap:`` figure (also what the ring's ISBs record). Where borrowing is not
possible (another capture command, an old kernel, no rights) the live counts are unknown (None)
and the source says so; the closing report still gives the totals.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import socket
import struct
import threading
from collections.abc import Iterable, Sequence

SOL_PACKET = 263
PACKET_STATISTICS = 6
SYS_PIDFD_GETFD = 438          # the same number on every architecture (asm-generic)

_REPORT = re.compile(r"Packets received/dropped on interface '(?P<name>.*)': (?P<recv>\d+)/(?P<drop>\d+) "
                     r"\(pcap:(?P<pcap>\d+)/dumpcap:(?P<dumpcap>\d+)/flushed:(?P<flushed>\d+)"
                     r"(?:/ps_ifdrop:(?P<ifdrop>\d+))?\)")


def find_dumpcap() -> str | None:
    """dumpcap on PATH, else None."""
    return shutil.which("dumpcap")


def command(dumpcap: str, interfaces: Sequence[str], *, bpf: str | None = None, buffer_mib: int = 32,
            queue_mib: int = 128, snaplen: int | None = None) -> list[str]:
    """dumpcap writing pcapng on stdout for every interface. The kernel buffer size (``-B``, per
    interface) and the filter come before the first ``-i``, so they apply to every interface.

    With more than one interface dumpcap reads each in its own thread and queues the packets for
    the thread that writes the pipe; that queue is small by default (about 1 MiB / 1000 packets) and
    what does not fit is dropped (``dumpcap:`` in its report). ``-C``/``-N`` make it ``queue_mib``:
    while our reader is held up for a moment the packets wait there instead."""
    cmd = [dumpcap, "-q", "-B", str(int(buffer_mib)), "-C", str(int(queue_mib) << 20), "-N", "10000000"]
    if snaplen:
        cmd += ["-s", str(int(snaplen))]
    if bpf:
        cmd += ["-f", bpf]
    for name in interfaces:
        cmd += ["-i", name]
    return cmd + ["-w", "-"]


def final_report(lines: Iterable[str], interfaces: Sequence[str] = ()) -> dict[str, dict[str, int]]:
    """dumpcap's closing lines, per interface: received, pcap (kernel), dumpcap, flushed, ifdrop.

    dumpcap names an interface there by its display name ("Loopback: lo" for lo); the lines come in
    the order of the ``-i`` options, so a name that is not one of ``interfaces`` is taken as the
    interface at that position."""
    out = {}
    k = 0
    for line in lines:
        m = _REPORT.search(line)
        if m:
            name = m["name"]
            if interfaces and name not in interfaces and k < len(interfaces):
                name = interfaces[k]
            k += 1
            out[name] = {key: int(m[key]) for key in ("recv", "pcap", "dumpcap", "flushed")}
            out[name]["ifdrop"] = int(m["ifdrop"] or 0)
    return out


def error_line(lines: Sequence[str]) -> str | None:
    """The one line that says why dumpcap failed (its ``dumpcap: ...`` message and the reason in
    parentheses that follows it), or None."""
    text = [ln.strip() for ln in lines if ln.strip()]
    for i, ln in enumerate(text):
        if ln.startswith(("dumpcap: ", "You do not have permission")) or "Permission denied" in ln:
            msg = ln if ln.startswith("dumpcap: ") else f"dumpcap: {ln}"
            if i + 1 < len(text):
                nxt = text[i + 1]
                m = re.search(r"\(([^()]*)\)\.?$", nxt)
                if nxt.startswith("(") or (m and "capture filter" in nxt):
                    msg += f" ({m[1] if m else nxt.strip('()')})"
            return msg
    return None


class SocketDrops:
    """Kernel drop counts of dumpcap's capture sockets, read while it runs (see the module doc).

    ``attach()`` borrows the sockets once dumpcap has opened them (call it until it returns
    True); ``poll()`` adds what the kernel counted since the last read; ``drops`` and
    ``packets`` are {interface name: count}. ``close()`` gives the duplicates back.
    """

    def __init__(self, pid: int):
        self.pid = pid
        self.drops: dict[str, int] = {}
        self.packets: dict[str, int] = {}
        self.error: str | None = None          # why the counts cannot be read (None: they can)
        self._socks: dict[int, tuple[str, socket.socket]] = {}     # dumpcap fd -> (name, our copy)
        self._pidfd: int | None = None
        self._libc = None
        self._lock = threading.Lock()

    @property
    def attached(self) -> bool:
        return bool(self._socks)

    @property
    def held(self) -> int:
        return len(self._socks)

    def counts(self) -> dict[str, int]:
        """{interface name: kernel drops so far} (a copy; any thread)."""
        with self._lock:
            return dict(self.drops)

    def _packet_fds(self) -> dict[int, int]:
        """dumpcap's packet sockets: its fd -> interface index."""
        inodes = {}
        with open(f"/proc/{self.pid}/net/packet") as f:
            next(f, None)
            for line in f:
                cols = line.split()
                if len(cols) >= 9:
                    inodes[int(cols[8])] = int(cols[4])
        out = {}
        base = f"/proc/{self.pid}/fd"
        for fd in os.listdir(base):
            try:
                target = os.readlink(f"{base}/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in inodes:
                    out[int(fd)] = inodes[inode]
        return out

    def _ifname(self, index: int) -> str:
        """The name of interface ``index`` in dumpcap's network namespace: its /sys (``ip netns
        exec`` mounts one for the namespace), else ours."""
        if index == 0:
            return "any"
        base = f"/proc/{self.pid}/root/sys/class/net"
        try:
            for name in os.listdir(base):
                try:
                    with open(f"{base}/{name}/ifindex") as f:
                        if int(f.read()) == index:
                            return name
                except (OSError, ValueError):
                    continue
        except OSError:
            pass
        try:
            return socket.if_indextoname(index)
        except OSError:
            return str(index)

    def attach(self, expected: int = 1) -> bool:
        """Borrow the packet sockets; True once ``expected`` of them are held."""
        if self.error is not None:
            return False
        try:
            found = self._packet_fds()
        except OSError:
            return False            # dumpcap has not got that far, or has exited
        if len(found) < expected:
            return False
        try:
            if self._pidfd is None:
                self._pidfd = os.pidfd_open(self.pid)
                self._libc = ctypes.CDLL(None, use_errno=True)
            for fd, index in found.items():
                if fd in self._socks:
                    continue
                dup = self._libc.syscall(SYS_PIDFD_GETFD, self._pidfd, fd, 0)
                if dup < 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
                name = self._ifname(index)
                self._socks[fd] = (name, socket.socket(fileno=dup))
                with self._lock:
                    self.drops.setdefault(name, 0)
                    self.packets.setdefault(name, 0)
        except (OSError, AttributeError) as e:
            reason = "pidfd_getfd is not available" if getattr(e, "errno", None) in (errno.ENOSYS, None) \
                else (e.strerror or str(e))
            self.error = f"cannot read dumpcap's socket statistics ({reason})"
            self.close()
            return False
        return len(self._socks) >= expected

    def poll(self) -> None:
        for name, s in list(self._socks.values()):
            try:
                raw = s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
            except OSError:
                continue
            packets, drops = struct.unpack_from("II", raw)
            with self._lock:
                self.packets[name] = self.packets.get(name, 0) + packets
                self.drops[name] = self.drops.get(name, 0) + drops

    def close(self) -> None:
        for _, s in self._socks.values():
            s.close()
        self._socks.clear()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
