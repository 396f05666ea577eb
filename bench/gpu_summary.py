"""The figures of one `bench/gpu.sh run` folder in one JSON file, read off its step outputs.

    python bench/gpu_summary.py results/gpu            # writes results/gpu/summary.json

The README's GPU table is written from that file (`python figures.py --claims`, block `gpu`), so
every GPU figure it quotes comes from a step output committed beside it. Standard library only: it
also runs on the GPU machine as gpu.sh's last step.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

SUMMARY = "summary.json"  # what this writes into the folder
NUMBER = r"([0-9.]+(?:e[+-]?[0-9]+)?)"


def _find(pattern: str, text: str, what: str, path: Path) -> re.Match:
    match = re.search(pattern, text)
    if match is None:
        raise ValueError(f"{path}: no {what} in it (is it a bench/gpu.sh step output?)")
    return match


def step_seconds(text: str, name: str, path: Path) -> dict:
    """The step's exit status and seconds (gpu.sh's last line of each step)."""
    m = _find(rf"== {name}: exit (\d+) after (\d+) s", text, "exit line", path)
    return {"exit": int(m[1]), "seconds": int(m[2])}


def sweep(path: Path) -> dict:
    """bench/sweep.py's figures: the matmul peak, each grid's fast (and compiled, naive) rate, the projection."""
    text = path.read_text(encoding="utf-8")
    name = path.stem
    out = {
        "step": step_seconds(text, name, path),
        "model": _find(r"== \S+ \(limit \d+ s\): .*--model (\S+)", text, "command", path)[1],
        "peak_tflops": float(_find(rf"dense matmul peak here \([^)]*\): {NUMBER} TFLOP/s", text, "peak", path)[1]),
        "projected_paper_hours": float(_find(rf"projected: .*: {NUMBER} h", text, "projection", path)[1]),
    }
    shape = _find(r"; (\d+) tokens; conditions: .* x (\d+) draw", text, "tokens and draws", path)
    out["tokens"], out["draws"] = int(shape[1]), int(shape[2])
    for grid, key in (("paper's splits", "paper"), ("every layer", "layers")):
        m = re.search(rf"{grid} \S+\s+fast\s+{NUMBER} s\s+{NUMBER} TFLOP/s\s+(\d+)% of the peak(.*)", text)
        if m is None:
            continue
        out[key] = {"seconds": float(m[1]), "tflops": float(m[2]), "share_of_peak": int(m[3]) / 100}
        naive = re.search(
            rf"naive\s+{NUMBER} s\s+speed-up {NUMBER}x\s+FLOP bound {NUMBER}x\s+"
            rf"max \|dPPL\|/PPL {NUMBER}",
            m[4],
        )
        if naive:
            out[key]["naive"] = {
                "seconds": float(naive[1]),
                "speedup": float(naive[2]),
                "flop_bound": float(naive[3]),
                "max_rel_dppl": float(naive[4]),
            }
    compiled = re.search(
        rf"compiling, with splits \S+ \S+ run: {NUMBER} s\n.*compiled\s+{NUMBER} s\s+{NUMBER} TFLOP/s"
        rf"\s+(\d+)% of the peak\s+{NUMBER}x the eager rate\s+max \|dPPL\|/PPL against eager {NUMBER}",
        text,
    )
    if compiled:
        out["paper_compiled"] = {
            "compile_seconds": float(compiled[1]),
            "seconds": float(compiled[2]),
            "tflops": float(compiled[3]),
            "share_of_peak": int(compiled[4]) / 100,
            "speedup_over_eager": float(compiled[5]),
            "max_rel_dppl": float(compiled[6]),
        }
    return out


def serve(path: Path) -> dict:
    """bench/decoding.py's figures: TTFT/TPOT per path, the memory bound, the socket overhead, compile times."""
    text = path.read_text(encoding="utf-8")
    decode = _find(r"; (\w+) decoding; ", text, "decoding mode", path)[1]
    paths = {}
    for m in re.finditer(
        rf"^(single process|socket bf16|socket fp16)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}"
        rf"\s+{NUMBER}\s+{NUMBER}\s+(\d+)/(\d+) requests",
        text,
        re.M,
    ):
        paths[m[1]] = {
            "ttft_ms": float(m[2]),
            "tpot_ms": float(m[3]),
            "tokens_per_s": float(m[4]),
            "tpot_ratio": float(m[6]),
            "same_tokens": [int(m[8]), int(m[9])],
        }
    m = _find(rf"(?m)^single process\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}", text, "single-process row", path)
    paths["single process"] = {
        "ttft_ms": float(m[1]),
        "tpot_ms": float(m[2]),
        "tokens_per_s": float(m[3]),
        "tpot_ratio": 1.0,
    }
    for m in re.finditer(
        rf"(?m)^(single process|socket bf16|socket fp16)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}"
        rf"\s+{NUMBER}%$",
        text,
    ):
        paths[m[1]].update(
            tpot_ms=float(m[2]), tpot_over_bound=float(m[4]), share_of_bandwidth=round(float(m[6]) / 100, 4)
        )
    bound = _find(rf"bandwidth {NUMBER} GB/s measured now.*bound: {NUMBER} ms per token", text, "bound", path)
    overhead = _find(rf"overhead per decoding step[^:]*: {NUMBER}-{NUMBER} ms", text, "overhead", path)
    out = {
        "step": step_seconds(text, path.stem, path),
        "decode": decode,
        "paths": paths,
        "bandwidth_gbs": float(bound[1]),
        "bound_ms": float(bound[2]),
        "socket_overhead_ms": [float(overhead[1]), float(overhead[2])],
    }
    # compiled decoding only: the warm-up that compiles each step, and its tokens against eager's
    warm = re.search(r"warm-up \(compiled decoding[^)]*\): (.*)", text)
    if warm:
        found = re.findall(r"(single process|socket \w+) ([0-9.]+) s", warm[1])
        out["compile_seconds"] = {k: float(v) for k, v in found}
    same = re.search(r"tokens in compiled decoding equal to eager decoding's: (\d+)/(\d+)", text)
    if same:
        out["compiled_same_tokens_as_eager"] = [int(same[1]), int(same[2])]
    return out


