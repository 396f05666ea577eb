"""Every figure of the project, drawn from result files only (nothing is recomputed here).

    python figures.py                      # all figures into figures/ (PNG and PDF each)
    python figures.py --only ber_per snr   # some figures
    python figures.py --results-dir results --figures-dir figures

Figures (add one: write a function (results_dir, figures_dir) -> png path that reads its files
with read_csv and ends with save(fig, figures_dir, name), and register it in FIGURES):
    ber_per   results/channel_ber_per.csv (python -m layersplit.channel --table results/channel_ber_per.csv)
              BER and PER against Es/N0 per modulation and fading, closed form vs Monte Carlo.
    sweep     results/sweep_layers_smollm2-135m.csv (SWEEP_COMMAND below; make reproduce)
              perplexity and token accuracy against the split, one curve per channel condition.
    snr       results/sweep_snr_{bpsk,qpsk,16qam}.csv (SNR_COMMAND below, once per modulation)
              perplexity and token accuracy against Es/N0, one curve per modulation, at a few splits;
              the element loss (packet error rate) the link applied, against Es/N0.
    latency   results/latency_breakdown.csv (python -m layersplit.channel --latency-table results/latency_breakdown.csv)
              UE compute + transmission + edge compute against the split, prefill and one decoding
              step, per model and Es/N0.

    rsm_fit   results/rsm_fit_{paper,wireless}.csv (python train_rsm.py fit)
              the surrogates' predictions against the measurements on held-out sweep cells, with R^2.
    training  results/rl_paper_{ppo,a2c,dqn}_curves.csv, rl_paper_ppo.json
              (python train_rsm.py train --seeds 0,1,2 --algo A)
              training return against steps, mean and range over seeds, with the baselines' returns
              (A2C and DQN drawn when their curves exist).
    policy    results/rl_paper_ppo_policy.csv (+ rl_paper_ppo_authors_policy.csv, rl_wireless_ppo_policy.csv if present)
              the chosen split against the channel condition, learned beside the exact optimum.
    cost      results/rl_llm_ppo.json (make llm; else rl_llm_cost.json of make reproduce), results/rl_paper_ppo.json
              seconds per environment step and per run, real LLM against the surrogate; with the full
              train.py run, the LLM-trained and surrogate-trained policies on the same LLM episodes.

    nr_bler   results/nr_bler.csv (+ nr_bler_awgn.csv) (python -m layersplit.nr --table results/nr_bler.csv)
              BLER against Es/N0 per MCS with intervals, and the link they make: MCS, residual loss, goodput.
    nr_snr    results/sweep_nr_snr_smollm2-135m.csv (+ sweep_nr_reliable_snr_...) beside sweep_snr_qpsk.csv
              (NR_SNR_COMMAND)
              perplexity and accuracy against Es/N0, the NR link beside the uncoded one, and where each recovers.

A split is 0-based everywhere: split n cuts after decoder layer n, n + 1 layers on the UE. The
figures take every grid (splits, SNRs, p) from the result files; the experiments' grids are written
once, in the Makefile (LAYERS_ARGS, SNR_GRID). A missing or malformed result file is reported by
name; the other figures are still drawn and the exit status is non-zero.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from layersplit import cli, schema
from layersplit.cli import on_ue, writable_dir
from layersplit.surrogate import REFERENCE_SPLIT, r_squared  # numpy only: torch is not imported

if TYPE_CHECKING:
    from matplotlib.figure import Figure

README = Path(__file__).resolve().parent / "README.md"  # where --claims writes the generated tables
RESULTS_DIR = Path("results")  # where the experiment scripts write their CSV/JSON
FIGURES_DIR = Path("figures")  # where the PNGs (and PDFs of the same figures) go
DPI = 150  # readable in the README at ~1000 px width
FORMATS = ("png", "pdf")  # every figure is written in each; the PNG is what the README embeds
MODULATION_COLORS = {"bpsk": "C0", "qpsk": "C1", "16qam": "C2", "64qam": "C3"}  # same in every figure
MODULATION_LABELS = {"bpsk": "BPSK", "qpsk": "QPSK", "16qam": "16-QAM", "64qam": "64-QAM"}
FADING_ORDER = ("awgn", "rayleigh", "nakagami")  # columns of the channel figure
FADING_LABELS = {"awgn": "AWGN (no fading)", "rayleigh": "Rayleigh", "nakagami": "Nakagami-m"}
ERROR_RATE_FLOOR = 1e-7  # lower y limit of BER/PER plots; Monte Carlo cannot resolve less
MIN_MC_EVENTS = 10  # Monte Carlo points resting on fewer errors (relative error > 30 %) are not drawn
SWEEP_FILE = "sweep_layers_smollm2-135m.csv"  # the every-layer sweep (make reproduce's LAYERS_ARGS)
SURROGATE_CELLS_FILE = "sweep_smollm2-135m_cells.csv"  # the surrogate sweep's cells: the rsm_fit figure's intervals
# how the sweeps are made (the remedy a missing file names); their grids are the Makefile's, written there only
SWEEP_COMMAND = "make reproduce, or python add_noise.py --sweep <the Makefile's LAYERS_ARGS> --output {path}"
# --- snr: the physical view of the sweep, one results file per modulation (a file holds one link set-up)
SNR_FILE = "sweep_snr_{modulation}.csv"  # further sweep_snr_*.csv files (e.g. 64qam) are drawn too
SNR_MODULATIONS = ("bpsk", "qpsk", "16qam")  # the files the figure requires
SNR_COMMAND = (
    "python add_noise.py --sweep --link erasure --modulation {modulation} <the Makefile's SNR_ARGS, "
    "its SNR_GRID> --output {path}, or make reproduce"
)
RECOVERY = 1.10  # "recovered": perplexity within 10 % of clean at this SNR and every higher one
# --- latency: seconds per component, stacked; colours from ColorBrewer Dark2 (apart from the modulations')
LATENCY_FILE = "latency_breakdown.csv"
LATENCY_COMPONENTS = {
    "ue_compute_s": ("UE compute", "#7570b3"),
    "tx_s": ("transmission (uplink)", "#d95f02"),
    "edge_compute_s": ("edge compute (incl. LM head)", "#1b9e77"),
}  # bottom to top
MODEL_LABELS = {"smollm2-135m": "SmolLM2-135M", "llama2-7b": "Llama-2-7B"}
PHASE_LABELS = {"prefill": "prefill", "decode": "one decoding step"}
SPLIT_AXIS = "split (0-based; split n = n + 1 layers on the UE)"  # every axis that shows a split


def pyplot():
    """matplotlib.pyplot, drawing to files only; imported by the figures, so that --help answers at once."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


