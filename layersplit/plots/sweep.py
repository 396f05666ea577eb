"""Quality against the split and against the uplink SNR, from the sweeps (add_noise.py --sweep): sweep
and snr; snr_panels draws the SNR view for the NR figure too."""

from __future__ import annotations

import math
from pathlib import Path

from layersplit import experiments, schema
from layersplit.cli import on_ue

from .common import (
    ERROR_RATE_FLOOR,
    FADING_LABELS,
    MODULATION_COLORS,
    MODULATION_LABELS,
    RECOVERY,
    SPLIT_AXIS,
    SWEEP_COLUMNS,
    FigureInputError,
    band,
    pooled_interval,
    pyplot,
    read_sweep,
    save,
    snr_of,
)

SWEEP_FILE = "sweep_layers_smollm2-135m.csv"  # the every-layer sweep (experiments.py's sweep_layers)
# how the sweeps are made (the remedy a missing file names): their commands are declared in experiments.py only
SWEEP_COMMAND = experiments.remedy("sweep_layers")
# --- snr: the physical view of the sweep, one results file per modulation (a file holds one link set-up)
SNR_FILE = "sweep_snr_{modulation}.csv"  # further sweep_snr_*.csv files (e.g. 64qam) are drawn too
SNR_MODULATIONS = ("bpsk", "qpsk", "16qam")  # the files the figure requires
COMPANIONS = ("_cells.csv", "_windows.csv")  # what add_noise.py --sweep writes beside a results file


def snr_remedy(modulation: str) -> str:
    """How to make one modulation's SNR sweep: its experiment, or the QPSK one's grid at that modulation."""
    name = f"sweep_snr_{modulation}"
    if name in experiments.BY_NAME:
        return experiments.remedy(name)
    return experiments.remedy("sweep_snr_qpsk").split(", or ")[1].replace("qpsk", modulation)


SNR_LINK_COLUMNS = ("modulation", "fading", "bits_per_element", "elements_per_packet", "header_bits")  # for its title
SNR_SWEEP_COLUMNS = SWEEP_COLUMNS[:7] + SNR_LINK_COLUMNS + SWEEP_COLUMNS[7:]  # the order names the first bad column


def fig_sweep(results_dir: Path, figures_dir: Path) -> Path:
    """Perplexity (log) and token accuracy against the split, one curve per channel condition:
    pooled over noise draws (perplexity: exp of the mean NLL), shaded over the 95% interval over
    windows (cells.pool: the draws of a window share its text)."""
    plt = pyplot()
    path = results_dir / SWEEP_FILE
    remedy = SWEEP_COMMAND
    rows = read_sweep(path, SWEEP_COLUMNS, remedy)
    rows = [r for r in rows if schema.is_unprotected(r)]  # without the protected path (--protects)
    for r in rows:
        r["snr"] = snr_of(path, r, remedy)
        r["condition"] = (
            schema.is_physical(r),
            r["snr"] if schema.is_physical(r) else r["dropout"],
            r["withheld"],
            r["link"],
        )
    conditions = sorted({r["condition"] for r in rows})
    dropouts = [c for c in conditions if not c[0] and c[1] > 0]
    snrs = [c for c in conditions if c[0]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4))
    for condition in conditions:
        physical, value, withheld, link = condition
        cell = [r for r in rows if r["condition"] == condition]
        splits = sorted({r["split"] for r in cell})
        suffix = f", {withheld:.0%} withheld" if withheld else ""
        if not physical and value == 0:
            style = {"color": "k", "ls": "--", "label": f"clean (p = 0){suffix}"}
        elif physical:
            style = {
                "color": plt.cm.autumn(snrs.index(condition) / max(len(snrs), 1)),
                "marker": "s",
                "ms": 3,
                "label": f"{link}, {value:g} dB{suffix}",
            }
        else:
            style = {
                "color": plt.cm.viridis(dropouts.index(condition) / max(len(dropouts) - 1, 1)),
                "marker": "o",
                "ms": 3,
                "label": f"p = {value:g}{suffix}",
            }
        if withheld and not (not physical and value == 0):
            style["ls"] = ":"
        for ax, column in zip(axes, ("ppl", "token_accuracy")):
            stats = [pooled_interval([r for r in cell if r["split"] == s], column) for s in splits]
            ax.plot(splits, [m for m, _, _ in stats], lw=1.4, **style)
            low, high = band(stats, column)
            ax.fill_between(splits, low, high, color=style["color"], alpha=0.15, lw=0)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("perplexity (log scale)")
    axes[1].set_ylabel("top-1 next-token accuracy (fraction)")
    for ax in axes:
        ax.set_xlabel(SPLIT_AXIS)
        ax.grid(True, which="major", alpha=0.3)
    handles, _ = axes[0].get_legend_handles_labels()
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), 10),
        frameon=False,
        fontsize=9,
        title="channel condition (p: probability that each element is lost)",
        title_fontsize=9,
    )
    draws = max(r["draw"] for r in rows) + 1
    windows = int(max(r["windows"] for r in rows))
    fig.suptitle(
        f"{rows[0]['model']}: element loss at the split against its depth\n({rows[0]['tokens']} tokens = "
        f"{windows} window(s) x {draws} draw(s) pooled; band: 95% interval over windows (over draws for one window))"
    )
    fig.tight_layout(rect=(0, 0.1 if len(handles) <= 10 else 0.15, 1, 1))
    return save(fig, figures_dir, "sweep")