def tests(path: Path) -> dict:
    """pytest's last line: passed and failed counts of the gpu-marked tests."""
    text = path.read_text(encoding="utf-8")
    last = _find(r"=+ (.*) in [0-9.]+s", text, "pytest summary", path)[1]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|error|skipped)", last)}
    out = {"passed": counts.get("passed", 0), "failed": counts.get("failed", 0) + counts.get("error", 0)}
    if "== tests:" in text:
        out["step"] = step_seconds(text, "tests", path)
    return out


def nr_tails(path: Path) -> dict:
    """The NR BLER tails step: its seconds and, per (MCS, Es/N0) point of the file it continued (the committed
    points and what it added), [TBs lost, slots], its chunks pooled."""
    text = path.read_text(encoding="utf-8")
    out = {"step": step_seconds(text, "nr_tails", path), "points": {}}
    table = path.with_name("nr_bler_tails.csv")
    if table.is_file():
        with table.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                point = out["points"].setdefault(f"{row['mcs']}:{row['snr_db']}", [0, 0])
                point[0], point[1] = point[0] + int(row["errors"]), point[1] + int(row["slots"])
    return out


def summarise(folder: Path) -> dict:
    machine = (folder / "machine.txt").read_text(encoding="utf-8")
    gpu = re.search(r"\|\s+\d+\s+(NVIDIA [^|]*?)\s{2,}", machine)  # nvidia-smi's table (none in a CPU rehearsal)
    versions = _find(r"torch (\S+) transformers (\S+) cuda (\w+)", machine, "versions", folder / "machine.txt")
    out = {"gpu": gpu[1].strip() if gpu else "no GPU", "torch": versions[1], "transformers": versions[2]}
    # the gpu-marked tests: the last run of them in the folder (tests_rerun.txt when present)
    for name in ("tests", "tests_rerun"):
        if (folder / f"{name}.txt").is_file():
            out[name] = tests(folder / f"{name}.txt")
    for name, read in (
        ("sweep_paper", sweep),
        ("sweep_check", sweep),
        ("sweep_paper_large", sweep),
        ("serve", serve),
        ("sweep_paper_long", sweep),
    ):
        path = folder / f"{name}.txt"
        if path.is_file():
            step = step_seconds(path.read_text(encoding="utf-8"), name, path)
            # a step cut by its time limit (or failed) is recorded by its exit alone: its figures may be partial
            out[name] = read(path) if step["exit"] == 0 else {"step": step}
    if (folder / "nr_tails.txt").is_file():
        out["nr_tails"] = nr_tails(folder / "nr_tails.txt")
    out["steps_seconds"] = sum(v["step"]["seconds"] for v in out.values() if isinstance(v, dict) and "step" in v)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir() or not (Path(args[0]) / "machine.txt").is_file():
        print(
            "usage: python bench/gpu_summary.py FOLDER (a bench/gpu.sh run folder, with its machine.txt)",
            file=sys.stderr,
        )
        return 2
    folder = Path(args[0])
    try:
        summary = summarise(folder)
    except (ValueError, OSError, UnicodeDecodeError) as e:
        print(f"gpu_summary: {e}", file=sys.stderr)
        return 2
    (folder / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {folder / SUMMARY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
