"""A training run's folder: what it holds and how it is read back.

runs/<env>/<algo>_s<seed>/ holds config.json (the run's settings, checked on every restart),
policy.safetensors (the finished policy, agents.py's save) with Stable-Baselines3's policy.zip beside it,
summary.json (timing and step count), checkpoints/model_<steps>_steps.safetensors (the periodic saves
a resumed run goes on from), monitor/from_<step>/ (the episode log of each (re)start), progress.csv and
TensorBoard events. A file that a kill left unreadable is renamed to <name>.corrupt (kept, never
deleted) and said in one line; zips are read only with trust_zip, since loading one unpickles it."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
from stable_baselines3.common.monitor import get_monitor_files, load_results

from . import UserError, envs
from .agents import ALGOS, UnsafeSave, algo_name, load_save, policy_from_save

POLICY_FILE = "policy.safetensors"  # the trained policy: weights, and its JSON description in the header
SB3_POLICY_FILE = "policy.zip"  # Stable-Baselines3's save of the same agent (unpickled on load: trust_zip only)
CONFIG_FILE = "config.json"  # the run's settings, checked on every restart
SUMMARY_FILE = "summary.json"  # the finished run's timing and step count
CHECKPOINTS = "checkpoints"  # folder of periodic saves inside a run folder


def checkpoints(run_dir: Path, trust_zip: bool = False) -> list[tuple[int, Path]]:
    """The run's periodic saves as (step, path), newest first; Stable-Baselines3's zips only with
    trust_zip (after the safetensors save of the same step)."""
    kinds = {".safetensors": 1, **({".zip": 0} if trust_zip else {})}
    saved = [
        (int(m.group(1)), kinds[m.group(2)], p)
        for p in (run_dir / CHECKPOINTS).glob("model_*")
        if (m := re.search(r"_(\d+)_steps(\.safetensors|\.zip)$", p.name)) and m.group(2) in kinds
    ]
    return [(step, path) for step, _, path in sorted(saved, reverse=True)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    saved = checkpoints(run_dir)
    return saved[0][1] if saved else None


def free_name(path: Path) -> Path:
    """path, or path with _2, _3, ... before its last suffix when that is taken: moving a file there
    overwrites nothing."""
    k, free = 2, path
    while free.exists():
        free, k = path.with_name(f"{path.stem}_{k}{path.suffix}"), k + 1
    return free


def set_aside(path: Path, why: str, then: str) -> None:
    """Rename an unreadable file of a run to <name>.corrupt (kept, not deleted), said in one line."""
    aside = free_name(path.with_name(path.name + ".corrupt"))
    path.rename(aside)
    print(f"[layersplit] {path} is unreadable ({why}): set aside as {aside.name}, {then}", file=sys.stderr)


def read_json(path: Path) -> dict:
    """A run folder's JSON object; UserError naming path:line when it is damaged."""
    try:
        value = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}:1: not a JSON object")
    return value


