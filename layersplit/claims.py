"""The quoted numbers of the README and docs/, generated from the committed result files, so they cannot drift.

Each block is a Markdown table written from `results/` between `<!-- generated: NAME -->` and
`<!-- end: NAME -->` in whichever file holds it: README.md or a page of docs/ (`doc_files`), each block
in one file only (`held`). `python figures.py --claims FILE` rewrites the blocks of one file,
`write_all` those of every file; a test fails when a file differs from what this module writes from
the committed files:

    claims     the paper's claims: what was measured, with 95% intervals, and the verdict
    rl         mean return of every agent and baseline on every environment, per-seed shares of the optimum
    ablation   the original PPO set-up, the default, and each single change (bench/rl.py --ablation)
    sweep      the surrogate sweep's cells: perplexity with its interval over windows
    paired     split against split on the same windows and masks (cells.paired)
    fairness   the next UE's first token behind long prompts, per edge --prefill-chunk
    gpu        one bench/gpu.sh run on a GPU (bench/gpu_summary.py's summary)
    pipeline   every experiment of the pipeline (experiments.py) with its wall time in the committed run
    fresh      make reproduce, quick and test timed on a fresh clone (bench/fresh_clone.py)

Intervals: over seeds for the surrogate-trained agents (seed k of every policy plays the same
episodes, so gaps are paired by seed), over episodes on the real LLM (each episode its own start and
link draws, the same for every policy), over windows of text for the sweep. A verdict is drawn from
the intervals by a stated rule (`verdict`), never typed by hand.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np

from . import UserError, cells, experiments, schema
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
ABLATION_NAMES = {"authors": "the authors' surrogate", "shipped": "SmolLM2 surrogate"}  # bench/rl.py --surrogates
ABLATION_RUNS = {"authors": "rl_paper_ppo_authors", "shipped": "rl_paper_ppo"}  # the same surrogate's train_rsm run
LLM = "rl_llm_ppo.json"  # train.py's run and its evaluation on the real LLM
COST = "rl_cost.json"  # bench/rl.py parts 1-2
ABLATION = "rl_ablation.json"  # bench/rl.py --ablation
FIRST_SPLIT = 1  # the ablation table counts the evaluation episodes that end here (the authors' best static split)
LOW_P, HIGH_P = 0.06, 0.22  # "more loss, deeper split": the policy maps' mean split at p <= LOW_P against p >= HIGH_P
BEGIN, END = "<!-- generated: {} -->", "<!-- end: {} -->"


# --- formatting --------------------------------------------------------------------------------
def pm(mean: float, half: float, digits: int = 3, sign: bool = False) -> str:
    """'mean ± half' with a sign where asked."""
    return f"{mean:{'+' if sign else ''}.{digits}f} ± {half:.{digits}f}"


def pct(mean: float, half: float | None = None) -> str:
    """A share as a percentage, with its interval when given."""
    return f"{100 * mean:.1f}%" + ("" if half is None else f" ± {100 * half:.1f}")


def verdict(gaps: list[tuple[float, float]]) -> str:
    """The rule: reproduced when every interval lies above 0, not reproduced when none does, partly otherwise."""
    above = sum(mean - half > 0 for mean, half in gaps)
    return "reproduced" if above == len(gaps) else "not reproduced" if above == 0 else "partly"


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |" for row in rows]
    )


# --- reading -----------------------------------------------------------------------------------
def _json(results: Path, name: str) -> dict | None:
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
    share, share_half, _ = share_of_optimum(values, returns["optimum"]["per_seed"])
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


# --- the blocks --------------------------------------------------------------------------------
def block_rl(results: Path) -> str:
    """Every surrogate environment: learned and baselines, mean ± 95% over seeds (share of the optimum per
    seed), and the paired gaps learned - best static and learned - p-blind."""
    rows = []
    for stem, label in SURROGATE_RUNS.items():
        run = _json(results, f"{stem}.json")
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
            other = _json(results, f"{stem.replace('_ppo', f'_{algo}')}.json") if "paper" in stem else None
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
    record = _json(results, ABLATION)
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


def paired_table(rows: list[dict]) -> list[dict]:
    """cells.compare_splits for every pair of PAIRS, under the direct link's p > 0."""
    out = []
    for a, b in PAIRS:
        out += [{"pair": (a, b), **c} for c in cells.compare_splits(rows, a, b) if c["condition"] != "p = 0"]
    return out


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
    runs = {stem: _json(results, f"{stem}.json") for stem in SURROGATE_RUNS}
    stats = {stem: {n: run_stats(r, n) for n in r["returns"]} for stem, r in runs.items() if r}
    llm = (_json(results, LLM) or {}).get("evaluation")
    ablation = (_json(results, ABLATION) or {}).get("summary")

    # 1. adaptive beats the fixed split
    parts, gaps = [], []
    for stem, s in stats.items():
        gaps.append(s["fixed"]["gap"])
        parts.append(
            f"{SURROGATE_RUNS[stem]}: PPO {pct(s['learned']['share'], s['learned']['share_ci95'])} of the "
            f"optimum against {pct(s['fixed']['share'])} for the fixed split, PPO − fixed "
            f"{pm(*s['fixed']['gap'], sign=True)}"
        )
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
        ppo = _json(results, pattern.format(algo="ppo") + ".json")
        for algo in ("a2c", "dqn"):
            other = _json(results, pattern.format(algo=algo) + ".json")
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
    cost = _json(results, COST)
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


