"""The link's own figures: bit and packet error rates (ber_per) and the latency of a forward pass split
between the UE, the uplink and the edge (latency); their files come from python -m layersplit.channel."""

from __future__ import annotations

import math
from pathlib import Path

from layersplit.cli import on_ue

from .common import (
    ERROR_RATE_FLOOR,
    FADING_LABELS,
    MODULATION_COLORS,
    MODULATION_LABELS,
    SPLIT_AXIS,
    FigureInputError,
    pyplot,
    read_csv,
    save,
)

FADING_ORDER = ("awgn", "rayleigh", "nakagami")  # columns of the channel figure
MIN_MC_EVENTS = 10  # Monte Carlo points resting on fewer errors (relative error > 30 %) are not drawn
# --- latency: seconds per component, stacked; colours from ColorBrewer Dark2 (apart from the modulations')
LATENCY_FILE = "latency_breakdown.csv"
LATENCY_COMPONENTS = {
    "ue_compute_s": ("UE compute", "#7570b3"),
    "tx_s": ("transmission (uplink)", "#d95f02"),
    "edge_compute_s": ("edge compute (incl. LM head)", "#1b9e77"),
}  # bottom to top
MODEL_LABELS = {"smollm2-135m": "SmolLM2-135M", "llama2-7b": "Llama-2-7B"}
PHASE_LABELS = {"prefill": "prefill", "decode": "one decoding step"}


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
