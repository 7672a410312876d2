"""User key bindings: a TOML file mapping binding ids to keys (no Textual here).

The file is ``$XDG_CONFIG_HOME/lvs-inspect/keys.toml`` (``~/.config/lvs-inspect/keys.toml`` when
XDG_CONFIG_HOME is not set), or the one ``lvs-inspect tui --keys FILE`` names::

    # binding id = "key" or "key1,key2" (Textual key names: f2, ctrl+f, question_mark, ...)
    [keys]
    show-findings = "f2"
    dissect = "ctrl+w,w"

``lvs-inspect tui --list-keys`` prints every binding id with its default key. An unknown id or a
value that is not a string is an error naming the file and the line.
"""
from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError


def default_keys_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "lvs-inspect" / "keys.toml"


def _line_of(text: str, key: str) -> int | None:
    pat = re.compile(r'^\s*["\']?' + re.escape(key) + r'["\']?\s*=')
    for n, line in enumerate(text.splitlines(), 1):
        if pat.match(line):
            return n
    return None


def load_keymap(path: str | os.PathLike | None, known: Iterable[str]) -> dict[str, str]:
    """The keymap in ``path`` (None: the default file, which may be absent)."""
    explicit = path is not None
    p = Path(path) if explicit else default_keys_path()
    if not p.is_file():
        if explicit:
            raise InputError(str(p), "no such keys file")
        return {}
    text = p.read_text(encoding="utf-8", errors="replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise InputError(str(p), str(e).split(" (at line")[0], line=int(m.group(1)) if m else None) from None
    table = data.get("keys", data)
    if not isinstance(table, dict):
        raise InputError(str(p), "expected a [keys] table of binding id = \"key\"")
    known = set(known)
    out = {}
    for key, value in table.items():
        if key not in known:
            close = [k for k in sorted(known) if k.split("-")[-1] == key.split("-")[-1]] or sorted(known)
            raise InputError(str(p), f"unknown binding id '{key}'; one of {', '.join(close)}",
                             line=_line_of(text, key))
        if not isinstance(value, str) or not value.strip():
            raise InputError(str(p), f"the key of '{key}' must be a string like \"f2\" or \"ctrl+f,f\"",
                             line=_line_of(text, key))
        out[key] = ",".join(k.strip() for k in value.split(","))
    return out