class FigureInputError(Exception):
    """A result file is missing or malformed; the message names it."""


def read_csv(
    path: Path,
    columns: dict[str, type],
    remedy: str,
    optional: dict[str, tuple[type, object]] | None = None,
    check: Callable[[dict, int], str | None] | None = None,
) -> list[dict]:
    """Rows of `path` with `columns` converted to their types (columns are found by name, extra
    ones are ignored); `optional`: column -> (type, value when the file has no such column); `check`:
    what is wrong with a row as read (its fields as text) on a line, or None. FigureInputError names the file,
    the column and the line."""
    if not path.is_file():
        raise FigureInputError(f"missing {path} (make it with: {remedy})")
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        try:
            fieldnames = reader.fieldnames or []
            missing = ", ".join(c for c in columns if c not in fieldnames)
            if missing:
                raise FigureInputError(f"malformed {path}: no column(s) {missing} (remake it with: {remedy})")
            wanted = {**columns, **{c: kind for c, (kind, _) in (optional or {}).items() if c in fieldnames}}
            defaults = {c: default for c, (_, default) in (optional or {}).items() if c not in fieldnames}
            for row in reader:
                converted = dict(defaults)
                for c, kind in wanted.items():
                    try:
                        converted[c] = kind(row[c])
                    except (TypeError, ValueError):
                        raise FigureInputError(
                            f"malformed {path}: line {reader.line_num}, column {c}: {row[c]!r} "
                            f"is not {kind.__name__} (remake it with: {remedy})"
                        ) from None
                if check and (problem := check(row, reader.line_num)):
                    raise FigureInputError(
                        f"malformed {path}: line {reader.line_num}: {problem} (remake it with: {remedy})"
                    )
                rows.append(converted)
        except UnicodeDecodeError:
            raise FigureInputError(f"malformed {path}: not UTF-8 text (remake it with: {remedy})") from None
        except csv.Error as e:
            raise FigureInputError(
                f"malformed {path}: line {reader.line_num}: not CSV ({e}) (remake it with: {remedy})"
            ) from None
    if not rows:
        raise FigureInputError(f"malformed {path}: no data rows (remake it with: {remedy})")
    return rows


def save(fig: Figure, figures_dir: Path, name: str) -> Path:
    """Write `fig` as name.png and name.pdf (FORMATS) into figures_dir, close it; the PNG's path."""
    for fmt in FORMATS:  # no creation date in the PDF: the same results give the same bytes
        fig.savefig(figures_dir / f"{name}.{fmt}", dpi=DPI, metadata={"CreationDate": None} if fmt == "pdf" else None)
    pyplot().close(fig)
    return figures_dir / f"{name}.{FORMATS[0]}"


