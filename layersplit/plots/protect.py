"""The protected path (add_noise.py --protects): perplexity per protection level K against Es/N0 and p
at a few splits, and against the split at one condition (protect)."""

from __future__ import annotations

import math
from pathlib import Path

from layersplit import experiments, schema
from layersplit.cli import on_ue

from .common import RECOVERY, SPLIT_AXIS, band, pooled_interval, pyplot, read_sweep, save, snr_of

PROTECT_SNR_FILE = "sweep_protect_snr_smollm2-135m.csv"  # erasure link: split x Es/N0 x K (sweep_protect_snr)
PROTECT_P_FILE = "sweep_protect_p_smollm2-135m.csv"  # the original's link: split x p x K (sweep_protect_p)
PROTECT_SPLITS = (1, 4, 12, 24)  # the splits drawn in full; the right-hand panels show every split at one condition
PROTECT_AT = {"snr": 15.0, "p": 0.1}  # that condition: Es/N0 (dB) and p, where protection is neither idle nor hopeless


def read_protect_sweep(path: Path, experiment: str) -> list[dict]:
    columns = ("model", "tokens", "split", "link", "snr_db", "dropout", "protect", "draw", "ppl", "token_accuracy")
    remedy = experiments.remedy(experiment)
    rows = read_sweep(path, columns, remedy)
    rows = [r for r in rows if schema.withholds_nothing(r)]
    for r in rows:
        r["x"] = snr_of(path, r, remedy) if schema.is_physical(r) else r["dropout"]
    return rows


def protect_curves(rows: list[dict], split: int, k: int) -> tuple[list[float], list[tuple[float, float, float]]]:
    """Ascending condition values (Es/N0 or p) and the pooled perplexity with its 95% interval, at one
    split and K (the clean row, K = 0 only, is not a condition)."""
    cell = [r for r in rows if r["split"] == split and r["protect"] == k and not (schema.is_clean(r))]
    xs = sorted({r["x"] for r in cell})
    return xs, [pooled_interval([r for r in cell if r["x"] == x], "ppl") for x in xs]


def fig_protect(results_dir: Path, figures_dir: Path) -> Path:
    """Perplexity against Es/N0 (top) and p (bottom) per protection level K at a few splits, and
    (right) against the split at one condition (PROTECT_AT), per K."""
    plt = pyplot()
    sweeps = {
        "snr": read_protect_sweep(results_dir / PROTECT_SNR_FILE, "sweep_protect_snr"),
        "p": read_protect_sweep(results_dir / PROTECT_P_FILE, "sweep_protect_p"),
    }
    ks = sorted({r["protect"] for rows in sweeps.values() for r in rows})
    colors = {k: plt.get_cmap("viridis")(i / max(1, len(ks) - 1) * 0.9) for i, k in enumerate(ks)}
    fig = plt.figure(figsize=(3.4 * len(PROTECT_SPLITS) + 4.4, 7.8))
    grid = fig.add_gridspec(2, len(PROTECT_SPLITS) + 1, width_ratios=[1.0] * len(PROTECT_SPLITS) + [1.3])
    for row, (kind, rows) in enumerate(sweeps.items()):
        splits = sorted({r["split"] for r in rows})
        clean = {
            s: pooled_interval([r for r in rows if r["split"] == s and schema.is_clean(r)], "ppl")[0] for s in splits
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
                ax.fill_between(xs, *band(stats, "ppl"), color=colors[k], alpha=0.15, lw=0)
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
            summary.fill_between(splits, *band(stats, "ppl"), color=colors[k], alpha=0.15, lw=0)
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
