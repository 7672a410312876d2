"""The live capture kept on disk: a ring of N pcapng (or pcap) files of about M bytes each.

The ring is written from the capture's own byte stream (what dumpcap writes on its pipe), so a
file holds exactly the blocks the analyzer read, byte for byte. Every file starts with the
stream's header (pcapng: the section header and the interface descriptions; pcap: the file
header) and then whole records, so each one is a valid capture on its own:
``lvs-inspect audit RING/live-00012.pcapng`` audits that moment again.

The writer only cuts at record boundaries it is told about: :meth:`CaptureRing.commit` is called
after the reader has turned a chunk into a table, with the offset of the chunk's last record;
bytes past it (the start of a record still being received) stay pending. A file is closed once it
holds ``file_bytes`` or more (so it exceeds that by at most one read chunk), then the oldest file
beyond ``files`` is deleted. A closing pcapng file gets one interface statistics block (ISB) per
interface with the counts known at that moment (frames received, drops), so the drops of any
moment are in the ring too.

Frame numbers: the live stream numbers its frames from 1 like any capture; :meth:`locate` turns a
stream frame number into (file, frame number inside that file) for as long as the file exists.
"""
from __future__ import annotations

import os
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

SHB_MAGIC = b"\x0a\x0d\x0d\x0a"
PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": "<", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",
               b"\xa1\xb2\x3c\x4d": ">"}


@dataclass
class RingFile:
    path: str
    first_frame: int = 0      # stream frame number of the file's first frame (0: none yet)
    last_frame: int = 0
    size: int = 0


def isb_block(order: str, interface: int, ts_units: int, *, ifrecv: int | None = None,
              ifdrop: int | None = None, osdrop: int | None = None, comment: str | None = None) -> bytes:
    """One pcapng interface statistics block (counters since the start of the capture)."""
    opts = b""
    if comment:
        raw = comment.encode("utf-8")
        opts += struct.pack(order + "HH", 1, len(raw)) + raw + b"\0" * (-len(raw) % 4)
    for code, value in ((4, ifrecv), (5, ifdrop), (7, osdrop)):
        if value is not None:
            opts += struct.pack(order + "HHQ", code, 8, int(value))
    if opts:
        opts += struct.pack(order + "HH", 0, 0)
    length = 12 + 12 + len(opts)
    return (struct.pack(order + "IIIII", 5, length, interface, (ts_units >> 32) & 0xFFFFFFFF,
                        ts_units & 0xFFFFFFFF) + opts + struct.pack(order + "I", length))


