"""The package installs and finds what it ships (the surrogates, the NR BLER table) through itself."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import layersplit
from layersplit import envs, nr

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {  # the package's name for each shipped file -> the committed file it stands for
    "reward_predictor.pth": "reward_predictor.pth",
    "reward_predictor_wireless.pth": "reward_predictor_wireless.pth",
    "reward_predictor_protect.pth": "reward_predictor_protect.pth",
    "reward_predictor_wireless_nr.pth": "reward_predictor_wireless_nr.pth",
    "nr_bler.csv": "results/nr_bler.csv",
    "nr_bler_tails.csv": "results/nr_bler_tails.csv",
}
PY_MODULES = ["add_noise.py", "figures.py", "serve.py", "train.py", "train_rsm.py"]  # pyproject.toml's py-modules


def test_every_shipped_file_is_the_committed_one():
    assert sorted(p.name for p in layersplit.SHIPPED_DIR.iterdir()) == sorted(SHIPPED)
    for name, committed in SHIPPED.items():
        assert layersplit.shipped_file(name) == (ROOT / committed).resolve()
    assert envs.PAPER_RSM == ROOT / "reward_predictor.pth"  # what refitting writes by default: the committed file
    assert nr.BLER_TABLE == ROOT / "results" / "nr_bler.csv"
    assert nr.tails_of(nr.BLER_TABLE) == ROOT / "results" / "nr_bler_tails.csv"  # read with the table


@pytest.mark.slow
def test_a_wheel_carries_the_shipped_files_and_reads_them_from_any_folder(tmp_path):
    src = tmp_path / "src"  # a copy of what the wheel is built from: building writes build/ beside the sources
    src.mkdir()
    for name in ["pyproject.toml", "README.md", "requirements.txt", *PY_MODULES]:
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "layersplit", src / "layersplit", symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    for committed in SHIPPED.values():
        (src / committed).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / committed, src / committed)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", ".", "-w", str(tmp_path / "wheel")], cwd=src, check=True
    )
    (wheel,) = (tmp_path / "wheel").glob("layersplit-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    for committed in SHIPPED.values():  # real files in the install, the committed bytes
        installed = site / "layersplit" / "shipped" / Path(committed).name
        assert not installed.is_symlink() and installed.read_bytes() == (ROOT / committed).read_bytes()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import layersplit; from layersplit import envs, nr, surrogate; "
        "print(layersplit.__file__); print(envs.PAPER_RSM); surrogate.load(envs.PAPER_RSM, form='paper'); "
        "print(len(nr.load_table()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=elsewhere,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    out = out.stdout.splitlines()
    assert out[0].startswith(str(site)) and out[1].startswith(str(site))
    assert int(out[2]) > 0
