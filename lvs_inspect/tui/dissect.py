"""Wireshark's dissection of one frame, on demand (run it in a thread worker).

The frame's bytes are read back from its input (:func:`~lvs_inspect.tui.export.frame_bytes`: a
seek in a plain file, however large), written to a one-frame pcapng in a temporary folder with
its capture point's link type, and ``tshark -V`` dissects that: the cost does not grow with the
trace. The frame's place in the input is kept in the packet comment tshark prints.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from ..capture.table import PacketTable
from .export import write_frames


class ToolMissing(Exception):
    """tshark is not installed (or not where it was said to be)."""


TSHARK_MISSING = "tshark not installed: install Wireshark's command-line tool (Debian: apt-get install tshark)"


def find_tshark(tshark: str | None = "tshark") -> str:
    path = shutil.which(tshark) if tshark else None
    if not path:
        raise ToolMissing(TSHARK_MISSING)
    return path


def dissect(table: PacketTable, row: int, *, tshark: str | None = "tshark", timeout: float = 60.0,
            locate=None) -> str:
    """``tshark -V`` of table row ``row``. Raises :class:`ToolMissing` without tshark,
    :class:`~lvs_inspect.errors.InputError` when the frame cannot be read back, RuntimeError when
    tshark fails."""
    exe = find_tshark(tshark)
    with tempfile.TemporaryDirectory(prefix="lvs-inspect-") as tmp:
        path = os.path.join(tmp, "frame.pcapng")
        write_frames(table, [row], path, locate=locate)
        proc = subprocess.run([exe, "-n", "-V", "-r", path], capture_output=True, text=True, timeout=timeout,
                              errors="replace", env={**os.environ, "LC_ALL": "C"})
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise RuntimeError(f"tshark failed: {msg}")
    return proc.stdout
