"""Errors that end a command with exit status 2 and one clear line on stderr."""
from __future__ import annotations


class InputError(Exception):
    """Bad input: names the file and, where it applies, the line or byte offset.

    ``str(err)`` is the one line the CLI prints, e.g.
    ``trace.pcap: byte 4096: record length 9000000 exceeds the snaplen 262144``.
    """

    def __init__(self, path: str, message: str, *, line: int | None = None,
                 offset: int | None = None, key: str | None = None):
        self.path = str(path)
        self.message = message
        self.line = line
        self.offset = offset
        self.key = key
        super().__init__(self.render())

    def render(self) -> str:
        where = [self.path]
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.offset is not None:
            where.append(f"byte {self.offset}")
        if self.key is not None:
            where.append(f"key '{self.key}'")
        return ": ".join(where) + ": " + self.message
