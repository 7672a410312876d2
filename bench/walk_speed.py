"""Time the record walk alone (lvs_inspect.capture.records) on synthetic captures.

    .venv/bin/python bench/walk_speed.py [--records N] [--dir DIR] [--chunk BYTES]

Builds a pcapng (two interfaces, EPBs) and a classic pcap with N records of 60..140-byte
frames (mean ~100), then reads each with open_input() and reports records/s for the
vectorised walk and, on a 1/10 slice, for the serial reference walker.
"""
from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lvs_inspect.capture.records import open_input  # noqa: E402


def _frames(n: int, rng: np.random.Generator):
    caplen = rng.integers(60, 141, n).astype(np.int64)
    return caplen


def _fill_payloads(out: np.ndarray, data_off: np.ndarray, caplen: np.ndarray,
                   rng: np.random.Generator) -> None:
    """Ethernet/IPv4/TCP-looking headers and random payload, vectorised."""
    hdr = bytes.fromhex("020000000002020000000001080045000000000040004006000"
                        "0c0000201cb00710a")
    hdr = np.frombuffer(hdr, np.uint8)
    total = int(caplen.sum())
    noise = rng.integers(0, 256, total, dtype=np.uint8)
    starts = np.repeat(data_off - np.concatenate(([0], np.cumsum(caplen)[:-1])), caplen)
    out[np.arange(total) + starts] = noise
    for k, b in enumerate(hdr):
        out[data_off + k] = b


def build_pcapng(path: str, n: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    caplen = _frames(n, rng)
    blen = 32 + ((caplen + 3) & ~3) + 4
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)

    def idb(name: bytes) -> bytes:
        opt = struct.pack("<HH", 2, len(name)) + name + b"\0" * (-len(name) % 4)
        opt += struct.pack("<HHB3x", 9, 1, 9) + b"\0\0\0\0"
        body = struct.pack("<HHI", 1, 0, 262144) + opt
        return struct.pack("<II", 1, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    head = shb + idb(b"vA") + idb(b"vB")
    off = len(head) + np.concatenate(([0], np.cumsum(blen)[:-1]))
    size = len(head) + int(blen.sum())
    out = np.zeros(size, np.uint8)
    out[:len(head)] = np.frombuffer(head, np.uint8)
    ts = 1_700_000_000_000_000_000 + np.cumsum(rng.integers(1000, 20000, n))
    words = np.zeros((n, 7), "<u4")
    words[:, 0] = 6
    words[:, 1] = blen
    words[:, 2] = rng.integers(0, 2, n)
    words[:, 3] = ts >> 32
    words[:, 4] = ts & 0xFFFFFFFF
    words[:, 5] = caplen
    words[:, 6] = caplen
    wb = words.view(np.uint8).reshape(n, 28)
    idx = off[:, None] + np.arange(28)
    out[idx] = wb
    tail = np.frombuffer(blen.astype("<u4").tobytes(), np.uint8).reshape(n, 4)
    out[(off + blen - 4)[:, None] + np.arange(4)] = tail
    _fill_payloads(out, off + 28, caplen, rng)
    out.tofile(path)


def build_pcap(path: str, n: int, seed: int = 2) -> None:
    rng = np.random.default_rng(seed)
    caplen = _frames(n, rng)
    rlen = 16 + caplen
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    off = 24 + np.concatenate(([0], np.cumsum(rlen)[:-1]))
    out = np.zeros(24 + int(rlen.sum()), np.uint8)
    out[:24] = np.frombuffer(head, np.uint8)
    us = np.cumsum(rng.integers(1, 20, n))
    words = np.zeros((n, 4), "<u4")
    words[:, 0] = 1_700_000_000 + us // 1_000_000
    words[:, 1] = us % 1_000_000
    words[:, 2] = caplen
    words[:, 3] = caplen
    out[off[:, None] + np.arange(16)] = words.view(np.uint8).reshape(n, 16)
    _fill_payloads(out, off + 16, caplen, rng)
    out.tofile(path)


def walk(path: str, chunk: int, mode: str, limit_bytes: int | None = None):
    t0 = time.perf_counter()
    vs: list = []
    r = open_input(path, 0, vs, chunk_bytes=chunk, walk=mode)
    n = 0
    last_ts = 0
    for b in r:
        n += len(b)
        last_ts = int(b.ts_ns[-1])
        if limit_bytes is not None and int(b.rec_off[-1]) > limit_bytes:
            break
    r.close()
    dt = time.perf_counter() - t0
    return n, dt, r.damage, last_ts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--chunk", type=int, default=8 << 20)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    files = {"pcapng": os.path.join(a.dir, f"walk_speed_{a.records}.pcapng"),
             "pcap": os.path.join(a.dir, f"walk_speed_{a.records}.pcap")}
    for kind, path in files.items():
        if not os.path.exists(path):
            t = time.perf_counter()
            (build_pcapng if kind == "pcapng" else build_pcap)(path, a.records)
            print(f"built {path} ({os.path.getsize(path) >> 20} MiB) "
                  f"in {time.perf_counter() - t:.1f} s")
    for kind, path in files.items():
        size = os.path.getsize(path)
        walk(path, a.chunk, "vector")      # warm the page cache
        best = min(walk(path, a.chunk, "vector")[1] for _ in range(a.repeat))
        n, _, dmg, _ = walk(path, a.chunk, "vector")
        assert n == a.records and not dmg, (n, dmg)
        print(f"{kind:7s} vector walk: {n} records in {best:.3f} s = "
              f"{n / best / 1e6:.2f} M records/s ({size / best / 2**20:.0f} MiB/s)")
        ns, dts, _, _ = walk(path, a.chunk, "serial", limit_bytes=size // 10)
        print(f"{kind:7s} serial walk: {ns} records in {dts:.3f} s = "
              f"{ns / dts / 1e6:.2f} M records/s (reference walker)")


if __name__ == "__main__":
    main()