def run_config(run_dir: str | Path) -> dict:
    """A training run folder's config.json, checked; UserError in one line when missing or damaged."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(
            f"{run_dir} is not a training run folder (no {CONFIG_FILE}): train one with python train_rsm.py train"
        )
    config = read_json(path)
    if (
        config.get("env") not in envs.ENV_IDS
        or config.get("algo") not in ALGOS
        or not isinstance(config.get("seed"), int)
        or not isinstance(config.get("env_kwargs"), dict)
    ):
        raise UserError(f"{path}:1: not a training run's settings (env, algo, seed and env_kwargs expected)")
    return config


def _read_save(cls, path: Path, trust_zip: bool):
    """(step, what) of one save: {"spec", "tensors"} of a safetensors save, or the agent of a trusted zip."""
    if path.suffix == ".zip":
        if not trust_zip:
            raise UnsafeSave("is a Stable-Baselines3 zip, read only with --trust-zip")
        model = cls.load(path, device="cpu")
        return int(model.num_timesteps), model
    spec, tensors = load_save(path)
    if spec["algo"] != algo_name(cls):
        raise UnsafeSave(f"holds a {spec['algo']} agent, not {algo_name(cls)}")
    return int(spec.get("counters", {}).get("num_timesteps", 0)), {"spec": spec, "tensors": tensors}


def newest_loadable(cls, saves: list[Path], trust_zip: bool = False):
    """The first of saves (newest first) that loads, as (step, path, what), or (0, None, None) when
    none does. A kill while a save is written leaves it truncated, and it would then fail every rerun:
    each unreadable one is renamed to <name>.corrupt (kept, not deleted) and named in one line on stderr."""
    bad, found = [], (0, None, None)
    for path in saves:
        try:
            step, what = _read_save(cls, path, trust_zip)
            found = step, path, what
            break
        except Exception as e:  # truncated, emptied, not a save, ...: whatever the loader says
            bad.append((path, e))
    then = f"resuming from {found[1]}" if found[1] else "training from scratch"
    for path, e in bad:
        set_aside(path, f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}", then)
    return found


ZIP_REFUSED = (
    "{} holds only Stable-Baselines3 zips, and loading one unpickles it, which runs any code stored in "
    "it: pass --trust-zip if you made this folder yourself"
)


def run_saves(run_dir: Path, trust_zip: bool) -> list[Path]:
    """A run folder's saves, newest first: the finished policy, then the checkpoints. Zips are listed
    only with trust_zip; a folder with zips and no safetensors save is refused without it."""
    policies = [run_dir / POLICY_FILE] if (run_dir / POLICY_FILE).exists() else []
    if not policies and trust_zip and (run_dir / SB3_POLICY_FILE).exists():
        policies = [run_dir / SB3_POLICY_FILE]
    saves = policies + [path for _, path in checkpoints(run_dir, trust_zip)]
    if not saves and not trust_zip and ((run_dir / SB3_POLICY_FILE).exists() or checkpoints(run_dir, True)):
        raise UserError(ZIP_REFUSED.format(run_dir))
    return saves


def read_summary(run_dir: Path) -> dict | None:
    """The finished run's summary.json, or None when absent; one that a kill cut short is set aside."""
    path = run_dir / SUMMARY_FILE
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
        int(summary["timesteps"])
        return summary
    except (ValueError, KeyError, TypeError) as e:  # cut short by a kill: the policy's step is unknown
        set_aside(path, type(e).__name__, "going on from the newest save")
        return None


def load_policy(path: str | Path, algo: str | None = None, trust_zip: bool = False):
    """A saved policy (predict() as Stable-Baselines3's): a run folder's policy.safetensors, or that file
    itself, or a checkpoint. A Stable-Baselines3 zip is read only with trust_zip (it unpickles)."""
    path = Path(path)
    if path.is_dir():
        for name in (POLICY_FILE, SB3_POLICY_FILE):
            if (path / name).is_file():
                path = path / name
                break
    if not path.is_file():
        raise UserError(f"no saved policy at {path} (train one with: python train_rsm.py train)")
    if path.suffix == ".zip":
        if not trust_zip:
            raise UserError(ZIP_REFUSED.format(path.parent if path.name == SB3_POLICY_FILE else path))
        if algo is None:
            algo = run_config(path.parent)["algo"] if (path.parent / CONFIG_FILE).exists() else "ppo"
        try:
            return ALGOS[algo].load(path, device="cpu")
        except Exception as e:
            raise UserError(f"{path} is not a saved {algo} policy ({type(e).__name__}: {e})") from None
    try:
        policy = policy_from_save(*load_save(path))
    except UnsafeSave as e:
        raise UserError(f"{path} {e}") from None
    if algo is not None and policy.algo != algo:
        raise UserError(f"{path} holds a {policy.algo} policy, not a {algo} one")
    return policy


def episode_log(run_dir: str | Path):
    """Every training episode of a run as (timesteps at its end, return), from the monitor files: one
    folder per (re)start, from_<its first step>, read by Stable-Baselines3's load_results."""
    import pandas as pd

    folders = [f for f in Path(run_dir, "monitor").glob("from_*") if get_monitor_files(str(f))]
    if not folders:
        raise UserError(f"{run_dir} has no monitor files: is it a training run folder?")
    log = pd.concat(load_results(str(f)).assign(start=int(f.name.removeprefix("from_"))) for f in folders)
    # in the order they ended; episodes that ended at once stay in their file's order (load_results'
    # sort is not stable)
    log = log.sort_values(["start", "t", "index"], kind="stable")
    log["timesteps"] = log.groupby("start")["l"].cumsum() + log["start"]
    # a stretch abandoned by a kill and trained again from an earlier save is shown once: each part
    # keeps the episodes that ended by the step the next part started from
    starts = sorted(log["start"].unique())
    until = dict(zip(starts, [*starts[1:], np.inf]))
    log = log[log["timesteps"] <= log["start"].map(until)]
    return log[["timesteps", "r"]].rename(columns={"r": "return"}).reset_index(drop=True)
