"""Time a make target on a fresh clone, as a newcomer runs it: git clone, then `make TARGET`, set-up included.

    python bench/fresh_clone.py test                   # what CI runs (.ci/run): results/timings_test.json
    python bench/fresh_clone.py quick                  # the toy-scale pipeline: results/timings_quick.json
    python bench/fresh_clone.py test --keep /tmp/clone # keep the clone (its .venv, runs/) afterwards

The clone is of the committed HEAD (uncommitted changes are not in it). The JSON records the commit,
the wall time with and without the set-up (make venv, timed on its own first), the exit status, the
last line of the target's output (pytest's counts) and the machine's load when it started (other work
slows it); the README and docs quote these files.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from layersplit import UserError, cli

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("test", "quick", "reproduce", "check")  # make targets worth timing from a fresh clone
OUTPUT = "results/timings_{target}.json"  # where the figures go (--output)


def timed(argv: list[str], cwd: Path, log: Path) -> tuple[float, int]:
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        code = subprocess.run(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT).returncode
    return time.perf_counter() - start, code


def last_line(log: Path) -> str:
    lines = [s for s in log.read_text(encoding="utf-8", errors="replace").splitlines() if s.strip()]
    return lines[-1] if lines else ""


def run(args) -> int:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="layersplit-clone-"))
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"--keep {folder}: not empty; give a new folder")
    load = os.getloadavg()[0]  # other work on the machine slows the target: recorded beside its time
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(folder)], check=True)
        setup_s, setup_code = timed(["make", "venv"], folder, folder / "setup.log")
        if setup_code:
            print(f"make venv failed (exit {setup_code}): {last_line(folder / 'setup.log')}", file=sys.stderr)
            return setup_code
        target_s, code = timed(["make", args.target], folder, folder / f"{args.target}.log")
        record = {
            "target": args.target,
            "commit": commit.stdout.strip(),
            "setup_seconds": round(setup_s, 1),
            "target_seconds": round(target_s, 1),
            "total_seconds": round(setup_s + target_s, 1),
            "exit": code,
            "last_line": last_line(folder / f"{args.target}.log"),
            "cpus": os.cpu_count(),
            "load_at_start": round(load, 2),
            "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
        }
        output = Path(args.output or OUTPUT.format(target=args.target))
        cli.write_text_atomic(output, json.dumps(record, indent=1) + "\n")
        print(json.dumps(record, indent=1))
        return code
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("target", choices=TARGETS, help="the make target to time")
    p.add_argument("--output", type=cli.writable_file, help=f"the record (default: {OUTPUT})")
    p.add_argument("--keep", help="clone into this new folder and keep it")
    args = p.parse_args(argv)
    return cli.run_main("bench/fresh_clone.py", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
