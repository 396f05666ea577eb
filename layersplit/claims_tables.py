"""The generated tables of the paper's claims, the RL results and the sweep, in Markdown, from what
claims_stats.py computes: the claims with their verdicts, every agent against its baselines, the PPO
ablation, the surrogate sweep's cells and its paired split comparisons (claims.py: where each goes).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import schema
from .claims_stats import (
    ABLATION,
    ALGO_RUNS,
    COST,
    HIGH_P,
    LLM,
    LOW_P,
    PAIRS,
    SURROGATE_RUNS,
    SWEEP,
    llm_gaps,
    paired_table,
    policy_map_shift,
    read_json,
    run_stats,
    sweep_rows,
    verdict,
)
from .policies import confidence_interval

ABLATION_NAMES = {"authors": "the authors' surrogate", "shipped": "SmolLM2 surrogate"}  # bench/rl.py --surrogates
ABLATION_RUNS = {"authors": "rl_paper_ppo_authors", "shipped": "rl_paper_ppo"}  # the same surrogate's train_rsm run
FIRST_SPLIT = 1  # the ablation table counts the evaluation episodes that end here (the authors' best static split)


def pm(mean: float, half: float, digits: int = 3, sign: bool = False) -> str:
    """'mean ± half' with a sign where asked."""
    return f"{mean:{'+' if sign else ''}.{digits}f} ± {half:.{digits}f}"


def pct(mean: float, half: float | None = None) -> str:
    """A share as a percentage, with its interval when given ("no share" where returns are below 0)."""
    if math.isnan(mean):
        return "no share: returns < 0"
    return f"{100 * mean:.1f}%" + ("" if half is None else f" ± {100 * half:.1f}")


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |" for row in rows]
    )


def block_rl(results: Path) -> str:
    """Every surrogate environment: learned and baselines, mean ± 95% over seeds (share of the optimum per
    seed), and the paired gaps learned - best static and learned - p-blind."""
    rows = []
    for stem, label in SURROGATE_RUNS.items():
        run = read_json(results, f"{stem}.json")
        if run is None:
            continue
        s = {n: run_stats(run, n) for n in run["returns"]}
        blind = s.get("best-static-per-start")
        rows.append(
            [
                label,
                run["algo"].upper(),
                f"{pm(s['learned']['mean'], s['learned']['ci95'])} "
                f"({pct(s['learned']['share'], s['learned']['share_ci95'])})",
                f"{s['fixed']['mean']:.3f} ({pct(s['fixed']['share'])})",
                f"{s['best-static']['mean']:.3f}, {run['best_static']['choice']} ({pct(s['best-static']['share'])})",
                f"{blind['mean']:.3f} ({pct(blind['share'])})" if blind else "-",
                f"{s['random']['mean']:.3f} ({pct(s['random']['share'])})",
                f"{s['greedy']['mean']:.3f} ({pct(s['greedy']['share'])})" if "greedy" in s else "-",
                f"{s['optimum']['mean']:.3f}",
                pm(*s["best-static"]["gap"], sign=True),
                pm(*blind["gap"], sign=True) if blind else "-",
            ]
        )
        for algo in ("a2c", "dqn"):
            other = read_json(results, f"{stem.replace('_ppo', f'_{algo}')}.json") if "paper" in stem else None
            if other:
                o = {n: run_stats(other, n) for n in ("learned", "best-static", "best-static-per-start")}
                rows.append(
                    [
                        label,
                        algo.upper(),
                        f"{pm(o['learned']['mean'], o['learned']['ci95'])} "
                        f"({pct(o['learned']['share'], o['learned']['share_ci95'])})",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                        pm(*o["best-static"]["gap"], sign=True),
                        pm(*o["best-static-per-start"]["gap"], sign=True),
                    ]
                )
    return table(
        [
            "environment, surrogate",
            "agent",
            "learned (share of the optimum)",
            "fixed split",
            "best static",
            "best static per start (p-blind)",
            "random",
            "greedy",
            "optimum",
            "learned − best static",
            "learned − p-blind",
        ],
        rows,
    )


def block_ablation(results: Path) -> str:
    record = read_json(results, ABLATION)
    if record is None or "summary" not in record:
        return "(no ablation record: python bench/rl.py --ablation)"
    rows = []
    for name, s in record["summary"].items():
        runs = record["surrogates"][name]["runs"]
        for setup, t in s["setups"].items():
            at_first = [
                sum(f == FIRST_SPLIT for f in runs[f"{setup} | seed {seed}"]["final_splits"]) for seed in t["seeds"]
            ]
            rows.append(
                [
                    ABLATION_NAMES.get(name, name),
                    setup,
                    f"{t['share_of_optimum']:.2f}% ± {t['share_ci95']:.2f}",
                    ", ".join(f"{x:.2f}" for x in t["share_per_seed"]),
                    pm(t["minus_best_static"], t["minus_best_static_ci95"], 4, True),
                    pm(t["minus_original"], t["minus_original_ci95"], 4, True),
                    f"{t['channel_blind_seeds']} of {len(t['seeds'])}",
                    ", ".join(str(n) for n in at_first),
                ]
            )
    episodes = record["settings"]["eval_episodes"]
    header = [
        "surrogate",
        "set-up",
        "share of the optimum",
        "per seed",
        "− best static",
        "− the original set-up",
        "channel-blind seeds",
        f"episodes (of {episodes}) ending at split {FIRST_SPLIT}, per seed",
    ]
    best = "; ".join(
        f"{ABLATION_NAMES.get(n, n)}: best static {s['best_static']} at {s['best_static_share']:.2f}%"
        for n, s in record["summary"].items()
    )
    return table(header, rows) + f"\n\n{best}."


CELLS_READ = ("link", "protect", "split", "dropout", "ppl", "ppl_low", "ppl_high", "interval_unit", "samples")


def block_sweep(results: Path) -> str:
    """The surrogate sweep's cells: split x p, perplexity [95% interval] and the interval's unit."""
    path = results / SWEEP.replace(".csv", "_cells.csv")
    found = [r for r in schema.read_cells(path, CELLS_READ) if schema.is_original_link(r) and schema.is_unprotected(r)]
    ps = sorted({float(r["dropout"]) for r in found})
    splits = sorted({int(r["split"]) for r in found})
    cell = {(int(r["split"]), float(r["dropout"])): r for r in found}

    def show(r):
        low, high = float(r["ppl_low"]), float(r["ppl_high"])
        return f"{float(r['ppl']):.3g} [{low:.3g}, {high:.3g}]" if math.isfinite(low) else f"{float(r['ppl']):.3g}"

    rows = [[str(s)] + [show(cell[s, p]) if (s, p) in cell else "" for p in ps] for s in splits]
    units = sorted({r["interval_unit"] for r in found if float(r["dropout"]) > 0})
    return (
        table(["split"] + [f"p = {p:g}" for p in ps], rows)
        + f"\n\nInterval unit of the impaired cells: {', '.join(units)}; "
        f"{cell[splits[0], 0.0]['samples']} window(s) in the clean cell."
    )


def block_paired(results: Path) -> str:
    if not schema.windows_path(results / SWEEP).is_file():
        return f"(no windows file beside {SWEEP}: rerun its sweep, python add_noise.py --sweep)"
    found = paired_table(sweep_rows(results))
    ps = list(dict.fromkeys(c["condition"] for c in found))
    by = {(c["pair"], c["condition"]): c for c in found}

    def show(c):
        return pm(c["difference"], c["ci95"], 2, True) + (" *" if c.get("significant") else "")

    rows = [
        [f"split {a} − split {b}"] + [show(by[(a, b), p]) if ((a, b), p) in by else "" for p in ps] for a, b in PAIRS
    ]
    units = {c["interval_unit"] for c in found}
    n = {c["units"] for c in found}
    return (
        table(["NLL difference"] + ps, rows)
        + f"\n\nPaired on the same windows and masks; 95% t interval over {', '.join(map(str, sorted(n)))} "
        f"{', '.join(sorted(units))}; * the interval excludes 0 (negative: the first split has the lower NLL)."
    )


def block_claims(results: Path) -> str:
    rows = []
    runs = {stem: read_json(results, f"{stem}.json") for stem in SURROGATE_RUNS}
    stats = {stem: {n: run_stats(r, n) for n in r["returns"]} for stem, r in runs.items() if r}
    llm = (read_json(results, LLM) or {}).get("evaluation")
    ablation = (read_json(results, ABLATION) or {}).get("summary")

    # 1. adaptive beats the fixed split
    parts, gaps = [], []
    for stem, s in stats.items():
        gaps.append(s["fixed"]["gap"])
        against = (
            f"PPO {pct(s['learned']['share'], s['learned']['share_ci95'])} of the optimum against "
            f"{pct(s['fixed']['share'])} for the fixed split"
            if not math.isnan(s["learned"]["share"])
            else f"PPO {s['learned']['mean']:.1f} against {s['fixed']['mean']:.1f} for the fixed split (returns < 0)"
        )
        parts.append(f"{SURROGATE_RUNS[stem]}: {against}, PPO − fixed {pm(*s['fixed']['gap'], sign=True)}")
    held = ""
    if llm:
        gap = llm_gaps(llm, "learned (LLM in the loop)", "fixed")
        gaps.append(gap)
        splits = {s for episode in llm["returns"]["learned (LLM in the loop)"]["splits"] for s in episode}
        held = (
            (
                f"; on the real LLM the learned policy holds split {splits.pop()} in every episode: a learned "
                "choice beats the fixed split there, not adaptation"
            )
            if len(splits) == 1
            else ""
        )
        parts.append(f"real LLM ({llm['episodes']} episodes): LLM-trained PPO − fixed {pm(*gap, 1, True)}")
    rows.append(
        [
            "adaptive splitting beats the fixed split (5 layers on the UE)",
            "; ".join(parts),
            f"**{verdict(gaps)}**: PPO − fixed is above 0 in {sum(m - h > 0 for m, h in gaps)} of {len(gaps)} "
            f"settings{held}",
        ]
    )

    # 2. adaptive beats the best static split, under the original's settings and the defaults
    parts, gaps = [], []
    for name, s in (ablation or {}).items():  # under the original's settings and the defaults
        for setup, t in list(s["setups"].items())[:2]:
            gaps.append((t["minus_best_static"], t["minus_best_static_ci95"]))
            parts.append(
                f"{ABLATION_NAMES.get(name, name)}, {setup.split(':')[0]} set-up (ablation): PPO − best "
                f"static {pm(t['minus_best_static'], t['minus_best_static_ci95'], 4, True)}, channel-blind "
                f"in {t['channel_blind_seeds']} of {len(t['seeds'])} seeds"
            )
    ablated = {stem for name, stem in ABLATION_RUNS.items() if name in (ablation or {})}
    blind_gaps = []
    for stem, s in stats.items():
        if stem not in ablated:  # the ablation's default set-up stands for these runs where it covers them
            gaps.append(s["best-static"]["gap"])
            parts.append(f"{SURROGATE_RUNS[stem]}: PPO − best static {pm(*s['best-static']['gap'], sign=True)}")
        if (blind := s.get("best-static-per-start")) is not None:
            blind_gaps.append(blind["gap"])
            parts.append(f"{SURROGATE_RUNS[stem]}: PPO − p-blind per-start baseline {pm(*blind['gap'], sign=True)}")
    if llm:
        gap = llm_gaps(llm, "learned (LLM in the loop)", "best-static")
        gaps.append(gap)
        choice = llm["best_static"]["choice"]
        parts.append(f"real LLM: LLM-trained PPO − best static ({choice}) {pm(*gap, 2, True)}")
    rows.append(
        [
            "adaptive splitting beats the best static split",
            "; ".join(parts),
            f"**{verdict(gaps)}**: above 0 in {sum(m - h > 0 for m, h in gaps)} of {len(gaps)} settings; "
            f"against the p-blind per-start baseline (a policy that never looks at the channel) in "
            f"{sum(m - h > 0 for m, h in blind_gaps)} of {len(blind_gaps)}",
        ]
    )

    # 3. PPO beats A2C and DQN
    parts, gaps = [], []
    for surrogate, pattern in ALGO_RUNS.items():
        ppo = read_json(results, pattern.format(algo="ppo") + ".json")
        for algo in ("a2c", "dqn"):
            other = read_json(results, pattern.format(algo=algo) + ".json")
            if ppo and other:
                gap = confidence_interval(
                    np.subtract(ppo["returns"]["learned"]["per_seed"], other["returns"]["learned"]["per_seed"])
                )
                gaps.append(gap)
                parts.append(f"{surrogate} surrogate: PPO − {algo.upper()} {pm(*gap, sign=True)}")
    rows.append(
        [
            "PPO beats A2C and DQN",
            "; ".join(parts) + " (paired by seed: the same episodes)",
            f"**{verdict(gaps)}**: above 0 in {sum(m - h > 0 for m, h in gaps)} of {len(gaps)} comparisons",
        ]
    )

    # 4. cost
    cost = read_json(results, COST)
    if cost:
        default = list(cost["ppo"].values())[-1]
        rows.append(
            [
                "the surrogate cuts training from days to minutes",
                f"one LLM step ({cost['llm_tokens']} tokens) {1e3 * cost['llm_step_s']:.0f} ms against "
                f"{1e6 * cost['surrogate_step_s']:.0f} µs per surrogate step, "
                f"{cost['llm_over_surrogate_step']:,.0f}x "
                f"(`bench/rl.py`, one run, load {cost['load_average_at_start']:.1f} at its start); "
                f"{cost['total_timesteps']:,} steps: {cost['llm_run_days']:.1f} days of LLM steps against a "
                f"{default['run_s'] / 60:.1f}-min PPO run on the surrogate, "
                f"{cost['llm_run_over_surrogate_run']:,.0f}x",
                "**reproduced** in kind (SmolLM2 is 50x smaller than Llama-2-7B: fewer absolute days)",
            ]
        )

    # 5. a surrogate-trained policy works on the real LLM
    if llm:
        versus_llm = llm_gaps(llm, "surrogate", "learned (LLM in the loop)")
        versus_fixed = llm_gaps(llm, "surrogate", "fixed")
        versus_best = llm_gaps(llm, "surrogate", "best-static")
        ok = versus_fixed[0] - versus_fixed[1] > 0 and versus_llm[0] + versus_llm[1] > 0
        returns = llm["returns"]
        surrogate = np.mean([r["per_episode"] for k, r in returns.items() if k.startswith("surrogate ")], axis=0)
        differ = int(np.sum(~np.isclose(surrogate, returns["learned (LLM in the loop)"]["per_episode"])))
        rows.append(
            [
                "a policy learned on the surrogate works on the real LLM",
                f"{llm['episodes']} episodes of the real LLM, the same for every policy; surrogate-trained PPO "
                f"(mean of 3 seeds per episode) − fixed {pm(*versus_fixed, 1, True)}, − the LLM-trained policy "
                f"{pm(*versus_llm, 1, True)} (their returns differ in {differ} of {llm['episodes']} episodes), "
                f"− best static {pm(*versus_best, 1, True)}",
                f"**{'reproduced' if ok else 'not reproduced'}**: rule: above the fixed split and not below "
                "the LLM-trained policy",
            ]
        )

    # 6. more loss, deeper split
    parts, shifts = [], []
    for stem in ("rl_paper_ppo_authors", "rl_paper_ppo"):
        for policy in ("optimum", "ppo"):
            found = policy_map_shift(results, stem, policy)
            if found:
                shifts.append(found[1] - found[0] >= 1)
                parts.append(
                    f"{SURROGATE_RUNS[stem].split(', ')[1]}, {policy}: mean final split {found[0]:.1f} at "
                    f"p <= {LOW_P:g}, {found[1]:.1f} at p >= {HIGH_P:g}"
                )
    rows.append(
        [
            "more channel loss, deeper split",
            "; ".join(parts),
            f"**{'reproduced' if all(shifts) else 'partly' if any(shifts) else 'not reproduced'}**: a shift of "
            f"at least one layer in {sum(shifts)} of {len(shifts)} policy maps",
        ]
    )
    return table(["claim", "measured here (95% intervals)", "verdict"], rows)


PROTECT_RL, WIRELESS_RL = "rl_protect_ppo.json", "rl_wireless_ppo.json"  # LayerSplit-Protect-v0 and -Wireless-v0
PROTECT_POLICIES = {  # the rows of the protect environment's table, in order
    "optimum": "exact optimum (per-step argmax)",
    "best-static": "best static: {choice}",
    "learned": "PPO (learned)",
    "fixed": "fixed split 4, K = 0",
    "random": "random",
}


def block_protect_rl(results: Path) -> str:
    """LayerSplit-Protect-v0: each policy's mean return over seeds with its share of the optimum, then the
    gaps that say what protection and adapting K are worth, paired by seed (the two environments evaluate
    each seed on the same episodes)."""
    protect, wireless = read_json(results, PROTECT_RL), read_json(results, WIRELESS_RL)
    if protect is None or wireless is None:
        return f"(no {PROTECT_RL} or {WIRELESS_RL} in {results}: make them with `make reproduce`)"
    rows = []
    for name, label in PROTECT_POLICIES.items():
        s = run_stats(protect, name)
        rows.append(
            [label.format(choice=protect["best_static"]["choice"]), pm(s["mean"], s["ci95"], 2), pct(s["share"])]
        )
    w = wireless["returns"]
    rows.append(
        [
            "without protection (`LayerSplit-Wireless-v0`): its optimum / best static",
            f"{w['optimum']['mean']:.2f} / {w['best-static']['mean']:.2f}",
            "",
        ]
    )
    p = protect["returns"]

    def gap(a: list[float], b: list[float]) -> str:
        mean, half = confidence_interval(np.subtract(a, b))
        return pm(mean, half, 2, sign=True)

    seeds = lambda returns, name: returns[name]["per_seed"]  # noqa: E731
    gaps = [
        ["best static with protection − best static without", gap(seeds(p, "best-static"), seeds(w, "best-static"))],
        ["best static with protection − optimum without", gap(seeds(p, "best-static"), seeds(w, "optimum"))],
        ["optimum − best static (what adapting is worth)", gap(seeds(p, "optimum"), seeds(p, "best-static"))],
        ["PPO − best static", gap(seeds(p, "learned"), seeds(p, "best-static"))],
    ]
    return (
        table(["policy", f"mean return ± 95% over {len(protect['runs'])} seeds", "share of the optimum"], rows)
        + "\n\n"
        + table(["paired by seed", "difference ± 95%"], gaps)
        + "\n\n"
        + block_protect_choices(results)
        + protect_fit_line(results)
    )


PROTECT_FIT = "rsm_fit_protect.json"  # the protect-form surrogate's held-out metrics (train_rsm.py fit)


def protect_fit_line(results: Path) -> str:
    fit = read_json(results, PROTECT_FIT)
    if fit is None:
        return ""
    held = fit["metrics"]["held_out"]
    return (
        f"\n\nThe protect-form surrogate the agents train on (`results/{PROTECT_FIT}`): held-out R² "
        f"{held['r2_log_ppl']:.3f} log-PPL, {held['r2_token_accuracy']:.3f} accuracy, {held['r2_latency_s']:.3f} "
        f"latency on {held['cells']} cells; median relative error of perplexity "
        f"{held['median_relative_error_ppl']:.1%}."
    )


PROTECT_POLICY_CSV = "rl_protect_ppo_policy.csv"  # each policy's action against the SNR (train_rsm.py train)


def block_protect_choices(results: Path) -> str:
    """What the optimum and each PPO seed choose on LayerSplit-Protect-v0 against the SNR, as runs of SNRs
    with one (split, share withheld, K), from the policy file."""
    path = results / PROTECT_POLICY_CSV
    if not path.is_file():
        return f"(no {PROTECT_POLICY_CSV} in {results})"
    import csv

    with path.open(newline="", encoding="utf-8") as f:
        found = [r for r in csv.DictReader(f) if r["condition"] == "snr_db"]
    names = ["optimum"] + sorted({r["policy"] for r in found if r["policy"].startswith("ppo_")})
    rows = []
    for name in names:
        runs: list[list] = []  # [first SNR, last SNR, choice]
        for r in sorted((r for r in found if r["policy"] == name), key=lambda r: float(r["value"])):
            choice = (int(float(r["split"])), float(r["withheld"]), int(r["protect"]))
            if runs and runs[-1][2] == choice:
                runs[-1][1] = float(r["value"])
            else:
                runs.append([float(r["value"]), float(r["value"]), choice])
        rows.append(
            [
                name.replace("ppo_s", "PPO, seed "),
                "; ".join(
                    (f"{a:g}" if a == b else f"{a:g}-{b:g}")
                    + f" dB: split {c[0]}, "
                    + (f"{c[1]:.0%} withheld, " if c[1] else "")
                    + f"K = {c[2]}"
                    for a, b, c in runs
                ),
            ]
        )
    return table(["policy", "choice against Es/N0 (split, share withheld, K)"], rows)