def recovery_snr(snrs: list[float], ppls: list[float], clean: float) -> float:
    """The lowest SNR of an ascending grid from which on every perplexity is within RECOVERY x
    clean (nan if not even the highest SNR is)."""
    i = len(snrs)
    while i > 0 and ppls[i - 1] <= RECOVERY * clean:  # nan compares False: not recovered
        i -= 1
    return snrs[i] if i < len(snrs) else math.nan


def read_snr_sweeps(results_dir: Path) -> dict[str, list[dict]]:
    """modulation -> the rows (without withholding) of its SNR sweep file: SNR_MODULATIONS are
    required, further sweep_snr_*.csv files are added. Each file must hold one physical link set-up."""
    paths = [results_dir / SNR_FILE.format(modulation=m) for m in SNR_MODULATIONS]
    paths += sorted(
        {p for p in results_dir.glob(SNR_FILE.format(modulation="*")) if not p.name.endswith(COMPANIONS)} - set(paths)
    )  # not the companion files a sweep writes beside its results
    sweeps: dict[str, list[dict]] = {}
    for path in paths:
        remedy = snr_remedy(path.stem.removeprefix("sweep_snr_"))
        rows = read_sweep(path, SNR_SWEEP_COLUMNS, remedy)
        rows = [r for r in rows if schema.withholds_nothing(r) and schema.is_unprotected(r)]
        physical = [r for r in rows if schema.is_physical(r)]
        set_ups = {(r["link"], r["modulation"], r["fading"]) for r in physical}
        if len(set_ups) != 1:
            raise FigureInputError(
                f"malformed {path}: expected the rows of one physical link set-up, found "
                f"{sorted(set_ups) or 'none'} (remake it with: {remedy})"
            )
        modulation = set_ups.pop()[1]
        if modulation in sweeps:
            raise FigureInputError(f"malformed {path}: a second file for {modulation} (keep one per modulation)")
        if not any(schema.is_clean(r) for r in rows):
            raise FigureInputError(f"malformed {path}: no clean reference row (remake it with: {remedy})")
        for r in rows:
            r["snr"] = snr_of(path, r, remedy)
        sweeps[modulation] = rows
    return sweeps


def snr_curves(rows: list[dict], split: int, column: str) -> tuple[list[float], list[tuple[float, float, float]]]:
    """Ascending SNRs and (pooled, 95% low, high) of `column` at each, at one split.

    The interval is over windows, or over draws where the sweep has one window."""
    cell = [r for r in rows if schema.is_physical(r) and r["split"] == split]
    snrs = sorted({r["snr"] for r in cell})
    return snrs, [pooled_interval([r for r in cell if r["snr"] == s], column) for s in snrs]


def clean_value(sweeps: dict[str, list[dict]], split: int, column: str) -> float:
    """The clean reference at a split (the same rows in every file that has it: the first file's)."""
    for rows in sweeps.values():
        clean = [r for r in rows if schema.is_clean(r) and r["split"] == split]
        if clean:
            return pooled_interval(clean, column)[0]
    return math.nan


