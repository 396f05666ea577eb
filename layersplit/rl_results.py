"""Trained runs evaluated against the baselines, and the result files of an RL experiment (what
`train_rsm.py train` and `evaluate` write, what figures.py and claims.py read): every seed's policy
and each baseline (policies.BASELINES: the paper's fixed split, the best static split chosen on
training starts, on Paper-v0 also per start, random, greedy, the exact optimum) played on the same
episodes, with intervals over seeds, shares of the optimum and paired gaps, in rl_<env>_<algo>.json;
the learning curves from the training runs' episode logs in rl_<env>_<algo>_curves.csv; the chosen
split against the channel condition in rl_<env>_<algo>_policy.csv."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import cli, envs, policies, run_folders


def evaluate_runs(
    runs: list[Path],
    env_id: str,
    algo: str,
    env_kwargs: dict,
    rsm: str | None,
    eval_episodes: int,
    eval_seed: int,
    results_dir: str | Path,
    stem: str | None,
    trust_zip: bool,
    curve_points: int,
) -> None:
    """Evaluate the runs (one per seed, of env_id and algo) against the baselines on the same episodes
    (evaluation seed k: resets seeded eval_seed + 1000 k + i), print the table, and write
    <stem>.json, <stem>_curves.csv (curve_points bins) and <stem>_policy.csv to results_dir (stem None:
    rl_<env>_<algo>). rsm is the surrogate recorded for the runs (None: the shipped one)."""
    env = envs.make(env_id, **env_kwargs)
    names = [
        "learned",
        *(
            b
            for b in policies.BASELINES
            if (b != "greedy" or env_id not in envs.SNR_ENV_IDS)
            and (b not in policies.PAPER_ONLY or env_id == "LayerSplit-Paper-v0")
        ),
    ]
    means = {name: [] for name in names}
    models = [run_folders.load_policy(r, trust_zip=trust_zip) for r in runs]
    summaries = [run_folders.read_json(r / run_folders.SUMMARY_FILE) for r in runs]
    best_static = policies.BestStatic(env.unwrapped)  # chosen once, on training starts
    per_start = (
        policies.BestStaticPerStart(env.unwrapped, best_static=best_static)
        if "best-static-per-start" in names
        else None
    )
    for k, model in enumerate(models):  # evaluation seed k: the same episodes for every policy
        seed = eval_seed + 1000 * k
        for name in names:
            if name == "learned":
                policy = policies.learned(model)
            elif name == "best-static":
                policy = best_static
            elif name == "best-static-per-start":
                policy = per_start
            else:
                policy = policies.baseline(name, env.unwrapped, seed)
            means[name].append(policies.evaluate(env, policy, eval_episodes, seed).mean)
    env.close()
    optimum = means.get("optimum")
    table = {}
    print(
        f"\n{env_id}: mean return over {eval_episodes} episodes, {policies.CONFIDENCE:.0%} interval over "
        f"{len(models)} seed(s)"
    )
    for name, values in means.items():
        mean, half = policies.confidence_interval(values)
        # each seed's share of the optimum on its own episodes, then the interval over seeds
        share, share_half, shares = policies.share_of_optimum(values, optimum) if optimum else (np.nan, np.nan, [])
        # paired with the learned policy: seed k of both played the same episodes
        gap, gap_half = policies.confidence_interval(np.subtract(means["learned"], values))
        table[name] = {
            "mean": mean,
            "ci95": half,
            "per_seed": values,
            "share_of_optimum": share,
            "share_ci95": share_half,
            "share_per_seed": shares,
            "learned_minus_this": gap,
            "learned_minus_this_ci95": gap_half,
        }
        label = f"{algo} (learned)" if name == "learned" else name
        label = f"best-static ({best_static.choice})" if name == "best-static" else label
        label = "best-static-per-start (p-blind)" if name == "best-static-per-start" else label
        versus = "" if name == "learned" else f"   learned - this: {gap:+.4f} +- {gap_half:.4f}"
        print(
            f"  {label:34s} {mean:9.4f} +- {half:.4f}   {100 * share:6.2f}% +- {100 * share_half:.2f} of optimum"
            f"{versus}"
        )
    stem = stem or f"rl_{env_id.removeprefix('LayerSplit-').removesuffix('-v0').lower()}_{algo}"
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    cli.write_text_atomic(
        results / f"{stem}.json",
        json.dumps(
            {
                "env": env_id,
                "algo": algo,
                "rsm": str(rsm or "default"),
                "runs": [str(r) for r in runs],
                "eval_episodes": eval_episodes,
                "returns": table,
                "episode_end": env_kwargs["episode_end"],
                "best_static": {
                    "choice": best_static.choice,
                    "training_starts": policies.BEST_STATIC_EPISODES,
                    "scores": best_static.scores,
                },
                **(
                    {
                        "best_static_per_start": {
                            "choices": {str(k): v for k, v in per_start.choices.items()},
                            "training_starts": policies.BEST_STATIC_EPISODES,
                        }
                    }
                    if per_start
                    else {}
                ),
                "training": {
                    "wall_s": [s["wall_s"] for s in summaries],
                    "steps_per_s": [s["steps_per_s"] for s in summaries],
                    "timesteps": [s["timesteps"] for s in summaries],
                },
            },
            indent=2,
        ),
    )
    write_curves(runs, results / f"{stem}_curves.csv", env_id, algo, curve_points)
    write_policy_map(models, results / f"{stem}_policy.csv", env_id, algo, env_kwargs, best_static)
    print(f"results in {results}/{stem}.json, {stem}_curves.csv, {stem}_policy.csv")


def write_curves(runs: list[Path], path: Path, env_id: str, algo: str, points: int) -> None:
    """Mean training-episode return per bin of steps (points bins), per seed (for curves with bands over seeds)."""
    rows = []
    for run in runs:
        log = run_folders.episode_log(run)
        seed = run_folders.run_config(run)["seed"]
        edges = np.linspace(0, log["timesteps"].max(), points + 1)
        log["bin"] = np.clip(np.searchsorted(edges, log["timesteps"], side="left"), 1, points)
        for b, group in log.groupby("bin"):
            rows.append(
                {
                    "env": env_id,
                    "algo": algo,
                    "seed": seed,
                    "timesteps": int(edges[b]),
                    "mean_return": float(group["return"].mean()),
                    "episodes": len(group),
                }
            )
    cli.write_text_atomic(path, pd.DataFrame(rows).to_csv(index=False))


def write_policy_map(models, path: Path, env_id: str, algo: str, env_kwargs: dict, best_static) -> None:
    """The split each policy chooses against the channel condition: every seed, best-static and the optimum."""
    if env_id == "LayerSplit-LLM-v0":
        return
    rows = []
    for k, model in enumerate(models):
        rows += [
            {"policy": f"{algo}_s{k}", **r}
            for r in policies.split_versus_condition(env_id, lambda env, m=model: policies.learned(m), env_kwargs)
        ]
    rows += [
        {"policy": "optimum", **r}
        for r in policies.split_versus_condition(env_id, lambda env: policies.baseline("optimum", env), env_kwargs)
    ]
    rows += [
        {"policy": "best-static", **r}
        for r in policies.split_versus_condition(env_id, lambda env: best_static, env_kwargs)
    ]
    cli.write_text_atomic(path, pd.DataFrame(rows).to_csv(index=False))
