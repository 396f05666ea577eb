"""The generated tables of measured times: the edge's fairness across UEs, one GPU run's figures
(bench/gpu.sh), the pipeline's steps with their wall times, and make targets timed on a fresh clone.
"""

from __future__ import annotations

from pathlib import Path

from . import experiments
from .claims_stats import read_json
from .claims_tables import table


def block_fairness(results: Path) -> str:
    """The next UE's first token behind maximal prompts, per edge --prefill-chunk (bench/decoding.py --fairness)."""
    found = read_json(results, "serve_fairness.json")
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
    found = read_json(results, GPU)
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
    found = read_json(results, experiments.TIMINGS) or {}
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
        found = read_json(results, f"timings_{target}.json")
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