def block_fairness(results: Path) -> str:
    """The next UE's first token behind maximal prompts, per edge --prefill-chunk (bench/decoding.py --fairness)."""
    found = _json(results, "serve_fairness.json")
    if not found:
        return "(not measured yet: `python bench/decoding.py --fairness`)"
    rows = [
        [
            f"{r['prefill_chunk']}" + (" (whole prompt in one forward)" if r["prefill_chunk"] == 0 else ""),
            f"{r['ttft_median_s']:.2f} s",
            f"{r['long_prompts_done_median_s']:.2f} s",
        ]
        for r in found["rows"]
    ]
    return table(
        [
            "edge `--prefill-chunk`",
            f"short prompt's time to first token (median of {found['rounds']})",
            f"the {found['long_sessions']} long prompts' first tokens",
        ],
        rows,
    )


GPU = "gpu/summary.json"  # bench/gpu_summary.py over a bench/gpu.sh run folder
RAY_GPUS = 8  # the projection's GPUs: the windows spread evenly over one Ray worker per GPU


def block_gpu(results: Path) -> str:
    """The GPU figures of one bench/gpu.sh run (bench/gpu_summary.py): sweep rates against the bf16 matmul
    peak of the same run, decoding against the memory bound, compile times, the paper-scale projection."""
    found = _json(results, GPU)
    if not found:
        return "(not measured yet: `bash bench/gpu.sh run results/gpu` on a GPU)"
    paper, check, serve = found["sweep_paper"], found["sweep_check"], found["serve"]
    large = found.get("sweep_paper_large")
    large = large if large and "paper" in large else None  # a 13B step cut by its time limit has no figures

    def rate(r: dict) -> str:
        return f"{r['seconds']:.1f} s, {r['tflops']:.0f} TFLOP/s ({100 * r['share_of_peak']:.0f}% of the peak)"

    comp, naive, paths = paper["paper_compiled"], check["paper"]["naive"], serve["paths"]
    single, bf16, fp16 = paths["single process"], paths["socket bf16"], paths["socket fp16"]
    hours = [paper["projected_paper_hours"]] + ([large["projected_paper_hours"]] if large else [])
    rows = [
        ["dense bf16 matmul peak, 8192^3, the same run", f"{paper['peak_tflops']:.0f} TFLOP/s", ""],
        ["sweep, paper grid (splits 1..9, clean + 8 p x 5 draws), 7B", rate(paper["paper"]), ">= 60% of the peak"],
        [
            "the same, the edge's layers compiled (`--compile`)",
            f"{rate(comp)}, {comp['speedup_over_eager']:.2f}x eager; compiling {comp['compile_seconds']:.0f} s; "
            f"max abs(dPPL)/PPL {comp['max_rel_dppl']:.1e}",
            "",
        ],
        ["sweep, every layer 0..31, 1 draw, 7B", rate(check["layers"]), ""],
        [
            "fast / naive, paper grid, 1 draw, 7B",
            f"{naive['speedup']:.2f}x (FLOP bound {naive['flop_bound']:.2f}x), "
            f"max abs(dPPL)/PPL {naive['max_rel_dppl']:.1e}",
            "fast = naive",
        ],
    ]
    if large:
        rows.append(["sweep, paper grid, 13B", rate(large["paper"]), ">= 60% of the peak"])
    long = found.get("sweep_paper_long")
    if long and "paper" in long:
        rows.append(
            [
                f"sweep, paper grid in {long['tokens']:,}-token windows, {long['draws']} draws, 7B",
                f"{rate(long['paper'])}; the paper-scale projection {long['projected_paper_hours']:.2f} h",
                "",
            ]
        )
    rows += [
        [
            "single-process decoding, TTFT / TPOT, 7B",
            f"{single['ttft_ms']:.1f} / {single['tpot_ms']:.2f} ms: "
            f"{single['tpot_over_bound']:.2f}x the bound ({serve['bound_ms']:.2f} ms, weights over "
            f"{serve['bandwidth_gbs']:.0f} GB/s measured)",
            "TPOT <= 3x the bound",
        ],
        [
            "socket path TPOT, bf16 / fp16 wire",
            f"{bf16['tpot_ms']:.2f} / {fp16['tpot_ms']:.2f} ms: "
            f"{bf16['tpot_ratio']:.2f}x / {fp16['tpot_ratio']:.2f}x single-process; protocol "
            f"{serve['socket_overhead_ms'][0]:.2f}-{serve['socket_overhead_ms'][1]:.2f} ms per step",
            "<= 1.1x single-process",
        ],
    ]
    if serve.get("compile_seconds"):
        rows.append(
            [
                "compiling the decoding steps (warm-up: single process; socket bf16, then fp16 reusing them)",
                " s; ".join(f"{v:.1f}" for v in serve["compile_seconds"].values()) + " s",
                "",
            ]
        )
    rows += [
        [
            "paper's grid over WikiText-2's test text (300k tokens, 5 draws), one GPU, 7B"
            + (" / 13B" if large else ""),
            " / ".join(f"{h:.2f} h" for h in hours),
            "",
        ],
        [
            f"the same on {RAY_GPUS} GPUs with Ray (projected: one GPU's time / {RAY_GPUS}, not measured)",
            " / ".join(f"{60 * h / RAY_GPUS:.0f} min" for h in hours),
            "",
        ],
    ]
    head = f"what ({found['gpu']}, torch {found['torch']}, bf16, random-weight stand-ins, 2,048-token windows)"
    return table([head, "measured", "target"], rows)


