"""Every script answers --help before torch, transformers or Stable-Baselines3 are imported: the
command line is built from light modules (cli, channel, grid, wire, serving.protocol). A functional
check of what is imported, not a timing (the machines are shared and noisy)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT

HEAVY = ("torch", "transformers", "stable_baselines3", "gymnasium")


@pytest.mark.parametrize("command", [
    ["add_noise.py"], ["serve.py"], ["serve.py", "edge"], ["serve.py", "ue"], ["bench/serve.py"],
    ["bench/sweep.py"], ["-m", "layersplit.channel"],
], ids=lambda c: " ".join(c))
def test_help_imports_no_heavy_library(command):
    done = subprocess.run([sys.executable, "-X", "importtime", *command, "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-2000:]
    imported = set(re.findall(r"\|\s+(\S+)$", done.stderr, flags=re.M))
    assert imported, "python -X importtime wrote nothing"
    assert not {name for name in imported if name.split(".")[0] in HEAVY}, sorted(imported)[:20]