def fig_ber_per(results_dir: Path, figures_dir: Path) -> Path:
    """BER (top) and PER (bottom) against Es/N0, one column per fading model."""
    plt = pyplot()
    path = results_dir / "channel_ber_per.csv"
    rows = read_csv(
        path,
        {
            "snr_db": float,
            "modulation": str,
            "fading": str,
            "nakagami_m": float,
            "bits_per_packet": int,
            "ber": float,
            "ber_mc": float,
            "per_fast": float,
            "per_block": float,
            "per_block_mc": float,
            "mc_packets": int,
        },
        remedy=f"python -m layersplit.channel --table {path}",
    )
    fadings = [f for f in FADING_ORDER if any(r["fading"] == f for r in rows)]
    modulations = [m for m in MODULATION_COLORS if any(r["modulation"] == m for r in rows)]
    fig, axes = plt.subplots(
        2, len(fadings), figsize=(4.2 * len(fadings), 7.5), sharex=True, sharey="row", squeeze=False
    )
    for col, fading in enumerate(fadings):
        m_values = {r["nakagami_m"] for r in rows if r["fading"] == fading}
        axes[0, col].set_title({"awgn": "AWGN", "rayleigh": "Rayleigh"}.get(fading, f"Nakagami, m = {min(m_values):g}"))
        for modulation in modulations:
            points = sorted(
                (r for r in rows if r["fading"] == fading and r["modulation"] == modulation), key=lambda r: r["snr_db"]
            )
            snr = [r["snr_db"] for r in points]
            color = MODULATION_COLORS[modulation]
            n_packets = [r["mc_packets"] for r in points]
            n_bits = [r["mc_packets"] * r["bits_per_packet"] for r in points]
            for ax, closed, mc, trials in (
                (axes[0, col], "ber", "ber_mc", n_bits),
                (axes[1, col], "per_block", "per_block_mc", n_packets),
            ):
                ax.plot(snr, [r[closed] for r in points], color=color, label=MODULATION_LABELS[modulation])
                mc_values = [r[mc] if r[mc] * n >= MIN_MC_EVENTS else math.nan for r, n in zip(points, trials)]
                ax.plot(snr, mc_values, "o", color=color, ms=3.5, mfc="none")
            if fading != "awgn":  # independent bit errors: what plugging the mean BER in would give
                axes[1, col].plot(snr, [r["per_fast"] for r in points], "--", color=color, lw=0.9, alpha=0.6)
    n_bits = rows[0]["bits_per_packet"]
    axes[0, 0].set_ylabel("bit error rate")
    axes[1, 0].set_ylabel(f"packet error rate (L = {n_bits} bit)")
    for ax in axes.flat:
        ax.set_yscale("log")
        ax.set_ylim(ERROR_RATE_FLOOR, 1.5)
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("average received SNR per symbol, Es/N0 (dB)")
    style = [
        plt.Line2D([], [], color="k", label="closed form"),
        plt.Line2D([], [], color="k", marker="o", ls="", mfc="none", label=f"Monte Carlo (>= {MIN_MC_EVENTS} errors)"),
        plt.Line2D([], [], color="k", ls="--", lw=0.9, alpha=0.6, label="PER, independent bit errors"),
    ]
    handles, _ = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles=handles + style, loc="lower center", ncol=len(modulations) + len(style), frameon=False)
    fig.suptitle("Uplink bit and packet error rates (Gray mapping, coherent detection; PER: one fade per packet)")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save(fig, figures_dir, "ber_per")


# what a figure of quality against the condition reads
SWEEP_COLUMNS = ("model", "tokens", "split", "link", "snr_db", "dropout", "draw", "ppl", "token_accuracy")
SNR_LINK_COLUMNS = ("modulation", "fading", "bits_per_element", "elements_per_packet", "header_bits")  # for its title
SNR_SWEEP_COLUMNS = SWEEP_COLUMNS[:7] + SNR_LINK_COLUMNS + SWEEP_COLUMNS[7:]  # the order names the first bad column


def read_sweep(path: Path, names: tuple[str, ...], remedy: str) -> list[dict]:
    """A sweep results file's rows (read_csv) with the columns `names` and what pooling needs, typed as
    schema.sweep_columns says, each valid by the rule every reader of sweep rows follows (schema.RowCheck: an
    impossible value or a row given twice is refused, naming its line), with each row's window scores from the
    windows file beside it (schema.attach_windows), so that the intervals take the window as their unit."""
    columns, optional = schema.sweep_columns(*names)
    rows = read_csv(path, columns, remedy, optional, check=schema.RowCheck())
    try:
        return schema.attach_windows(rows, schema.read_windows(schema.windows_path(path)))
    except schema.WindowsFileError as e:
        raise FigureInputError(f"{e} (remake it with: {remedy})") from None


def _pooled_interval(rows: list[dict], column: str) -> tuple[float, float, float]:
    """One cell's draws pooled (cells.pool): the value of `column` (ppl or token_accuracy) and its
    95% interval, over windows (over draws where there is one window; nan for a single sample)."""
    from layersplit import cells  # pooling of sweep cells with intervals (scipy)

    pooled = cells.pool(rows)
    if column == "ppl":
        return pooled["ppl"], pooled["ppl_low"], pooled["ppl_high"]
    value, half = pooled["token_accuracy"], pooled["accuracy_ci95"]
    return value, value - half, value + half


def _snr_of(path: Path, row: dict, remedy: str) -> float:
    """Es/N0 of a sweep row: a number for physical links, nan for the direct-p link."""
    if schema.is_original_link(row):
        return math.nan
    try:
        return float(row["snr_db"])
    except ValueError:
        raise FigureInputError(
            f"malformed {path}: column snr_db: {row['snr_db']!r} is not a number for link "
            f"{row['link']} (remake it with: {remedy})"
        ) from None


def fig_sweep(results_dir: Path, figures_dir: Path) -> Path:
    """Perplexity (log) and token accuracy against the split, one curve per channel condition:
    pooled over noise draws (perplexity: exp of the mean NLL), shaded over the 95% interval over
    windows (cells.pool: the draws of a window share its text)."""
    plt = pyplot()
    path = results_dir / SWEEP_FILE
    remedy = SWEEP_COMMAND.format(path=path)
    rows = read_sweep(path, SWEEP_COLUMNS, remedy)
    rows = [r for r in rows if schema.is_unprotected(r)]  # without the protected path (--protects)
    for r in rows:
        r["snr"] = _snr_of(path, r, remedy)
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
            stats = [_pooled_interval([r for r in cell if r["split"] == s], column) for s in splits]
            ax.plot(splits, [m for m, _, _ in stats], lw=1.4, **style)
            low, high = _band(stats, column)
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