def block_pipeline(results: Path) -> str:
    """experiments.EXPERIMENTS in order: what each computes or takes committed at `make reproduce`, and
    the wall time each step took in the run whose timings file is committed."""
    found = _json(results, experiments.TIMINGS) or {}
    recorded = found.get("steps", {})
    plan = experiments.Plan("reproduce", "")
    rows, total = [], 0.0
    for e in experiments.EXPERIMENTS:
        how = "committed file, a part recomputed and compared" if plan.uses_committed(e) else "computed"
        if e.needs:
            how += f" (when `{e.needs}` exists)"
        seconds = recorded.get(e.name, {}).get("seconds")
        total += seconds or 0.0
        rows.append([f"`{e.name}`", e.what, how, "not run" if seconds is None else f"{seconds:,.0f} s"])
    rows.append(["total", "", "", f"{total / 60:,.1f} min" if recorded else "not measured"])
    return table(["step", "what", "at `make reproduce`", "wall time"], rows)


FRESH_TARGETS = ("reproduce", "quick", "test")  # bench/fresh_clone.py's records quoted by the README


def block_fresh(results: Path) -> str:
    """Each make target's wall time on a fresh clone, set-up included (results/timings_TARGET.json)."""
    rows = []
    for target in FRESH_TARGETS:
        found = _json(results, f"timings_{target}.json")
        if found is None:
            rows.append([f"`make {target}`", "not measured (`python bench/fresh_clone.py " + target + "`)", ""])
            continue
        status = "passed" if found["exit"] == 0 else f"failed (exit {found['exit']})"
        rows.append(
            [
                f"`make {target}`",
                f"{found['total_seconds'] / 60:.1f} min (set-up {found['setup_seconds']:.0f} s), "
                f"{found['cpus']} CPU cores"
                + (f", load {found['load_at_start']:.1f} at its start" if "load_at_start" in found else "")
                + f", commit {found['commit'][:7]}",
                f"{status}: {found['last_line'].strip('= ')}" if target == "test" else status,
            ]
        )
    return table(["command", "wall time on a fresh clone", "outcome"], rows)


