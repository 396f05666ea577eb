"""What the generated tables of the README and docs/ quote, computed from the committed result files:
the files read (named here), each policy's per-seed share of the optimum and its gaps paired by seed,
gaps on the real LLM paired by episode, the policy maps' shift with the loss, the sweep's paired split
comparisons, and the rule a verdict is drawn by (`verdict`). No formatting: claims_tables.py writes
the tables, claims.py puts them in place.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from . import UserError, cells, schema
from .policies import confidence_interval, share_of_optimum

SURROGATE_RUNS = {  # result stem -> how the tables name it
    "rl_paper_ppo_authors": "Paper-v0, the authors' surrogate (Llama-2-7B)",
    "rl_paper_ppo": "Paper-v0, SmolLM2 surrogate (4,096-token sweep)",
    "rl_wireless_ppo": "Wireless-v0, SmolLM2 (Nakagami-m, m = 2)",
    "rl_protect_ppo": "Protect-v0, SmolLM2 (K in the action)",
    "rl_wireless_nr_ppo": "Wireless-v0 over the 5G NR link",
}
ALGO_RUNS = {"authors'": "rl_paper_{algo}_authors", "SmolLM2": "rl_paper_{algo}"}  # PPO against A2C and DQN
SWEEP = "sweep_smollm2-135m.csv"  # the surrogate sweep
PAIRS = ((10, 1), (10, 9), (1, 4), (2, 1), (3, 2))  # split comparisons behind docs/sweep.md's ranking sentences (A, B)
LLM = "rl_llm_ppo.json"  # train.py's run and its evaluation on the real LLM
COST = "rl_cost.json"  # bench/rl.py parts 1-2
ABLATION = "rl_ablation.json"  # bench/rl.py --ablation
LOW_P, HIGH_P = 0.06, 0.22  # "more loss, deeper split": the policy maps' mean split at p <= LOW_P against p >= HIGH_P


def verdict(gaps: list[tuple[float, float]]) -> str:
    """The rule: reproduced when every interval lies above 0, not reproduced when none does, partly otherwise."""
    above = sum(mean - half > 0 for mean, half in gaps)
    return "reproduced" if above == len(gaps) else "not reproduced" if above == 0 else "partly"


def read_json(results: Path, name: str) -> dict | None:
    """A JSON result file (None when there is none); UserError naming it when it is not JSON."""
    path = results / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not JSON: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None


def run_stats(run: dict, name: str) -> dict:
    """A policy's figures in one surrogate-trained result: mean and interval over seeds, its share of the
    optimum per seed (on that seed's own episodes) with the interval over seeds, and the paired gap
    learned - it."""
    returns = run["returns"]
    values = returns[name]["per_seed"]
    optimum = returns["optimum"]["per_seed"]
    # a share of the optimum means something only for positive returns (latency-dominated rewards are negative)
    share, share_half, _ = share_of_optimum(values, optimum) if min(optimum) > 0 else (math.nan, math.nan, [])
    gap = confidence_interval(np.subtract(returns["learned"]["per_seed"], values))
    return {
        "mean": returns[name]["mean"],
        "ci95": returns[name]["ci95"],
        "share": share,
        "share_ci95": share_half,
        "gap": gap,
    }


def llm_gaps(evaluation: dict, name: str, other: str) -> tuple[float, float]:
    """Return of `name` - return of `other` on the real LLM, paired by episode (name may be 'surrogate':
    the mean of the surrogate-trained policies per episode)."""
    returns = evaluation["returns"]

    def per_episode(n):
        if n == "surrogate":
            return np.mean([r["per_episode"] for k, r in returns.items() if k.startswith("surrogate ")], axis=0)
        return np.asarray(returns[n]["per_episode"])

    return confidence_interval(per_episode(name) - per_episode(other))


def policy_map_shift(results: Path, stem: str, policy: str) -> tuple[float, float] | None:
    """The mean split `policy` ends at for p <= LOW_P and for p >= HIGH_P (results/<stem>_policy.csv)."""
    path = results / f"{stem}_policy.csv"
    if not path.is_file():
        return None
    points = []  # (p, split) of `policy`
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for r in reader:
                if r["condition"] == "p" and r["policy"].startswith(policy):
                    points.append((float(r["value"]), float(r["split"])))
    except (KeyError, TypeError, ValueError, csv.Error) as e:  # UnicodeDecodeError is a ValueError
        raise UserError(f"{path}:{reader.line_num}: not a policy map row ({type(e).__name__}: {e})") from None
    low = [split for p, split in points if p <= LOW_P]
    high = [split for p, split in points if p >= HIGH_P]
    return (float(np.mean(low)), float(np.mean(high))) if low and high else None


def sweep_rows(results: Path) -> list[dict]:
    return schema.read_sweep(results / SWEEP)


def paired_table(rows: list[dict]) -> list[dict]:
    """cells.compare_splits for every pair of PAIRS, under the direct link's p > 0."""
    out = []
    for a, b in PAIRS:
        out += [{"pair": (a, b), **c} for c in cells.compare_splits(rows, a, b) if c["condition"] != "p = 0"]
    return out
