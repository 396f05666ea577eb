"""Run the pipeline: every experiment of layersplit/experiments.py in order, at one preset's scale.

    python -m layersplit.pipeline reproduce                 # what `make reproduce` runs, into runs/reproduce
    python -m layersplit.pipeline quick --out runs/quick    # toy scale, a few minutes
    python -m layersplit.pipeline reproduce --model meta-llama/Llama-2-7b-hf --dataset wikitext-2 --device cuda
    python -m layersplit.pipeline reproduce --list          # the commands, nothing run

Each step records its command and wall time in {out}/results/timings.json when it ends; rerun the same
command after an interruption and every step recorded with the same command whose outputs exist is
skipped, while an interrupted step resumes as its script does (sweeps skip finished cells, training
resumes from its last checkpoint). Another model's (or text's) run goes into {out}/{its key}/, so it
never overwrites the embedded model's results; committed files (and their spot checks) are the
embedded model's on the embedded text only, so any other run computes everything.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import UserError, cli, paper
from .experiments import BY_NAME, TIMINGS, EMBEDDED_KEY, EXPERIMENTS, NR_TABLE_ENV, PRESETS, Experiment, Plan

LOG_TAIL = 20  # lines of a failed step's log shown
SUMMARY_MARK = "mean return over"  # the training logs' evaluation summaries, shown at the end


def names(text: str) -> frozenset[str]:
    """Comma-separated experiment names."""
    chosen = frozenset(n for n in text.split(",") if n)
    unknown = sorted(chosen - set(BY_NAME))
    if unknown:
        raise argparse.ArgumentTypeError(f"no experiment {', '.join(map(repr, unknown))}; known: {', '.join(BY_NAME)}")
    return chosen


def steps(plan: Plan) -> list[tuple[Experiment, list[str]]]:
    """The plan's steps in order, each with its commands (a committed file's copy is a `copy SRC DST` line)."""
    out = []
    for e in EXPERIMENTS:
        if e.needs and not Path(plan.fill(e.needs, e)).is_file():
            continue
        if plan.uses_committed(e):
            results = plan.fill("{R}", e)
            commands = [
                f"copy {f} {results}/{Path(f).name}"
                for i, f in enumerate(e.committed.files)
                if i == 0 or Path(f).is_file()
            ]
            commands.append(plan.fill(e.committed.check, e))
        else:
            command = plan.fill(e.command, e)
            if e.model_args:
                command += "".join(
                    f" {option} {shlex.quote(value)}"
                    for option, value in (
                        ("--model", plan.model),
                        ("--dataset", plan.dataset),
                        ("--device", plan.device),
                    )
                    if value and not (option == "--model" and plan.key == EMBEDDED_KEY)  # the scripts' default
                )
            commands = [command]
        out.append((e, commands))
    return out


def read_timings(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a timings file this pipeline wrote ({err}); move it aside") from err


def is_done(e: Experiment, commands: list[str], record: dict | None, plan: Plan) -> bool:
    """Recorded with the same commands and its outputs still there (an output-less step: recorded)."""
    if e.always or record is None or record.get("commands") != commands:
        return False
    return all(Path(plan.fill(o, e)).is_file() for o in e.outputs)


def run_command(command: str, env: dict, log: Path | None, python: str) -> int:
    if command.startswith("copy "):
        _, source, target = command.split(" ")
        if not (Path(target).exists() and Path(source).samefile(target)):
            shutil.copyfile(source, target)
        return 0
    argv = [python, *shlex.split(command)]
    if log is None:
        return subprocess.run(argv, env=env).returncode
    with open(log, "w", encoding="utf-8") as f:
        done = subprocess.run(argv, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if done:
        print("".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-LOG_TAIL:]), file=sys.stderr)
    return done


def run(plan: Plan, only: frozenset[str], python: str) -> int:
    results = Path(plan.out) / "results"
    timings_path = results / TIMINGS
    timings = read_timings(timings_path)
    for folder in (results, Path(plan.out) / "runs" / "logs", Path(plan.out) / "figures"):
        folder.mkdir(parents=True, exist_ok=True)
    recorded = timings.setdefault("steps", {})
    timings.update(preset=plan.preset, model=plan.model)
    for e, commands in steps(plan):
        if only and e.name not in only:
            continue
        if is_done(e, commands, recorded.get(e.name), plan):
            print(f"== {e.name}: complete (recorded in {timings_path}), skipped")
            continue
        env = dict(os.environ)
        if e.nr_table:
            env[NR_TABLE_ENV] = str((results / "nr_bler.csv").resolve())
        log = Path(plan.fill(e.log, e)) if e.log else None
        print(f"== {e.name}: {e.what}" + (f" (log: {log})" if log else ""), flush=True)
        start = time.perf_counter()
        for command in commands:
            print(f"   {command}", flush=True)
            code = run_command(command, env, log, python)
            if code:
                print(f"pipeline: step {e.name} failed (exit {code}): {command}", file=sys.stderr)
                return code
        recorded[e.name] = {"seconds": round(time.perf_counter() - start, 1), "commands": commands}
        cli.write_text_atomic(timings_path, json.dumps(timings, indent=1) + "\n")
    logs = sorted((Path(plan.out) / "runs" / "logs").glob("rl_*.log"))
    for log in logs:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        for i, line in enumerate(lines):
            if SUMMARY_MARK in line:
                print("\n".join(lines[i : i + 9]))
    print(
        f"results in {results}, figures in {plan.out}/figures, surrogates in {plan.out}/reward_predictor*.pth, "
        f"runs in {plan.out}/runs"
    )
    return 0


def parser():
    p = cli.parser(__doc__)
    p.add_argument("preset", choices=PRESETS, help="the scale: quick (minutes), reproduce (committed), full (paper)")
    p.add_argument(
        "--out",
        type=cli.writable_dir,
        help="the run's folder (default: runs/PRESET; another model's run goes in OUT/MODEL)",
    )
    p.add_argument("--model", default=paper.EMBEDDED_MODEL, help="the model: the embedded one, a folder or an HF id")
    p.add_argument("--dataset", default="", help="the evaluation text of every script (default: the embedded one)")
    p.add_argument("--device", default="", help="the device of every script that runs the model (default: auto)")
    p.add_argument(
        "--compute",
        type=names,
        default=frozenset(),
        help="experiments to compute even where a committed file could stand in (comma-separated names)",
    )
    p.add_argument("--only", type=names, default=frozenset(), help="run only these experiments (comma-separated)")
    p.add_argument("--list", action="store_true", help="print each step's commands and run nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = args.out or f"runs/{args.preset}"
    plan = Plan(args.preset, out, args.model, args.dataset, args.device, args.compute)
    if not plan.is_embedded:
        plan.out = f"{out}/{plan.folder_key}"

    def body() -> int:
        if not Path("add_noise.py").is_file():  # the commands name the scripts and committed files by relative path
            raise UserError("run it from the repository root (where add_noise.py is), as make does")
        if args.list:
            for e, commands in steps(plan):
                print(f"{e.name}:")
                print("\n".join(f"    {c}" for c in commands))
            return 0
        return run(plan, args.only, sys.executable)

    return cli.run_main("pipeline", body)


if __name__ == "__main__":
    sys.exit(main())
