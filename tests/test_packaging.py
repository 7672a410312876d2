"""The wheel carries the rule files, and the console script works from a non-editable install."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lvs_inspect.resources import rules_dir

ROOT = Path(__file__).resolve().parents[1]


def test_rules_dir_in_checkout():
    assert (rules_dir() / "README.md").is_file()


@pytest.mark.slow
def test_wheel_ships_rules(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
                   check=True)
    wheel = next(tmp_path.glob("lvs_inspect-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "lvs_inspect/_rules/README.md" in names
    assert "lvs_inspect/_demo/trace.pcapng" in names and "lvs_inspect/_demo/topology.toml" in names
    assert "lvs_inspect/resources.py" in names
    assert any(n.endswith("entry_points.txt") for n in names)
    # the packaged layout is what rules_dir() looks for first
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    out = subprocess.run([sys.executable, "-c", "import lvs_inspect.resources as r; print(r.rules_dir()); "
                          "print(r.demo_dir())"],
                         cwd=site, capture_output=True, text=True, check=True, env={"PYTHONPATH": str(site)})
    assert out.stdout.split() == [str(site / "lvs_inspect" / "_rules"), str(site / "lvs_inspect" / "_demo")]
