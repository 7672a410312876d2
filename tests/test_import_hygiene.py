"""The engine never imports Textual: only lvs_inspect/tui/ may."""
from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import lvs_inspect

PKG = Path(lvs_inspect.__file__).parent


def headless_modules() -> list[str]:
    names = []
    for m in pkgutil.walk_packages([str(PKG)], prefix="lvs_inspect."):
        if m.name.startswith("lvs_inspect.tui"):
            continue
        names.append(m.name)
    return names


def test_no_textual_import_statement_outside_tui():
    offenders = []
    for path in PKG.rglob("*.py"):
        if "tui" in path.relative_to(PKG).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            if any(m == "textual" or m.startswith("textual.") for m in mods):
                offenders.append(f"{path}:{node.lineno}")
    assert not offenders, offenders


def test_importing_every_headless_module_loads_no_textual():
    mods = headless_modules()
    assert "lvs_inspect.cli" in mods and "lvs_inspect.capture.decode" in mods
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "bad = sorted(k for k in sys.modules if k == 'textual' or k.startswith('textual.'))\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"textual loaded by headless modules: {out.stdout}"