class CaptureRing:
    """``CaptureRing(directory, files=8, file_bytes=64 << 20)``; ``feed(bytes)`` as they are read,
    ``commit(...)`` after each decoded chunk, ``close()`` at the end of the stream.

    ``trailer`` (optional) is called when a pcapng file is closed: ``trailer(order)`` returns the
    bytes to append (the ISBs); the section's byte order is given.
    """

    def __init__(self, directory: str, *, files: int = 8, file_bytes: int = 64 << 20, prefix: str = "live",
                 trailer: Callable[[str], bytes] | None = None):
        if files < 1:
            raise ValueError("a ring needs at least one file")
        self.directory = str(directory)
        self.files = int(files)
        self.file_bytes = max(int(file_bytes), 1)
        self.prefix = prefix
        self.trailer = trailer
        self.disabled: str | None = None      # why the ring stopped (the note to show), None while it works
        os.makedirs(self.directory, exist_ok=True)
        self._pending = bytearray()           # stream bytes not yet written, from offset _base on
        self._base = 0
        self._format: str | None = None       # "pcapng" | "pcap"
        self._order = "<"
        self._header: bytes | None = None
        self._current = None
        self._entries: deque[RingFile] = deque()
        self._seq = 0
        self._lock = threading.Lock()         # guards _entries for readers on other threads
        self.written = 0                      # bytes written to the ring in all
        self.closed = False

    # -- input ----------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Bytes of the stream as they are read (in order)."""
        if self.disabled is None and data and not self.closed:
            self._pending += data
            if self._format is None and len(self._pending) >= 12:
                self._detect()

    def _detect(self) -> None:
        head = bytes(self._pending[:12])
        if head[:4] == SHB_MAGIC:
            self._format = "pcapng"
            self._order = "<" if head[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        elif head[:4] in PCAP_MAGICS:
            self._format = "pcap"
            self._order = PCAP_MAGICS[head[:4]]
        else:
            self._stop("the capture is not plain pcap or pcapng (compressed?): no ring kept")

    def _record_len(self, offset: int) -> int:
        at = offset - self._base
        if self._format == "pcapng":
            return struct.unpack_from(self._order + "I", self._pending, at + 4)[0]
        return 16 + struct.unpack_from(self._order + "I", self._pending, at + 8)[0]

    def commit(self, first_offset: int, last_offset: int, first_frame: int, last_frame: int) -> None:
        """A chunk has been decoded: its records start at ``first_offset`` .. ``last_offset``
        (stream byte offsets) and are frames ``first_frame`` .. ``last_frame``. Everything up
        to the end of the last record goes to the ring."""
        if self.disabled is not None or self._format is None or self.closed:
            return
        try:
            end = last_offset + self._record_len(last_offset)
        except struct.error:
            self._stop(f"stream offset {last_offset} not among the bytes read: no ring kept")
            return
        if end - self._base > len(self._pending):
            self._stop(f"record at stream offset {last_offset} runs past the bytes read: no ring kept")
            return
        try:
            if self._header is None:
                self._header = bytes(self._pending[:first_offset - self._base])
            if self._current is None or (self._current_entry.size >= self.file_bytes
                                         and self._current_entry.first_frame):
                self._rotate()
            self._write(end, first_frame, last_frame)
        except OSError as e:
            self._stop(f"ring {self.directory}: {e.strerror or e}; no more capture kept")

    def _write(self, end: int, first_frame: int, last_frame: int) -> None:
        k = end - self._base
        data = memoryview(self._pending)[:k]
        if self._current_entry.size == 0 and self._base > 0:
            self._current.write(self._header)
            self._current_entry.size += len(self._header)
        self._current.write(data)
        data.release()
        self._current.flush()
        del self._pending[:k]
        self._base = end
        e = self._current_entry
        e.size += k
        self.written += k
        if first_frame:
            if not e.first_frame:
                e.first_frame = first_frame
            e.last_frame = last_frame

    def _rotate(self) -> None:
        if self._current is not None:
            self._close_current()
        self._seq += 1
        path = os.path.join(self.directory, f"{self.prefix}-{self._seq:05d}.{self._format}")
        self._current = open(path, "wb")  # noqa: SIM115  (open until the file is full)
        self._current_entry = RingFile(path)
        with self._lock:
            self._entries.append(self._current_entry)
            while len(self._entries) > self.files:
                old = self._entries.popleft()
                try:
                    os.unlink(old.path)
                except FileNotFoundError:
                    pass

    def _close_current(self) -> None:
        if self.trailer is not None and self._format == "pcapng":
            tail = self.trailer(self._order)
            if tail:
                self._current.write(tail)
                self._current_entry.size += len(tail)
        self._current.close()
        self._current = None

    def close(self) -> None:
        """The stream has ended: write what is pending (e.g. the capture's closing ISBs) and close.
        Closing again does nothing."""
        if self.closed:
            return
        self.closed = True
        if self.disabled is None and self._format is not None:
            try:
                if self._current is None:
                    self._rotate()
                if self._pending:
                    if self._current_entry.size == 0 and self._base > 0 and self._header:
                        self._current.write(self._header)
                        self._current_entry.size += len(self._header)
                    self._current.write(self._pending)
                    self._current_entry.size += len(self._pending)
                    self.written += len(self._pending)
                    self._base += len(self._pending)
                    self._pending.clear()
                self._close_current()
            except OSError as e:
                self._stop(f"ring {self.directory}: {e.strerror or e}")
        elif self._current is not None:
            self._current.close()
            self._current = None

    def _stop(self, why: str) -> None:
        self.disabled = why
        self._pending = bytearray()
        if self._current is not None:
            try:
                self._current.close()
            except OSError:
                pass
            self._current = None

    # -- queries (any thread) -------------------------------------------------------------
    def paths(self) -> list[str]:
        """The ring's files, oldest first (the last one is being written)."""
        with self._lock:
            return [e.path for e in self._entries]

    def locate(self, frame: int) -> tuple[str, int] | None:
        """(file, frame number in that file) of stream frame ``frame``, None when it has left the ring."""
        with self._lock:
            for e in self._entries:
                if e.first_frame and e.first_frame <= frame <= e.last_frame:
                    return e.path, frame - e.first_frame + 1
        return None