def snr_panels(sweeps: dict[str, list[dict]], colors: dict[str, str], labels: dict[str, str], loss_label: str):
    """The figure of quality against Es/N0, one curve per key of `sweeps` (a modulation, a link): perplexity
    (top) and accuracy (bottom) at each split with where each recovers (named in the titles), and (right)
    the element loss each applied. Returns the figure, its suptitle left to the caller."""
    plt = pyplot()
    splits = sorted({r["split"] for rows in sweeps.values() for r in rows if schema.is_physical(r)})
    fig = plt.figure(figsize=(3.7 * len(splits) + 4.0, 7.6))
    grid = fig.add_gridspec(2, len(splits) + 1, width_ratios=[1.0] * len(splits) + [1.1])
    ppl_axes, acc_axes = [], []
    for i in range(len(splits)):
        ppl_axes.append(fig.add_subplot(grid[0, i], sharey=ppl_axes[0] if ppl_axes else None))
        acc_axes.append(fig.add_subplot(grid[1, i], sharex=ppl_axes[i], sharey=acc_axes[0] if acc_axes else None))
    loss_ax = fig.add_subplot(grid[:, -1], sharex=ppl_axes[0])
    for split, ax_ppl, ax_acc in zip(splits, ppl_axes, acc_axes):
        clean_ppl = clean_value(sweeps, split, "ppl")
        ax_ppl.axhline(clean_ppl, color="k", ls="--", lw=1)
        ax_ppl.axhline(RECOVERY * clean_ppl, color="k", ls=":", lw=0.9)
        ax_acc.axhline(clean_value(sweeps, split, "token_accuracy"), color="k", ls="--", lw=1)
        recovered_at = {}
        for key, rows in sweeps.items():
            for ax, column in ((ax_ppl, "ppl"), (ax_acc, "token_accuracy")):
                snrs, stats = snr_curves(rows, split, column)
                ax.plot(snrs, [m for m, _, _ in stats], "o-", color=colors[key], lw=1.4, ms=3)
                low, high = band(stats, column)
                ax.fill_between(snrs, low, high, color=colors[key], alpha=0.15, lw=0)
                if column == "ppl":
                    recovered_at[key] = recovery_snr(snrs, [m for m, _, _ in stats], clean_ppl)
                    if math.isfinite(recovered_at[key]):
                        ax.plot(
                            recovered_at[key],
                            stats[snrs.index(recovered_at[key])][0],
                            "o",
                            ms=9,
                            mfc="none",
                            mec=colors[key],
                            mew=1.6,
                        )
        ax_ppl.set_title(
            on_ue(split)
            + "\nrecovers at "
            + ", ".join(f"{r:g}" if math.isfinite(r) else "-" for r in recovered_at.values())
            + " dB",
            fontsize=9,
        )
        ax_ppl.set_yscale("log")
        ax_acc.set_xlabel("average Es/N0 (dB)")
        ax_ppl.tick_params(labelbottom=False)
        for ax in (ax_ppl, ax_acc):
            ax.grid(True, which="major", alpha=0.3)
        if split != splits[0]:
            ax_ppl.tick_params(labelleft=False)
            ax_acc.tick_params(labelleft=False)
    ppl_axes[0].set_ylabel("perplexity (log scale)")
    acc_axes[0].set_ylabel("top-1 next-token accuracy (fraction)")
    for key, rows in sweeps.items():
        points = sorted({(r["snr"], r["dropout"]) for r in rows if schema.is_physical(r) and r["split"] == splits[0]})
        loss_ax.plot(
            [s for s, _ in points], [max(p, ERROR_RATE_FLOOR) for _, p in points], "o-", color=colors[key], lw=1.4, ms=3
        )
    loss_ax.set_yscale("log")
    loss_ax.set_ylim(bottom=max(ERROR_RATE_FLOOR, loss_ax.get_ylim()[0]), top=1.5)
    loss_ax.set_xlabel("average Es/N0 (dB)")
    loss_ax.set_ylabel(loss_label)
    loss_ax.set_title("what the link lost (same at every split)", fontsize=10)
    loss_ax.grid(True, which="major", alpha=0.3)
    handles = [plt.Line2D([], [], color=colors[k], marker="o", ms=3, label=labels.get(k, k)) for k in sweeps]
    handles += [
        plt.Line2D([], [], color="k", ls="--", lw=1, label="clean link"),
        plt.Line2D([], [], color="k", ls=":", lw=0.9, label=f"clean + {RECOVERY - 1:.0%}"),
        plt.Line2D(
            [],
            [],
            color="k",
            marker="o",
            ms=9,
            mfc="none",
            ls="",
            label=f"recovered: within {RECOVERY - 1:.0%} of clean from here on (in the title, in legend order)",
        ),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), frameon=False, fontsize=9)
    return fig


def fig_snr(results_dir: Path, figures_dir: Path) -> Path:
    """Perplexity (top) and accuracy (bottom) against Es/N0 at a few splits, one curve per
    modulation, and (right) the element loss (packet error rate) the link applied against Es/N0."""
    sweeps = read_snr_sweeps(results_dir)
    colors = {m: MODULATION_COLORS.get(m, f"C{4 + i}") for i, m in enumerate(sweeps)}
    fig = snr_panels(sweeps, colors, MODULATION_LABELS, "element loss = packet error rate")
    first = next(iter(sweeps.values()))
    r0 = next(r for r in first if schema.is_physical(r))
    draws = max(r["draw"] for rows in sweeps.values() for r in rows) + 1
    fig.suptitle(
        f"{r0['model']}: quality against the uplink SNR ({r0['link']} link: lost packets zero-filled; "
        f"{FADING_LABELS.get(r0['fading'], r0['fading'])}, one fade per packet;\npackets of "
        f"{r0['elements_per_packet']} x {r0['bits_per_element']} bit + {r0['header_bits']} bit; "
        f"{r0['tokens']} tokens, {draws} draw(s); band: 95% interval over windows (over draws for one window))",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save(fig, figures_dir, "snr")
