"""The 5G NR coded link (--link nr, layersplit/nr.py): its BLER table and the link it makes (nr_bler),
and quality against Es/N0 over it beside the uncoded link (nr_snr)."""

from __future__ import annotations

from pathlib import Path

from layersplit import experiments, schema

from .common import SWEEP_COLUMNS, FigureInputError, pyplot, read_csv, read_sweep, save, snr_of
from .sweep import snr_panels, snr_remedy

NR_BLER_FILE = "nr_bler.csv"  # the TDL table the link reads
NR_BLER_AWGN_FILE = "nr_bler_awgn.csv"  # the same code on AWGN with perfect CSI (the LDPC check), drawn if present
NR_BLER_COMMAND = "python -m layersplit.nr --table {path}"
NR_SNR_FILE = "sweep_nr_snr_smollm2-135m.csv"  # quality against Es/N0 over the NR link (experiment sweep_nr_snr)
NR_RELIABLE_FILE = "sweep_nr_reliable_snr_smollm2-135m.csv"  # the same with --mcs-rule reliable, drawn if present
NR_ERASURE_FILE = "sweep_snr_qpsk.csv"  # the uncoded link at the same splits and tokens (sweep_snr_qpsk), beside it
NR_SNR_COMMAND = experiments.remedy("sweep_nr_snr")
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

    from layersplit import channel, nr, nr_frame

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
        label=f"NR goodput on {points[0].frame.name}: TB bits x (1 - residual) per transmission, U slots only",
    )
    fdd = [nr.operating_point(float(s), table=str(path), frame_name=nr_frame.FDD) for s in snrs]
    rate.plot(snrs, [p.goodput_bps / 1e6 for p in fdd], "--", color="C0", lw=1.0, label="NR goodput on FDD")
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
    # below the panel: inside it the legend would cover the curves
    ax_link.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
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
        ("nr_reliable", "nr", NR_RELIABLE_FILE, experiments.remedy("sweep_nr_reliable_snr")),
        ("erasure", "erasure", NR_ERASURE_FILE, snr_remedy("qpsk")),
    ):
        path = results_dir / name
        if key == "nr_reliable" and not path.is_file():
            continue
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
            r["snr"] = snr_of(path, r, remedy)
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
