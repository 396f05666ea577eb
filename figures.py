"""Every figure of the project, drawn from result files only (nothing is recomputed here).

    python figures.py                      # all figures into figures/
    python figures.py --only ber_per       # one figure
    python figures.py --results-dir results --figures-dir figures

Figures (add one: write a function (results_dir, figures_dir) -> png path, register it in FIGURES):
    ber_per   results/channel_ber_per.csv (python -m layersplit.channel --table results/channel_ber_per.csv)
              BER and PER against Es/N0 per modulation and fading, closed form vs Monte Carlo.
    sweep     results/sweep_smollm2-135m.csv (python add_noise.py --sweep)
              perplexity and token accuracy against the split layer, one curve per channel condition.

A missing or malformed result file is reported by name; the other figures are still drawn and
the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import traceback
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

RESULTS_DIR = Path("results")  # where the experiment scripts write their CSV/JSON
FIGURES_DIR = Path("figures")  # where the PNGs go
DPI = 150  # readable in the README at ~1000 px width
MODULATION_COLORS = {"bpsk": "C0", "qpsk": "C1", "16qam": "C2", "64qam": "C3"}  # same in every figure
MODULATION_LABELS = {"bpsk": "BPSK", "qpsk": "QPSK", "16qam": "16-QAM", "64qam": "64-QAM"}
FADING_ORDER = ("awgn", "rayleigh", "nakagami")  # columns of the channel figure
ERROR_RATE_FLOOR = 1e-7  # lower y limit of BER/PER plots; Monte Carlo cannot resolve less
MIN_MC_EVENTS = 10  # Monte Carlo points resting on fewer errors (relative error > 30 %) are not drawn
SWEEP_FILE = "sweep_smollm2-135m.csv"  # the default sweep of add_noise.py --sweep


class FigureInputError(Exception):
    """A result file is missing or malformed; the message names it."""


def read_csv(path: Path, columns: dict[str, type], remedy: str) -> list[dict]:
    """Rows of `path` with `columns` converted to their types; FigureInputError names the file."""
    if not path.is_file():
        raise FigureInputError(f"missing {path} (make it with: {remedy})")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise FigureInputError(f"malformed {path}: no column(s) {', '.join(missing)} (remake it with: {remedy})")
        try:
            rows = [{c: kind(row[c]) for c, kind in columns.items()} for row in reader]
        except (TypeError, ValueError) as e:
            raise FigureInputError(f"malformed {path}: {e} (remake it with: {remedy})") from None
    if not rows:
        raise FigureInputError(f"malformed {path}: no data rows (remake it with: {remedy})")
    return rows


def fig_ber_per(results_dir: Path, figures_dir: Path) -> Path:
    """BER (top) and PER (bottom) against Es/N0, one column per fading model."""
    path = results_dir / "channel_ber_per.csv"
    rows = read_csv(
        path,
        {"snr_db": float, "modulation": str, "fading": str, "nakagami_m": float, "bits_per_packet": int,
         "ber": float, "ber_mc": float, "per_fast": float, "per_block": float, "per_block_mc": float,
         "mc_packets": int},
        remedy=f"python -m layersplit.channel --table {path}",
    )
    fadings = [f for f in FADING_ORDER if any(r["fading"] == f for r in rows)]
    modulations = [m for m in MODULATION_COLORS if any(r["modulation"] == m for r in rows)]
    fig, axes = plt.subplots(2, len(fadings), figsize=(4.2 * len(fadings), 7.5), sharex=True, sharey="row",
                             squeeze=False)
    for col, fading in enumerate(fadings):
        m_values = {r["nakagami_m"] for r in rows if r["fading"] == fading}
        axes[0, col].set_title({"awgn": "AWGN", "rayleigh": "Rayleigh"}.get(fading, f"Nakagami, m = {min(m_values):g}"))
        for modulation in modulations:
            points = sorted((r for r in rows if r["fading"] == fading and r["modulation"] == modulation),
                            key=lambda r: r["snr_db"])
            snr = [r["snr_db"] for r in points]
            color = MODULATION_COLORS[modulation]
            n_packets = [r["mc_packets"] for r in points]
            n_bits = [r["mc_packets"] * r["bits_per_packet"] for r in points]
            for ax, closed, mc, trials in ((axes[0, col], "ber", "ber_mc", n_bits),
                                           (axes[1, col], "per_block", "per_block_mc", n_packets)):
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
    style = [plt.Line2D([], [], color="k", label="closed form"),
             plt.Line2D([], [], color="k", marker="o", ls="", mfc="none",
                        label=f"Monte Carlo (>= {MIN_MC_EVENTS} errors)"),
             plt.Line2D([], [], color="k", ls="--", lw=0.9, alpha=0.6, label="PER, independent bit errors")]
    handles, _ = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles=handles + style, loc="lower center", ncol=len(modulations) + len(style), frameon=False)
    fig.suptitle("Uplink bit and packet error rates (Gray mapping, coherent detection; PER: one fade per packet)")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out = figures_dir / "ber_per.png"
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def _pooled_and_range(values: list[float], log: bool) -> tuple[float, float, float]:
    """Mean over draws (of log values when `log`: the pooled perplexity exp(mean NLL)), min, max."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, math.nan
    mean = math.exp(sum(map(math.log, finite)) / len(finite)) if log else sum(finite) / len(finite)
    return mean, min(finite), max(finite)


