"""The scripts read their settings without the heavy libraries: --help answers before torch,
Stable-Baselines3 or transformers is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

HEAVY = ("torch", "stable_baselines3", "transformers")
# runs a script as `python script --help` would, then names the heavy modules it imported
PROBE = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    assert e.code == 0, e.code
print("heavy:", *(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["add_noise.py", "--help"],
        ["serve.py", "--help"],
        ["serve.py", "edge", "--help"],
        ["serve.py", "ue", "--help"],
        ["train_rsm.py", "--help"],
        ["train_rsm.py", "fit", "--help"],
        ["train_rsm.py", "train", "--help"],
        ["train.py", "--help"],
        ["figures.py", "--help"],
        ["bench/rl.py", "--help"],
        ["bench/decoding.py", "--help"],
        ["bench/sweep.py", "--help"],
        ["bench/distributed.py", "--help"],
        ["train_rsm.py", "tune", "--help"],
    ],
    ids=" ".join,
)
def test_help_imports_no_heavy_library(argv):
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    help_text, imported = done.stdout.rsplit("heavy:", 1)
    assert "usage:" in help_text
    assert imported.split() == [], f"{' '.join(argv)} imported {imported.strip()} to print its help"
