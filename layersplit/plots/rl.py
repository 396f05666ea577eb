"""The surrogate and the RL: the surrogates' calibration (rsm_fit), learning curves (training), the
chosen split against the channel (policy) and the cost of the LLM in the loop (cost)."""

from __future__ import annotations

import math
from pathlib import Path

from layersplit import paper, schema
from layersplit.cli import on_ue
from layersplit.surrogate import REFERENCE_SPLIT  # numpy only: torch is not imported
from layersplit.surrogate_fit import r_squared  # numpy only too

from .common import SPLIT_AXIS, FigureInputError, pyplot, read_csv, read_json, save

SURROGATE_CELLS_FILE = "sweep_smollm2-135m_cells.csv"  # the surrogate sweep's cells: the rsm_fit figure's intervals
RL_ALGOS = {"ppo": ("PPO", "C0"), "a2c": ("A2C", "C1"), "dqn": ("DQN", "C2")}  # colour per algorithm
BASELINE_STYLES = {
    "optimum": ("exact optimum", "k", "-"),
    "greedy": ("greedy one-step", "0.4", "--"),
    "random": ("random", "0.6", ":"),
    "fixed": (f"fixed {on_ue(REFERENCE_SPLIT)}", "C3", "-."),
    "best-static": ("best static split (chosen on training starts)", "C4", "-."),
    "best-static-per-start": ("best static split per start split (ignores p)", "C5", ":"),
}
TRAIN_COMMAND = f"python train_rsm.py train --seeds {paper.SEEDS} --algo {{algo}}"
FIT_COMMAND = "python train_rsm.py fit"


def _flag(text: str) -> bool:
    if text not in ("True", "False"):
        raise ValueError(text)
    return text == "True"


def _measured_intervals(fit_rows: list[dict], cells_file: Path) -> None:
    """The paper form's measured intervals from the surrogate sweep's cell table where it has the cell (its
    intervals follow the sweep's windows file; the fit's own file keeps those of the fit that made it)."""
    if not cells_file.is_file():
        return
    rows = read_csv(
        cells_file,
        {
            "link": str,
            "split": float,
            "dropout": float,
            "ppl_low": schema.float_or_nan,
            "ppl_high": schema.float_or_nan,
        },
        FIT_COMMAND,
        optional={"protect": (float, 0.0)},
        check=lambda row, line: schema.cell_problem(row),  # a cell table holds one row per cell
    )
    found = {(r["dropout"], r["split"]): r for r in rows if schema.is_original_link(r) and schema.is_unprotected(r)}
    for r in fit_rows:
        if (cell := found.get((r["dropout"], r["split"]))) is not None:
            r["ppl_low"], r["ppl_high"] = cell["ppl_low"], cell["ppl_high"]