def fig_sweep(results_dir: Path, figures_dir: Path) -> Path:
    """Perplexity (log) and token accuracy against layers on the UE, one curve per channel condition:
    pooled over noise draws (perplexity: exp of the mean NLL), shaded between the smallest and
    largest draw."""
    path = results_dir / SWEEP_FILE
    rows = read_csv(path, {"model": str, "tokens": int, "split": int, "link": str, "snr_db": str, "dropout": float,
                           "draw": int, "ppl": float, "token_accuracy": float},
                    remedy="python add_noise.py --sweep")
    conditions = sorted({(r["link"] != "dropout", float(r["snr_db"] or "nan") if r["link"] != "dropout" else r["dropout"],
                          r["link"]) for r in rows}, key=lambda c: (c[0], c[1]))
    dropouts = [c for c in conditions if not c[0] and c[1] > 0]
    snrs = [c for c in conditions if c[0]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for physical, value, link in conditions:
        cell = [r for r in rows if r["link"] == link and (
            r["snr_db"] and float(r["snr_db"]) == value if physical else r["dropout"] == value)]
        splits = sorted({r["split"] for r in cell})
        if not physical and value == 0:
            style = {"color": "k", "ls": "--", "label": "clean (p = 0)"}
        elif physical:
            style = {"color": plt.cm.autumn(snrs.index((physical, value, link)) / max(len(snrs), 1)),
                     "marker": "s", "ms": 3, "label": f"{link}, {value:g} dB"}
        else:
            style = {"color": plt.cm.viridis(dropouts.index((physical, value, link)) / max(len(dropouts) - 1, 1)),
                     "marker": "o", "ms": 3, "label": f"p = {value:g}"}
        for ax, column in zip(axes, ("ppl", "token_accuracy")):
            stats = [_pooled_and_range([r[column] for r in cell if r["split"] == s], log=column == "ppl")
                     for s in splits]
            layers_on_ue = [s + 1 for s in splits]
            ax.plot(layers_on_ue, [m for m, _, _ in stats], lw=1.4, **style)
            ax.fill_between(layers_on_ue, [lo for _, lo, _ in stats], [hi for _, _, hi in stats],
                            color=style["color"], alpha=0.15, lw=0)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("perplexity")
    axes[1].set_ylabel("top-1 next-token accuracy")
    for ax in axes:
        ax.set_xlabel("layers on the UE (split after this many decoder layers)")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8, ncol=2, loc="lower right")
    draws = max(r["draw"] for r in rows) + 1
    fig.suptitle(f"{rows[0]['model']}: element loss at the split against its depth "
                 f"({rows[0]['tokens']} tokens, {draws} draw(s) pooled, band: min-max over draws)")
    fig.tight_layout()
    out = figures_dir / "sweep.png"
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


FIGURES: dict[str, Callable[[Path, Path], Path]] = {
    "ber_per": fig_ber_per,
    "sweep": fig_sweep,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw the project's figures from result files.")
    parser.add_argument("--only", nargs="+", choices=list(FIGURES), help="draw only these figures")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the result files are")
    parser.add_argument("--figures-dir", type=Path, default=FIGURES_DIR, help="where to write the PNGs")
    args = parser.parse_args(argv)
    args.figures_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.only or FIGURES:
        try:
            print(f"{name}: wrote {FIGURES[name](args.results_dir, args.figures_dir)}")
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