def _band(stats, column: str) -> tuple[list[float], list[float]]:
    """The interval's edges; an accuracy's t interval can leave [0, 1] with few samples: clip it there."""
    low, high = [lo for _, lo, _ in stats], [hi for _, _, hi in stats]
    if column == "token_accuracy":
        low, high = [max(v, 0.0) for v in low], [min(v, 1.0) for v in high]
    return low, high


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
        {p for p in results_dir.glob(SNR_FILE.format(modulation="*")) if not p.name.endswith("_cells.csv")} - set(paths)
    )  # not the sweeps' cell tables
    sweeps: dict[str, list[dict]] = {}
    for path in paths:
        remedy = SNR_COMMAND.format(modulation=path.stem.removeprefix("sweep_snr_"), path=path)
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
            r["snr"] = _snr_of(path, r, remedy)
        sweeps[modulation] = rows
    return sweeps


def snr_curves(rows: list[dict], split: int, column: str) -> tuple[list[float], list[tuple[float, float, float]]]:
    """Ascending SNRs and (pooled, 95% low, high) of `column` at each, at one split.

    The interval is over windows, or over draws where the sweep has one window."""
    cell = [r for r in rows if schema.is_physical(r) and r["split"] == split]
    snrs = sorted({r["snr"] for r in cell})
    return snrs, [_pooled_interval([r for r in cell if r["snr"] == s], column) for s in snrs]


def clean_value(sweeps: dict[str, list[dict]], split: int, column: str) -> float:
    """The clean reference at a split (the same rows in every file that has it: the first file's)."""
    for rows in sweeps.values():
        clean = [r for r in rows if schema.is_clean(r) and r["split"] == split]
        if clean:
            return _pooled_interval(clean, column)[0]
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
                low, high = _band(stats, column)
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