BLOCKS = {
    "claims": block_claims,
    "rl": block_rl,
    "ablation": block_ablation,
    "sweep": block_sweep,
    "paired": block_paired,
    "fairness": block_fairness,
    "gpu": block_gpu,
    "pipeline": block_pipeline,
    "fresh": block_fresh,
}


def blocks(results: Path) -> dict[str, str]:
    return {name: make(Path(results)) for name, make in BLOCKS.items()}


def _pattern(name: str) -> re.Pattern:
    return re.compile(re.escape(BEGIN.format(name)) + r"\n(?:(.*?)\n)?" + re.escape(END.format(name)), re.S)


def in_readme(text: str) -> dict[str, str]:
    """The generated blocks a Markdown text (the README, a docs/ page) holds now, by name."""
    return {name: m.group(1) or "" for name in BLOCKS if (m := _pattern(name).search(text))}


def update(text: str, new: dict[str, str]) -> str:
    """The text with every generated block it holds replaced by `new`'s."""
    for name, body in new.items():
        text = _pattern(name).sub(lambda _m, n=name, b=body: f"{BEGIN.format(n)}\n{b}\n{END.format(n)}", text)
    return text


# --- where the blocks live --------------------------------------------------------------------
def doc_files(root: Path) -> list[Path]:
    """The files that may hold generated blocks: README.md and every page of docs/."""
    root = Path(root)
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def held(root: Path) -> dict[str, tuple[Path, str]]:
    """Every generated block of README.md and docs/, by name: the file that holds it and its body now.
    UserError when two places hold the same block (each table lives in one place)."""
    found: dict[str, tuple[Path, str]] = {}
    for path in doc_files(root):
        text = path.read_text(encoding="utf-8")
        for name, body in in_readme(text).items():
            if name in found or len(_pattern(name).findall(text)) > 1:
                where = found[name][0] if name in found else path
                raise UserError(f"{path}: generated block {name!r} is also in {where}: keep it in one place")
            found[name] = (path, body)
    return found


def write_all(results: Path, root: Path) -> dict[Path, list[str]]:
    """Rewrite every generated block of README.md and docs/ from `results`, in the file that holds it;
    a file whose blocks are current is left untouched. Returns, per file with blocks, the names rewritten."""
    new = blocks(results)
    by_file: dict[Path, list[str]] = {}
    for name, (path, _) in held(root).items():
        by_file.setdefault(path, []).append(name)
    changed = {}
    for path, names in by_file.items():
        text = path.read_text(encoding="utf-8")
        now = in_readme(text)
        changed[path] = [n for n in names if now[n] != new[n]]
        if changed[path]:
            path.write_text(update(text, {n: new[n] for n in names}), encoding="utf-8")
    return changed