def fig_rsm_fit(results_dir: Path, figures_dir: Path) -> Path:
    """Predicted against measured on the cells held out of the fit: the paper form's perplexity
    (through its inference reward) and the wireless form's log-perplexity and token accuracy."""
    plt = pyplot()
    paper = read_csv(
        results_dir / "rsm_fit_paper.csv",
        {
            "ppl": float,
            "predicted_ppl": float,
            "held_out": _flag,
            "inference_reward": float,
            "predicted_inference_reward": float,
        },
        FIT_COMMAND,
        optional={
            "ppl_low": (schema.float_or_nan, math.nan),
            "ppl_high": (schema.float_or_nan, math.nan),
            "dropout": (float, math.nan),
            "split": (float, math.nan),
        },
    )
    _measured_intervals(paper, results_dir / SURROGATE_CELLS_FILE)
    wireless = read_csv(
        results_dir / "rsm_fit_wireless.csv",
        {
            "log_ppl": float,
            "predicted_log_ppl": float,
            "token_accuracy": float,
            "predicted_token_accuracy": float,
            "held_out": _flag,
        },
        FIT_COMMAND,
    )
    panels = [
        (
            "paper form: perplexity",
            [r for r in paper if r["held_out"]],
            "ppl",
            "predicted_ppl",
            True,
            "inference_reward",
            "predicted_inference_reward",
            "R\u00b2 of the reward",
        ),
        (
            "wireless form: perplexity",
            [r for r in wireless if r["held_out"]],
            "log_ppl",
            "predicted_log_ppl",
            False,
            "log_ppl",
            "predicted_log_ppl",
            "R\u00b2 of log-PPL",
        ),
        (
            "wireless form: token accuracy",
            [r for r in wireless if r["held_out"]],
            "token_accuracy",
            "predicted_token_accuracy",
            False,
            "token_accuracy",
            "predicted_token_accuracy",
            "R\u00b2",
        ),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for ax, (title, rows, x, y, log, r2x, r2y, r2label) in zip(axes, panels, strict=True):
        if not rows:
            raise FigureInputError(
                f"malformed {results_dir}/rsm_fit_*.csv: no held-out cells (remake with: {FIT_COMMAND})"
            )
        xs = [math.exp(r[x]) if x == "log_ppl" else r[x] for r in rows]
        ys = [math.exp(r[y]) if y == "predicted_log_ppl" else r[y] for r in rows]
        ax.scatter(xs, ys, s=14, alpha=0.7, color="C0")
        if x == "ppl" and any(math.isfinite(r["ppl_low"]) for r in rows):  # the measurement's own 95% interval
            ax.errorbar(
                xs,
                ys,
                xerr=[[v - r["ppl_low"] for v, r in zip(xs, rows)], [r["ppl_high"] - v for v, r in zip(xs, rows)]],
                fmt="none",
                ecolor="C0",
                alpha=0.5,
                lw=0.8,
                label="measured: 95% interval",
            )
        lo, hi = min(xs + ys), max(xs + ys)
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, label="predicted = measured")
        if log or x == "log_ppl":
            ax.set_xscale("log")
            ax.set_yscale("log")
        unit = "perplexity" if "ppl" in x else "token accuracy (fraction)"
        ax.set_xlabel(f"measured {unit}")
        ax.set_ylabel(f"predicted {unit}")
        r2 = r_squared([r[r2x] for r in rows], [r[r2y] for r in rows])
        ax.set_title(f"{title}\n{len(rows)} held-out cells, {r2label} = {r2:.3f}", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Reward surrogate calibration: predictions on sweep cells left out of the fit")
    fig.tight_layout()
    return save(fig, figures_dir, "rsm_fit")


def fig_training(results_dir: Path, figures_dir: Path) -> Path:
    """Training-episode return against environment steps on LayerSplit-Paper-v0: mean over seeds
    with the range of the seeds as a band, per algorithm; the baselines' evaluation returns."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for algo, (label, color) in RL_ALGOS.items():
        path = results_dir / f"rl_paper_{algo}_curves.csv"
        if algo != "ppo" and not path.is_file():  # PPO is required; A2C and DQN are drawn when they were run
            continue
        rows = read_csv(path, {"seed": int, "timesteps": int, "mean_return": float}, TRAIN_COMMAND.format(algo=algo))
        by_step: dict[int, list[float]] = {}
        for r in rows:
            by_step.setdefault(r["timesteps"], []).append(r["mean_return"])
        steps = sorted(by_step)
        means = [sum(by_step[t]) / len(by_step[t]) for t in steps]
        seeds = len({r["seed"] for r in rows})
        ax.plot(steps, means, color=color, label=f"{label} (mean of {seeds} seeds)")
        ax.fill_between(
            steps, [min(by_step[t]) for t in steps], [max(by_step[t]) for t in steps], color=color, alpha=0.2
        )
    summary = read_json(results_dir / "rl_paper_ppo.json", TRAIN_COMMAND.format(algo="ppo"), "returns.optimum.mean")
    for name, (label, color, style) in BASELINE_STYLES.items():
        if name in summary["returns"]:
            ax.axhline(summary["returns"][name]["mean"], color=color, ls=style, lw=1, label=label)
    optimum = summary["returns"]["optimum"]  # its 95% interval over the evaluation seeds: the lines are estimates too
    ax.axhspan(
        optimum["mean"] - optimum.get("ci95", 0),
        optimum["mean"] + optimum.get("ci95", 0),
        color="k",
        alpha=0.08,
        label="optimum, 95% interval over evaluation seeds",
    )
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return (5 steps)")
    ax.set_title("Learning on the surrogate (LayerSplit-Paper-v0); bands: range over seeds", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, figures_dir, "training")


def _policy_rows(path: Path, remedy: str) -> dict[str, list[dict]]:
    rows = read_csv(
        path,
        {"policy": str, "value": float, "split": float, "withheld": float},
        remedy,
        optional={"protect": (float, 0.0)},
    )
    by_policy: dict[str, list[dict]] = {}
    for r in rows:
        by_policy.setdefault(r["policy"], []).append(r)
    return by_policy


def fig_policy(results_dir: Path, figures_dir: Path) -> Path:
    """The split each learned policy chooses against the channel condition, beside the exact
    optimum: on our surrogate (and on the authors' when its results exist) and on the wireless env."""
    plt = pyplot()
    panels = [("rl_paper_ppo_policy.csv", "LayerSplit-Paper-v0, SmolLM2 surrogate", TRAIN_COMMAND.format(algo="ppo"))]
    optional = [
        ("rl_paper_ppo_authors_policy.csv", "LayerSplit-Paper-v0, the authors' surrogate (Llama-2-7B)"),
        ("rl_wireless_ppo_policy.csv", "LayerSplit-Wireless-v0"),
        ("rl_protect_ppo_policy.csv", "LayerSplit-Protect-v0 (dotted: K, right axis)"),
    ]
    panels += [(f, t, "") for f, t in optional if (results_dir / f).is_file()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.2), squeeze=False)
    for ax, (name, title, remedy) in zip(axes[0], panels):
        by_policy = _policy_rows(results_dir / name, remedy or f"see {name} in the README")
        wireless = "wireless" in name or "protect" in name
        k_axis = ax.twinx() if "protect" in name else None
        for i, (policy, rows) in enumerate(sorted(by_policy.items(), key=lambda kv: kv[0] == "optimum")):
            optimum = policy == "optimum"
            label = {"optimum": "exact optimum", "best-static": "best static split"}.get(policy, f"learned ({policy})")
            ax.plot(
                [r["value"] for r in rows],
                [r["split"] for r in rows],
                color="k" if optimum else f"C{i}",
                lw=2.5 if optimum else 1.2,
                ls="-" if optimum else ("-." if policy == "best-static" else "--"),
                marker=None if optimum else ".",
                label=label,
                alpha=0.6 if optimum else 1.0,
            )
            if k_axis is not None:
                k_axis.plot(
                    [r["value"] for r in rows],
                    [r["protect"] for r in rows],
                    color="k" if optimum else f"C{i}",
                    ls=":",
                    lw=1.2 if optimum else 1.0,
                    drawstyle="steps-mid",
                )
            elif wireless and any(r["withheld"] for r in rows):
                ax.plot(
                    [r["value"] for r in rows],
                    [10 * r["withheld"] for r in rows],
                    color="k" if optimum else f"C{i}",
                    ls=":",
                    lw=1,
                    label=f"withheld share x 10 ({'optimum' if optimum else policy})",
                )
        ax.set_xlabel("Es/N0 (dB)" if wireless else "element loss probability p")
        ax.set_ylabel(
            f"chosen {SPLIT_AXIS}"
            if wireless
            else "split after 5 steps (0-based; n + 1 layers on the UE),\nmean over starts 1..9"
        )
        if k_axis is not None:
            k_axis.set_yscale("symlog", base=2, linthresh=1)
            k_axis.set_ylim(-0.3, 90)
            k_axis.set_yticks([0, 1, 4, 16, 64], ["0", "1", "4", "16", "64"])
            k_axis.set_ylabel("protected elements per token K (dotted)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Chosen split against the channel condition")
    fig.tight_layout()
    return save(fig, figures_dir, "policy")


def _split_label(choice: str) -> str:
    """A static choice as the evaluation names it ("split 5") with its layers on the UE beside it."""
    number = choice.removeprefix("split ")
    return on_ue(int(number)) if number.isdigit() else choice


def fig_cost(results_dir: Path, figures_dir: Path) -> Path:
    """Measured training cost: one environment step and a whole run, real LLM in the loop against
    the surrogate (log scale); with train.py's full run (rl_llm_ppo.json with an evaluation), a third
    panel: the returns of the LLM-trained and surrogate-trained policies and the baselines on the
    same episodes of the real LLM."""
    plt = pyplot()
    name = "rl_llm_ppo.json" if (results_dir / "rl_llm_ppo.json").is_file() else "rl_llm_cost.json"
    llm = read_json(
        results_dir / name, "python train.py (make llm), or the cost run of make reproduce", "seconds_per_step"
    )
    rsm = read_json(
        results_dir / "rl_paper_ppo.json", TRAIN_COMMAND.format(algo="ppo"), "training.wall_s", "training.timesteps"
    )
    rsm_step = sum(rsm["training"]["wall_s"]) / sum(rsm["training"]["timesteps"])
    rsm_run = sum(rsm["training"]["wall_s"]) / len(rsm["training"]["wall_s"])
    steps = rsm["training"]["timesteps"][0]
    llm_step = llm["seconds_per_step"]
    evaluation = llm.get("evaluation")
    fig, axes = plt.subplots(1, 3 if evaluation else 2, figsize=(16 if evaluation else 10, 4.3))
    bars = [
        (f"real LLM\n({llm['model']}, {llm['tokens_per_step']} tokens)", llm_step, "C3"),
        ("surrogate\n(batched PPO)", rsm_step, "C0"),
    ]
    axes[0].bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    axes[0].set_ylabel("seconds per environment step (PPO updates included)")
    axes[0].set_title(f"one step: {llm_step / rsm_step:,.0f}x", fontsize=10)
    runs = [
        (f"real LLM\n{llm['timesteps']:,} steps\n(measured)", llm["wall_s"], "C3"),
        (f"real LLM\n{steps:,} steps\n(extrapolated)", llm_step * steps, "#f4a582"),
        (f"surrogate\n{steps:,} steps\n(measured)", rsm_run, "C0"),
    ]
    axes[1].bar([r[0] for r in runs], [r[1] for r in runs], color=[r[2] for r in runs])
    axes[1].set_ylabel("wall time of the run (s)")
    axes[1].set_title(
        f"a {steps:,}-step run: {llm_step * steps / 86400:.1f} days against {rsm_run / 60:.1f} min", fontsize=10
    )
    for ax in axes[:2]:
        ax.set_yscale("log")
        ax.grid(alpha=0.3, axis="y")
        ax.tick_params(axis="x", labelsize=8)
        for patch in ax.patches:
            ax.annotate(
                f"{patch.get_height():.3g} s",
                (patch.get_x() + patch.get_width() / 2, patch.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    if evaluation:
        returns = evaluation["returns"]
        names = list(returns)
        labels = [
            f"best-static:\n{_split_label(evaluation['best_static']['choice'])}" if n == "best-static" else n
            for n in names
        ]
        colors = ["C3" if n.startswith("learned") else "C0" if n.startswith("surrogate") else "0.5" for n in names]
        axes[2].barh(
            labels,
            [returns[n]["mean"] for n in names],
            xerr=[returns[n]["ci95"] for n in names],
            color=colors,
            capsize=3,
        )
        axes[2].invert_yaxis()
        axes[2].axvline(0, color="k", lw=0.8)
        axes[2].set_xlabel("mean return on the real LLM (95% interval over episodes)")
        axes[2].set_title(f"policies on the same {evaluation['episodes']} LLM episodes", fontsize=10)
        axes[2].tick_params(axis="y", labelsize=8)
        axes[2].grid(alpha=0.3, axis="x")
    fig.suptitle("Training cost, measured: the LLM in the loop against the reward surrogate")
    fig.tight_layout()
    return save(fig, figures_dir, "cost")