def fig_latency(results_dir: Path, figures_dir: Path) -> Path:
    """Stacked UE compute, air time and edge compute against the split: one row per (model, phase), one
    column per Es/N0; the best split of each panel in its title."""
    plt = pyplot()
    path = results_dir / LATENCY_FILE
    remedy = f"python -m layersplit.channel --latency-table {path}"
    rows = read_csv(
        path,
        {
            "model": str,
            "phase": str,
            "tokens": int,
            "snr_db": float,
            "ue_compute_s": float,
            "tx_s": float,
            "edge_compute_s": float,
            "modulation": str,
            "fading": str,
            "bandwidth_hz": float,
            "ue_flops": float,
            "edge_flops": float,
        },
        remedy=remedy,
        optional={"split": (int, None), "layers_on_ue": (int, None)},
    )
    for r in rows:  # older tables count the layers on the UE instead
        if r["split"] is None:
            if r["layers_on_ue"] is None:
                raise FigureInputError(
                    f"malformed {path}: no column split (nor layers_on_ue) (remake it with: {remedy})"
                )
            r["split"] = r["layers_on_ue"] - 1
    models = list(dict.fromkeys(r["model"] for r in rows))
    phases = sorted({r["phase"] for r in rows}, key=lambda p: (list(PHASE_LABELS) + [p]).index(p))
    panel_rows = [(m, p) for m in models for p in phases if any(r["model"] == m and r["phase"] == p for r in rows)]
    snrs = sorted({r["snr_db"] for r in rows})
    fig, axes = plt.subplots(
        len(panel_rows), len(snrs), figsize=(4.4 * len(snrs), 2.9 * len(panel_rows) + 0.8), sharey="row", squeeze=False
    )
    for (model, phase), ax_row in zip(panel_rows, axes):
        for snr, ax in zip(snrs, ax_row):
            points = sorted(
                (r for r in rows if r["model"] == model and r["phase"] == phase and r["snr_db"] == snr),
                key=lambda r: r["split"],
            )
            splits = [r["split"] for r in points]
            bottom = [0.0] * len(points)
            for column, (label, color) in LATENCY_COMPONENTS.items():
                heights = [1e3 * r[column] for r in points]
                ax.bar(splits, heights, bottom=bottom, width=0.85, color=color, label=label)
                bottom = [b + h for b, h in zip(bottom, heights)]
            what = (
                (
                    f"prefill of {points[0]['tokens']} tokens"
                    if phase == "prefill"
                    else f"{PHASE_LABELS.get(phase, phase)} (context {points[0]['tokens']})"
                )
                if points
                else phase
            )
            title = f"{MODEL_LABELS.get(model, model)}, {what}, {snr:g} dB"
            if points:
                best = min(range(len(points)), key=bottom.__getitem__)
                ax.plot(splits[best], bottom[best], "v", color="k", ms=6, zorder=3)
                title += f"\nfastest: {on_ue(splits[best])}, {bottom[best]:.3g} ms"
            ax.set_title(title, fontsize=9)
            ax.grid(True, axis="y", alpha=0.3)
        ax_row[0].set_ylabel("latency (ms)")
    for ax in axes[-1]:
        ax.set_xlabel(SPLIT_AXIS)
    handles, _ = axes[0, 0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color="k", marker="v", ls="", ms=6, label="fastest split"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    r0 = rows[0]
    fig.suptitle(
        f"Latency of one forward pass, UE then uplink then edge: UE at {r0['ue_flops'] / 1e12:g} TFLOP/s, "
        f"edge at {r0['edge_flops'] / 1e12:g} TFLOP/s;\n"
        f"uplink {MODULATION_LABELS.get(r0['modulation'], r0['modulation'])}"
        f" over {FADING_LABELS.get(r0['fading'], r0['fading'])}, {r0['bandwidth_hz'] / 1e6:g} MHz "
        "at the ergodic capacity, fp16 activations in packets",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return save(fig, figures_dir, "latency")


# --- the surrogate and the RL ----------------------------------------------------------------------
RL_ALGOS = {"ppo": ("PPO", "C0"), "a2c": ("A2C", "C1"), "dqn": ("DQN", "C2")}  # colour per algorithm
BASELINE_STYLES = {
    "optimum": ("exact optimum", "k", "-"),
    "greedy": ("greedy one-step", "0.4", "--"),
    "random": ("random", "0.6", ":"),
    "fixed": (f"fixed {on_ue(REFERENCE_SPLIT)}", "C3", "-."),
    "best-static": ("best static split (chosen on training starts)", "C4", "-."),
    "best-static-per-start": ("best static split per start split (ignores p)", "C5", ":"),
}
TRAIN_COMMAND = "python train_rsm.py train --seeds 0,1,2 --algo {algo}"
FIT_COMMAND = "python train_rsm.py fit"


def _flag(text: str) -> bool:
    if text not in ("True", "False"):
        raise ValueError(text)
    return text == "True"


def read_json(path: Path, remedy: str, *keys: str) -> dict:
    """A JSON result file; FigureInputError names it when missing, unreadable or without `keys`."""
    if not path.is_file():
        raise FigureInputError(f"missing {path} (make it with: {remedy})")
    try:
        data = json.loads(path.read_text())
        for key in keys:
            node = data
            for part in key.split("."):
                node = node[part]
    except (ValueError, KeyError, TypeError) as e:
        raise FigureInputError(f"malformed {path}: {type(e).__name__} {e} (remake it with: {remedy})") from None
    return data


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


PROTECT_SNR_FILE = (
    "sweep_protect_snr_smollm2-135m.csv"  # erasure link: split x Es/N0 x K (the Makefile's PROTECT_SNR_ARGS)
)
PROTECT_P_FILE = "sweep_protect_p_smollm2-135m.csv"  # the original's link: split x p x K (PROTECT_P_ARGS)
PROTECT_COMMAND = "make reproduce, or python add_noise.py --sweep <the Makefile's {args}> --output {path}"
PROTECT_SPLITS = (1, 4, 12, 24)  # the splits drawn in full; the right-hand panels show every split at one condition
PROTECT_AT = {"snr": 15.0, "p": 0.1}  # that condition: Es/N0 (dB) and p, where protection is neither idle nor hopeless


def read_protect_sweep(path: Path, args: str) -> list[dict]:
    columns = ("model", "tokens", "split", "link", "snr_db", "dropout", "protect", "draw", "ppl", "token_accuracy")
    rows = read_sweep(path, columns, PROTECT_COMMAND.format(args=args, path=path))
    rows = [r for r in rows if schema.withholds_nothing(r)]
    for r in rows:
        r["x"] = (
            _snr_of(path, r, PROTECT_COMMAND.format(args=args, path=path)) if schema.is_physical(r) else r["dropout"]
        )
    return rows


def protect_curves(rows: list[dict], split: int, k: int) -> tuple[list[float], list[tuple[float, float, float]]]:
    """Ascending condition values (Es/N0 or p) and the pooled perplexity with its 95% interval, at one
    split and K (the clean row, K = 0 only, is not a condition)."""
    cell = [r for r in rows if r["split"] == split and r["protect"] == k and not (schema.is_clean(r))]
    xs = sorted({r["x"] for r in cell})
    return xs, [_pooled_interval([r for r in cell if r["x"] == x], "ppl") for x in xs]


def fig_protect(results_dir: Path, figures_dir: Path) -> Path:
    """Perplexity against Es/N0 (top) and p (bottom) per protection level K at a few splits, and
    (right) against the split at one condition (PROTECT_AT), per K."""
    plt = pyplot()
    sweeps = {
        "snr": read_protect_sweep(results_dir / PROTECT_SNR_FILE, "PROTECT_SNR_ARGS"),
        "p": read_protect_sweep(results_dir / PROTECT_P_FILE, "PROTECT_P_ARGS"),
    }
    ks = sorted({r["protect"] for rows in sweeps.values() for r in rows})
    colors = {k: plt.get_cmap("viridis")(i / max(1, len(ks) - 1) * 0.9) for i, k in enumerate(ks)}
    fig = plt.figure(figsize=(3.4 * len(PROTECT_SPLITS) + 4.4, 7.8))
    grid = fig.add_gridspec(2, len(PROTECT_SPLITS) + 1, width_ratios=[1.0] * len(PROTECT_SPLITS) + [1.3])
    for row, (kind, rows) in enumerate(sweeps.items()):
        splits = sorted({r["split"] for r in rows})
        clean = {
            s: _pooled_interval([r for r in rows if r["split"] == s and schema.is_clean(r)], "ppl")[0] for s in splits
        }
        first = None
        for col, split in enumerate(PROTECT_SPLITS):
            ax = fig.add_subplot(grid[row, col], sharey=first)
            first = first or ax
            if split not in splits:
                ax.set_axis_off()
                continue
            ax.axhline(clean[split], color="k", ls="--", lw=1)
            ax.axhline(RECOVERY * clean[split], color="k", ls=":", lw=0.9)
            for k in ks:
                xs, stats = protect_curves(rows, split, k)
                ax.plot(xs, [m for m, _, _ in stats], "o-", color=colors[k], lw=1.4, ms=3)
                ax.fill_between(xs, *_band(stats, "ppl"), color=colors[k], alpha=0.15, lw=0)
            ax.set_yscale("log")
            ax.set_title(on_ue(split), fontsize=10)
            ax.set_xlabel("average Es/N0 (dB), erasure link" if kind == "snr" else "p (the original's element loss)")
            ax.grid(True, which="major", alpha=0.3)
            if col:
                ax.tick_params(labelleft=False)
            else:
                ax.set_ylabel("perplexity (log scale)")
        summary = fig.add_subplot(grid[row, -1], sharey=first)
        at = PROTECT_AT[kind]
        summary.plot(splits, [clean[s] for s in splits], "k--", lw=1)
        for k in ks:
            stats = [dict(zip(*protect_curves(rows, s, k))).get(at, (math.nan,) * 3) for s in splits]
            summary.plot(splits, [m for m, _, _ in stats], "o-", color=colors[k], lw=1.4, ms=3)
            summary.fill_between(splits, *_band(stats, "ppl"), color=colors[k], alpha=0.15, lw=0)
        # a cell of few samples can have an interval spanning many decades: the measured values set the scale
        means = [r["ppl"] for r in rows if math.isfinite(r["ppl"])]
        summary.set_ylim(0.8 * min(clean.values()), 10 * max(means))
        summary.set_xlabel(SPLIT_AXIS, fontsize=9)
        summary.set_title(f"every split at {at:g} dB" if kind == "snr" else f"every split at p = {at:g}", fontsize=10)
        summary.grid(True, which="major", alpha=0.3)
    handles = [
        plt.Line2D([], [], color=colors[k], marker="o", ms=3, label=f"K = {k}" + (" (no protection)" if k == 0 else ""))
        for k in ks
    ]
    handles += [
        plt.Line2D([], [], color="k", ls="--", lw=1, label="clean link"),
        plt.Line2D([], [], color="k", ls=":", lw=0.9, label=f"clean + {RECOVERY - 1:.0%}"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)
    scale = "; ".join(
        f"{label}: {rows[0]['tokens']} tokens x {max(r['draw'] for r in rows) + 1} draw(s)"
        for label, rows in (("top", sweeps["snr"]), ("bottom", sweeps["p"]))
    )
    fig.suptitle(
        f"{sweeps['snr'][0]['model']}: each token's K largest-magnitude elements over a protected path (ARQ: "
        f"they always arrive), the rest as before\ntop: erasure link; bottom: the original's link; {scale}; "
        "band: 95% interval over windows (over draws for one window)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save(fig, figures_dir, "protect")


# --- the 5G NR coded link (--link nr, layersplit/nr.py) ---------------------------------------------
NR_BLER_FILE = "nr_bler.csv"  # the TDL table the link reads
NR_BLER_AWGN_FILE = "nr_bler_awgn.csv"  # the same code on AWGN with perfect CSI (the LDPC check), drawn if present
NR_BLER_COMMAND = "python -m layersplit.nr --table {path}"
NR_SNR_FILE = "sweep_nr_snr_smollm2-135m.csv"  # quality against Es/N0 over the NR link (the Makefile's NR_SNR_ARGS)
NR_RELIABLE_FILE = "sweep_nr_reliable_snr_smollm2-135m.csv"  # the same with --mcs-rule reliable, drawn if present
NR_ERASURE_FILE = "sweep_snr_qpsk.csv"  # the uncoded link at the same splits and tokens (SNR_ARGS), beside it
NR_SNR_COMMAND = "make reproduce, or python add_noise.py --sweep --link nr <the Makefile's NR_SNR_ARGS> --output {path}"
LINK_COLORS = {"nr": "C0", "nr_reliable": "C2", "erasure": "C1"}  # the coded and the uncoded link in every NR figure
LINK_LABELS = {
    "nr": "5G NR, MCS for 10% BLER",
    "nr_reliable": "5G NR, MCS for 10% BLER and residual <= 1e-4",
    "erasure": "uncoded QPSK packets (erasure)",
}


def read_bler_table(path: Path) -> list[dict]:
    return read_csv(
        path,
        {
            "mcs": int,
            "tb_size": int,
            "modulation_order": int,
            "code_rate": float,
            "snr_db": float,
            "slots": int,
            "errors": int,
            "bler": float,
            "bler_low": float,
            "bler_high": float,
            "channel": str,
            "receiver": str,
        },
        remedy=NR_BLER_COMMAND.format(path=path),
    )


def fig_nr_bler(results_dir: Path, figures_dir: Path) -> Path:
    """BLER against Es/N0 per MCS with 95% intervals (left: TDL; its AWGN twin dashed when present), and
    the link it makes (right): the MCS link adaptation picks, the first-transmission and residual BLER,
    and the goodput against the uncoded link's rate (bandwidth x ergodic capacity) and Shannon's."""
    import numpy as np

    from layersplit import channel, nr

    plt = pyplot()
    path = results_dir / NR_BLER_FILE
    rows = read_bler_table(path)
    awgn_path = results_dir / NR_BLER_AWGN_FILE
    awgn = read_bler_table(awgn_path) if awgn_path.is_file() else []
    try:
        curves = nr.load_table(path)
    except ValueError as e:
        raise FigureInputError(f"malformed {path}: {e}") from None
    cmap = plt.get_cmap("viridis")
    mcss = sorted(curves)
    fig, (ax, ax_link) = plt.subplots(1, 2, figsize=(14.5, 5.6), gridspec_kw={"width_ratios": [1.25, 1.0]})
    for i, mcs in enumerate(mcss):
        color = cmap(i / max(len(mcss) - 1, 1))
        points = sorted((r for r in rows if r["mcs"] == mcs), key=lambda r: r["snr_db"])
        snr = np.array([r["snr_db"] for r in points])
        bler = np.array([r["bler"] for r in points])
        shown = bler > 0
        ax.errorbar(
            snr[shown],
            bler[shown],
            yerr=[
                bler[shown] - [r["bler_low"] for r, s in zip(points, shown) if s],
                [r["bler_high"] for r, s in zip(points, shown) if s] - bler[shown],
            ],
            fmt="o",
            ms=3,
            color=color,
            capsize=2,
            lw=0.8,
        )
        if (~shown).any():  # no TB lost: the BLER is below the interval's upper end
            ax.plot(snr[~shown], [r["bler_high"] for r, s in zip(points, shown) if not s], "v", ms=4, color=color)
        grid = np.linspace(snr[0], snr[-1], 200)
        ax.plot(
            grid,
            [curves[mcs](g) for g in grid],
            "-",
            color=color,
            lw=1.2,
            label=f"MCS {mcs}: {points[0]['modulation_order']}b, R {points[0]['code_rate']:.2f}, "
            f"TB {points[0]['tb_size']}",
        )
        twin = sorted((r for r in awgn if r["mcs"] == mcs), key=lambda r: r["snr_db"])
        if twin:
            ax.plot(
                [r["snr_db"] for r in twin if r["bler"] > 0],
                [r["bler"] for r in twin if r["bler"] > 0],
                "--",
                color=color,
                lw=0.9,
            )
    ax.set_yscale("log")
    ax.set_ylim(1e-3, 1.3)
    ax.axhline(nr.TARGET_BLER, color="k", ls=":", lw=0.9)
    ax.set_xlabel("average Es/N0 per resource element (dB)")
    ax.set_ylabel("block error rate of a TB (first transmission)")
    r0 = rows[0]
    ax.set_title(
        f"TDL-{nr.TDL_PROFILE} {nr.DELAY_SPREAD_S * 1e9:g} ns, {nr.UE_SPEED_MPS * 3.6:g} km/h, "
        f"{r0['receiver'].upper() if r0['receiver'] == 'ls' else r0['receiver']} receiver (solid; "
        f"points: Monte Carlo with 95% intervals, v: none lost, below)"
        + ("; dashed: AWGN, perfect CSI" if awgn else ""),
        fontsize=9,
    )
    ax.legend(fontsize=6.5, ncol=2, loc="lower left")
    ax.grid(True, which="major", alpha=0.3)
    snrs = np.arange(min(r["snr_db"] for r in rows), 40.01, 0.5)
    points = [nr.operating_point(float(s), table=str(path)) for s in snrs]
    ax_link.plot(snrs, [p.bler for p in points], "-", color="C3", label="first-transmission BLER at the chosen MCS")
    ax_link.plot(
        snrs,
        [max(p.residual, 1e-9) for p in points],
        "-",
        color="C1",
        label=f"residual TB loss after {nr.HARQ_MAX_RETX} HARQ retransmissions",
    )
    ax_link.plot(
        snrs,
        [channel.packet_error_rate(channel.LinkConfig(snr_db=float(s))) for s in snrs],
        ":",
        color="C1",
        label="uncoded link: packet error rate (QPSK, Nakagami m = 2)",
    )
    ax_link.set_yscale("log")
    ax_link.set_ylim(1e-6, 1.5)
    ax_link.set_xlabel("average Es/N0 (dB)")
    ax_link.set_ylabel("loss probability")
    rate = ax_link.twinx()
    rate.plot(
        snrs,
        [p.goodput_bps / 1e6 for p in points],
        "-",
        color="C0",
        lw=1.6,
        label="NR goodput TB bits x (1 - BLER) / slot",
    )
    rate.plot(
        snrs,
        [channel.achievable_rate_bps(channel.LinkConfig(snr_db=float(s))) / 1e6 for s in snrs],
        ":",
        color="C0",
        label="uncoded link's rate: 20 MHz x ergodic capacity",
    )
    rate.set_ylabel("Mbit/s")
    rate.set_ylim(bottom=0)
    for s, p in zip(snrs, points):
        if s % 5 == 0:
            rate.annotate(
                str(p.mcs),
                (s, p.goodput_bps / 1e6),
                textcoords="offset points",
                xytext=(0, 5),
                fontsize=7,
                ha="center",
                color="C0",
            )
    ax_link.set_title(
        f"the link: MCS for {nr.TARGET_BLER:.0%} BLER (numbers on the goodput), "
        f"{nr.NUM_PRBS} PRBs at {nr.SUBCARRIER_SPACING_KHZ} kHz",
        fontsize=9,
    )
    handles = ax_link.get_legend_handles_labels()[0] + rate.get_legend_handles_labels()[0]
    ax_link.legend(handles=handles, fontsize=7, loc="lower left")
    ax_link.grid(True, which="major", alpha=0.3)
    fig.suptitle(
        "5G NR PUSCH from Sionna: LDPC-coded transport blocks (TS 38.214 sizes) on an OFDM grid over a "
        "TR 38.901 TDL channel",
        fontsize=11,
    )
    fig.tight_layout()
    return save(fig, figures_dir, "nr_bler")


def fig_nr_snr(results_dir: Path, figures_dir: Path) -> Path:
    """Perplexity (top) and accuracy (bottom) against Es/N0 over the NR link beside the uncoded erasure
    link at the same splits, with where quality recovers; (right) what each link lost."""
    sweeps = {}
    for key, link, name, remedy in (
        ("nr", "nr", NR_SNR_FILE, NR_SNR_COMMAND),
        ("nr_reliable", "nr", NR_RELIABLE_FILE, NR_SNR_COMMAND + " --mcs-rule reliable"),
        ("erasure", "erasure", NR_ERASURE_FILE, SNR_COMMAND),
    ):
        path = results_dir / name
        if key == "nr_reliable" and not path.is_file():
            continue
        remedy = remedy.format(path=path, modulation="qpsk")
        rows = read_sweep(path, SWEEP_COLUMNS, remedy)
        rows = [
            r
            for r in rows
            if schema.withholds_nothing(r)
            and schema.is_unprotected(r)
            and (r["link"] == link or schema.is_original_link(r))
        ]
        if not any(r["link"] == link for r in rows):
            raise FigureInputError(f"malformed {path}: no {link} rows (remake it with: {remedy})")
        for r in rows:
            r["snr"] = _snr_of(path, r, remedy)
        sweeps[key] = rows
    fig = snr_panels(sweeps, LINK_COLORS, LINK_LABELS, "share of the activation lost (TB after HARQ, or packet)")
    r0 = next(r for r in sweeps["nr"] if r["link"] == "nr")
    fig.suptitle(
        f"{r0['model']}: quality against the uplink SNR, the 5G NR coded link beside the uncoded one "
        f"({r0['tokens']} tokens; band: 95% interval over windows (over draws for one window))",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save(fig, figures_dir, "nr_snr")


FIGURES: dict[str, Callable[[Path, Path], Path]] = {  # name -> figure; --only takes these names
    "ber_per": fig_ber_per,
    "sweep": fig_sweep,
    "snr": fig_snr,
    "latency": fig_latency,
    "rsm_fit": fig_rsm_fit,
    "training": fig_training,
    "policy": fig_policy,
    "cost": fig_cost,
    "protect": fig_protect,
    "nr_bler": fig_nr_bler,
    "nr_snr": fig_nr_snr,
}


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--only", nargs="+", choices=list(FIGURES), help="draw only these figures")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the result files are")
    parser.add_argument(
        "--figures-dir", type=writable_dir, default=str(FIGURES_DIR), help="where to write the figures (PNG and PDF)"
    )
    parser.add_argument(
        "--claims",
        nargs="?",
        const=README,
        type=Path,
        metavar="README",
        help="no figures: write the README's generated tables (layersplit/claims.py) from --results-dir "
        "into README (default: this checkout's)",
    )
    args = parser.parse_args(argv)
    if not args.results_dir.is_dir():
        parser.error(f"--results-dir {args.results_dir} is not a folder (make the results first: make reproduce)")
    if args.claims is not None:
        if not args.claims.is_file():
            parser.error(f"--claims {args.claims}: no such file")
        return cli.run_main("figures.py", lambda: write_claims(args.results_dir, args.claims))
    return cli.run_main(
        "figures.py", lambda: draw(args.only or list(FIGURES), args.results_dir, Path(args.figures_dir))
    )


def write_claims(results_dir: Path, readme: Path) -> int:
    """The README's generated blocks rewritten from the result files (the rest of the README untouched)."""
    from layersplit import claims

    text = readme.read_text()
    held = claims.in_readme(text)
    if not held:
        print(f"figures.py: {readme} holds no generated block (<!-- generated: NAME -->)", file=sys.stderr)
        return 2
    new = claims.blocks(results_dir)
    readme.write_text(claims.update(text, {name: new[name] for name in held}))
    changed = [name for name in held if held[name] != new[name]]
    print(f"{readme}: {len(held)} generated block(s), {len(changed)} rewritten ({', '.join(changed) or 'none'})")
    return 0


def draw(names: list[str], results_dir: Path, figures_dir: Path) -> int:
    """Draw each figure of `names`; 1 when any failed (each named on stderr), else 0."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        try:
            png = FIGURES[name](results_dir, figures_dir)
            print(f"{name}: wrote {png} and {png.with_suffix('.pdf').name}")
        except FigureInputError as e:
            print(f"figures.py: {name}: {e}", file=sys.stderr)
            failed.append(name)
        except Exception:  # a bug in one figure must not stop the others
            traceback.print_exc()
            print(f"figures.py: {name}: failed (traceback above)", file=sys.stderr)
            failed.append(name)
    if failed:
        print(f"figures.py: {len(failed)} figure(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
