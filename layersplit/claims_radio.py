"""The generated tables of the radio pages (docs/nr-link.md), from the committed latency tables: the air
time of a split's activation over the uncoded link, the NR link on FDD and on its TDD frame, with the MCS
and the goodput (claims.py: where each goes)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from .claims_tables import table

UNCODED = "latency_breakdown.csv"  # python -m layersplit.channel --latency-table
NR_TDD = "latency_breakdown_nr.csv"  # python -m layersplit.nr --latency-table (the default frame)
NR_FDD = "latency_breakdown_nr_fdd.csv"  # python -m layersplit.nr --frame FDD --latency-table
SHOWN_SPLIT = 4  # the table's split: 5 layers on the UE (air time does not depend on it)
MODEL_NAMES = {"smollm2-135m": "SmolLM2-135M", "llama2-7b": "Llama-2-7B"}


def _rows(path: Path) -> dict[tuple[str, str, float], dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return {
            (r["model"], r["phase"], float(r["snr_db"])): r for r in csv.DictReader(f) if int(r["split"]) == SHOWN_SPLIT
        }


def _ms(seconds: str) -> str:
    ms = 1e3 * float(seconds)
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def block_nr_latency(results: Path) -> str:
    """Air time per model, phase and Es/N0: uncoded (ideal-coding rate), NR on FDD, NR on its TDD frame."""
    missing = [name for name in (UNCODED, NR_TDD, NR_FDD) if not (results / name).is_file()]
    if missing:
        return f"(no {', '.join(missing)} in {results}: make them with make reproduce)"
    uncoded, tdd, fdd = (_rows(results / name) for name in (UNCODED, NR_TDD, NR_FDD))
    frame = next(iter(tdd.values()))["frame"]
    rows = []
    for key in sorted(tdd, key=lambda k: (list(MODEL_NAMES).index(k[0]), k[1] != "prefill", k[2])):
        model, phase, snr = key
        t, f = tdd[key], fdd[key]
        rows.append(
            [
                MODEL_NAMES.get(model, model),
                f"{phase}, {t['new_tokens']} token{'s' if int(t['new_tokens']) > 1 else ''}",
                f"{snr:g}",
                f"{t['mcs']}",
                _ms(uncoded[key]["tx_s"]),
                _ms(f["tx_s"]),
                _ms(t["tx_s"]),
                f"{float(t['tx_s']) / float(f['tx_s']):.1f}",
                f"{float(f['goodput_bps']) / 1e6:.3g} / {float(t['goodput_bps']) / 1e6:.3g}",
            ]
        )
    header = [
        "model",
        "phase",
        "Es/N0 (dB)",
        "NR MCS",
        "uncoded (ms)",
        "NR, FDD (ms)",
        f"NR, {frame} (ms)",
        f"{frame} / FDD",
        "NR goodput, FDD / TDD (Mbit/s)",
    ]
    return table(header, rows) + f"\n\nAir time of the activation at split {SHOWN_SPLIT}, 16 bits an element."


NR_LINK_SNRS = (0.0, 5.0, 10.0, 20.0, 30.0)  # the Es/N0 (dB) of the rate-and-loss table


def block_nr_link(results: Path) -> str:
    """Rate and loss per Es/N0: the uncoded link's packet error rate and rate (20 MHz x ergodic capacity)
    beside the NR link's MCS, BLER, residual loss and goodput on FDD and the default frame, read from the
    committed BLER table."""
    from . import channel, nr, nr_frame

    bler_table = results / "nr_bler.csv"
    if not bler_table.is_file():
        return f"(no nr_bler.csv in {results}: make it with python -m layersplit.nr --table)"
    frame = nr_frame.Frame.named(nr_frame.FRAME).name
    base = channel.LinkConfig()
    curves = nr.load_table(str(bler_table))
    rows = []
    for snr in NR_LINK_SNRS:
        cfg = channel.LinkConfig(snr_db=snr)
        fdd, tdd = (nr.operating_point(snr, table=str(bler_table), frame_name=name) for name in ("FDD", frame))
        rows.append(
            [
                f"{snr:g}",
                f"{channel.packet_error_rate(cfg):.2g}",
                f"{channel.achievable_rate_bps(cfg) / 1e6:.3g}",
                str(fdd.mcs),
                f"{fdd.bler:.2g}",
                f"{fdd.residual:.2g}",
                f"{nr.residual_bound(curves[fdd.mcs], snr):.2g}",
                f"{fdd.goodput_bps / 1e6:.3g}",
                f"{tdd.goodput_bps / 1e6:.3g}",
            ]
        )
    header = [
        "Es/N0 (dB)",
        "uncoded PER",
        "uncoded rate (Mbit/s)",
        "NR MCS",
        "NR BLER, 1st transmission",
        "NR residual after HARQ",
        "its 95% bound from the data",
        "NR goodput, FDD (Mbit/s)",
        f"NR goodput, {frame} (Mbit/s)",
    ]
    return table(header, rows) + (
        f"\n\nUncoded: {base.modulation.upper()} packets of {base.elements_per_packet} elements, {base.fading} fading "
        f"(m = {base.nakagami_m:g}), one fade per packet; "
        f"NR: MCS rule {nr.MCS_RULE!r}, up to {nr.HARQ_MAX_RETX} HARQ retransmissions; goodput = TB bits x "
        "(1 - residual) / (transmissions per TB x slot) x the share of slots that carry uplink. The residual is "
        "read from the BLER curve at the SNR of the combined transmissions, past the last lost TB an "
        "extrapolation; its bound is the upper end of the 95% interval of the nearest measured point at or "
        "below that SNR (what the measurements alone resolve)."
    )


LDPC_TABLE = "nr_bler_awgn.csv"  # python -m layersplit.nr --table ... --channel awgn --receiver perfect
LDPC_TARGET = 0.1  # the BLER at which the check reads each curve


def snr_at(curve, target: float, low: float = -15.0, high: float = 45.0, step: float = 0.01) -> float | None:
    """The lowest Es/N0 (dB, to `step`) at which a BLER curve reaches `target`; None if it never does."""
    snr = low
    while snr <= high:
        if curve(snr) <= target:
            return round(snr, 2)
        snr += step
    return None


def constellation_limit_db(bits_per_symbol: int, code_rate: float) -> float:
    """Where the Gray-mapped QAM's BICM capacity (channel.bicm_capacity) equals bits_per_symbol x code_rate."""
    from scipy.optimize import brentq

    from . import channel

    return float(brentq(lambda s: channel.bicm_capacity(bits_per_symbol, s) - bits_per_symbol * code_rate, -20, 60))


def block_nr_ldpc(results: Path) -> str:
    """The AWGN check of the LDPC link: each MCS's 10% BLER point against Shannon's limit of its rate and the
    limit of its constellation (BICM), and the gaps to each."""
    import math

    from . import nr

    path = results / LDPC_TABLE
    if not path.is_file():
        return f"(no {LDPC_TABLE} in {results}: make it with python -m layersplit.nr --table --channel awgn)"
    rows = []
    for mcs, curve in sorted(nr.load_table(str(path)).items()):
        at = snr_at(curve, LDPC_TARGET)
        rate = curve.modulation_order * curve.code_rate
        shannon = 10 * math.log10(2**rate - 1)
        limit = constellation_limit_db(curve.modulation_order, curve.code_rate)
        rows.append(
            [
                str(mcs),
                f"{curve.modulation_order}, {curve.code_rate:.3f}",
                "-" if at is None else f"{at:.1f}",
                f"{shannon:.1f}",
                f"{limit:.1f}",
                f"{limit - shannon:.1f}",
                "-" if at is None else f"{at - limit:.1f}",
            ]
        )
    header = [
        "MCS",
        "Qm, code rate",
        f"{LDPC_TARGET:.0%} BLER at (dB)",
        "Shannon limit (dB)",
        "constellation limit (dB)",
        "constellation − Shannon",
        "code − constellation",
    ]
    return table(header, rows) + (
        "\n\nShannon limit: 2^(Qm R) − 1; constellation limit: where the Gray-mapped QAM's BICM capacity "
        "(`channel.bicm_capacity`) equals Qm R; the curves are resolved to the table's SNR step."
    )


ARQ_TABLE = "protect_arq.csv"  # python -m layersplit.channel --arq-table
ARQ_SHOWN = {"model": "smollm2-135m", "ks": (4, 64), "snrs": (5.0, 10.0, 15.0, 20.0, 30.0)}  # the rows shown
DESIGN_NAMES = {
    "counted": "counted: 1 / (1 − PER) tries",
    "arq_independent": "ARQ, a new fade each try",
    "arq_block": "ARQ in a block fade",
    "nr_lowest": "NR, lowest MCS",
    "nr_reliable": "NR, reliable MCS (the default)",
}


def block_protect_arq(results: Path) -> str:
    """The protected path of SmolLM2's prefill per Es/N0 and design: mean and 95th-percentile latency,
    all delivered by the deadline, and the share of packets (TBs) lost."""
    path = results / ARQ_TABLE
    if not path.is_file():
        return f"(no {ARQ_TABLE} in {results}: make it with python -m layersplit.channel --arq-table)"
    with path.open(newline="", encoding="utf-8") as f:
        found = [r for r in csv.DictReader(f) if r["model"] == ARQ_SHOWN["model"]]
    by = {(float(r["snr_db"]), int(r["protect"]), r["design"]): r for r in found}
    rows = []
    for snr in ARQ_SHOWN["snrs"]:
        for design, label in DESIGN_NAMES.items():
            cells = []
            for k in ARQ_SHOWN["ks"]:
                r = by[snr, k, design]
                mcs = f" (MCS {r['mcs']})" if r["mcs"] and k == ARQ_SHOWN["ks"][0] else ""
                cells.append(
                    f"{_ms(r['mean_s'])} / {_ms(r['p95_s'])}{mcs}, {float(r['delivered_by_deadline']):.2g}, "
                    f"{float(r['lost_share']):.2g}"
                )
            per = float(by[snr, ARQ_SHOWN["ks"][0], design]["packet_error_rate"])
            rows.append([f"{snr:g} ({per:.2g})", label, *cells])
    any_row = found[0]
    header = ["Es/N0 (PER)", "design"] + [
        f"K = {k}: mean / p95 (ms), P(all by {1e3 * float(any_row['deadline_s']):g} ms), lost" for k in ARQ_SHOWN["ks"]
    ]
    return table(header, rows) + (
        f"\n\n{MODEL_NAMES[ARQ_SHOWN['model']]}, prefill of {any_row['tokens']} tokens; ARQ: at most "
        f"{next(r['max_tries'] for r in found if r['design'] == 'arq_block')} tries, "
        f"{1e3 * float(any_row['rtt_s']):g} ms a round trip; NR: FDD, up to 4 transmissions per TB; "
        "lost: the share of protected packets (TBs) that never arrive."
    )


PROTECT_COST_TABLE = "protect_cost.csv"  # python -m layersplit.channel --protect-table
PROTECT_COST_KS = (1, 4, 16, 64)  # the K shown


def block_protect_cost(results: Path) -> str:
    """What the protected path in use adds to a prefill's air time per model, Es/N0 and K, and its loss."""
    path = results / PROTECT_COST_TABLE
    if not path.is_file():
        return f"(no {PROTECT_COST_TABLE} in {results}: make it with python -m layersplit.channel --protect-table)"
    with path.open(newline="", encoding="utf-8") as f:
        found = [r for r in csv.DictReader(f) if r["phase"] == "prefill"]
    by = {(r["model"], float(r["snr_db"]), int(r["protect"])): r for r in found}
    rows = []
    for model in MODEL_NAMES:
        for snr in sorted({s for m, s, _ in by if m == model}):
            first = by[model, snr, PROTECT_COST_KS[0]]
            shares = [f"+{100 * float(by[model, snr, k]['extra_time_share']):.3g}%" for k in PROTECT_COST_KS]
            rows.append(
                [
                    f"{MODEL_NAMES[model]} (d = {first['hidden_size']}, {first['pair_bits']} bits a pair)",
                    f"{snr:g} ({float(first['packet_error_rate']):.2g})",
                    *shares,
                    f"{float(first['unit_loss']):.2g} (≤ {float(first['unit_loss_bound']):.2g})",
                ]
            )
    header = ["model", "Es/N0 (PER)", *(f"K = {k}" for k in PROTECT_COST_KS), "packets (TBs) lost (the data's bound)"]
    first = found[0]
    return table(header, rows) + (
        f"\n\nThe protected path in its `{first['protect_path']}` design: its mean latency over the ordinary "
        f"path's air time, prefill of {first['new_tokens']} tokens ({first['modulation']}, {first['fading']}); "
        "lost: the share of its packets (TBs) that never arrive, their pairs then lost with them; in the coded "
        "design the NR link's residual after HARQ, extrapolated past the BLER table's last lost TB, beside the "
        "upper end of the 95% interval of the measured point it rests on (`nr.residual_bound`)."
    )


BURST_PAIRS = "burst_pairs.csv"  # python bench/burst.py
NR_BURST_PAIRS = "nr_burst_pairs.csv"  # python bench/burst.py --pair nr


def block_burst(results: Path, name: str = BURST_PAIRS, command: str = "python bench/burst.py") -> str:
    """Burst against independent losses at the same mean loss: perplexity of each, and the paired NLL difference."""
    path = results / name
    if not path.is_file():
        return f"(no {name} in {results}: make it with {command})"
    with path.open(newline="", encoding="utf-8") as f:
        found = list(csv.DictReader(f))
    snrs = sorted({float(r["snr_db"]) for r in found})
    by = {(int(r["split"]), float(r["snr_db"])): r for r in found}
    rows = []
    for split in sorted({int(r["split"]) for r in found}):
        cells = []
        for snr in snrs:
            r = by.get((split, snr))
            cells.append(
                ""
                if r is None
                else f"{float(r['ppl_independent']):.4g} / {float(r['ppl_burst']):.4g}, "
                f"{float(r['nll_difference']):+.2f} ± {float(r['ci95']):.2f}"
                + (" *" if r["significant"] == "True" else "")
            )
        rows.append([str(split), *cells])
    header = ["split"] + [f"{s:g} dB: perplexity independent / burst, NLL burst − independent" for s in snrs]
    return table(header, rows) + (
        f"\n\n{found[0]['windows']} windows of 512 tokens, {found[0]['draws']} draws each; 95% t interval over the "
        "windows (each window's difference averaged over its draws); * the interval excludes 0."
    )


def block_nr_burst(results: Path) -> str:
    """The NR link's burst losses (nr_burst) against its independent TB losses (nr) at the same residual, each
    SNR headed by its MCS, residual TB loss and TBs per coherence interval."""
    from . import nr

    body = block_burst(results, NR_BURST_PAIRS, "python bench/burst.py --pair nr")
    if not (results / NR_BURST_PAIRS).is_file():
        return body
    with (results / NR_BURST_PAIRS).open(newline="", encoding="utf-8") as f:
        snrs = sorted({float(r["snr_db"]) for r in csv.DictReader(f)})
    bler_table = results / "nr_bler.csv"  # the link of these results (its tails beside it)
    points = [nr.operating_point(s, table=str(bler_table) if bler_table.is_file() else None) for s in snrs]
    clean = ""
    sweep = results / NR_PAIR_SWEEP
    if sweep.is_file():
        with sweep.open(newline="", encoding="utf-8") as f:
            found = [r for r in csv.DictReader(f) if r["link"] == "dropout" and float(r["dropout"]) == 0.0]
        if found:
            tokens = sum(int(r["scored_tokens"]) for r in found)
            nll = sum(float(r["nll"]) * int(r["scored_tokens"]) for r in found) / tokens
            clean = f" Clean perplexity on the same windows: {math.exp(nll):.4g}."
    return (
        table(
            ["Es/N0", "MCS", "residual TB loss", "TBs per coherence interval", "TBs per 512-token transfer"],
            [
                [
                    f"{p.snr_db:g} dB",
                    str(p.mcs),
                    f"{p.residual:.2g}",
                    str(p.coherence_tbs),
                    str(p.tbs(512 * NR_BURST_HIDDEN * NR_BURST_BITS)),
                ]
                for p in points
            ],
        )
        + "\n\n"
        + body
        + clean
    )


NR_PAIR_SWEEP = "sweep_nr_pair_smollm2-135m.csv"  # --link nr on nr_burst's grid (bench/burst.py --pair nr)
NR_BURST_HIDDEN, NR_BURST_BITS = 576, 16  # SmolLM2-135M's fp16 activations: the transfers nr_burst_pairs measures


RESIDUAL_READ_SNRS = (0.0, 5.0, 10.0, 15.0, 17.5, 20.0, 22.5, 25.0, 27.5, 30.0, 40.0)  # rows of the residual-read block
RESIDUAL_READ_TOKENS = 512  # the prefill whose air time it quotes (SmolLM2's 576-element fp16 activations)


def block_nr_residual_read(results: Path) -> str:
    """The reliable rule when it reads residuals from the extrapolated curve and when it reads the bound the
    measured points certify: its MCS, the residual and its bound, and a prefill's air time on the default
    frame, from the committed BLER table."""
    from . import compute, nr, nr_frame

    bler_table = results / "nr_bler.csv"
    if not bler_table.is_file():
        return f"(no nr_bler.csv in {results}: make it with python -m layersplit.nr --table)"
    curves, frame = nr.load_table(str(bler_table)), nr_frame.Frame.named(nr_frame.FRAME)
    bits = RESIDUAL_READ_TOKENS * compute.SMOLLM2_135M.hidden_size * 16
    rows = []
    for snr in RESIDUAL_READ_SNRS:
        cells = []
        for read in nr.RESIDUAL_READS:
            curve = nr.choose_mcs(curves, snr, "reliable", residual_read=read)
            point = nr.point_at(curve, snr, nr.HARQ_MAX_RETX, frame)
            cells.append(
                f"{curve.mcs}, {point.residual:.2g} (bound {nr.residual_bound(curve, snr):.2g}), "
                f"{_ms(str(point.air_s(point.tbs(bits))))} ms"
            )
        rows.append([f"{snr:g}", *cells])
    header = ["Es/N0 (dB)"] + [f"reliable rule, {r}: MCS, residual (its bound), air time" for r in nr.RESIDUAL_READS]
    return table(header, rows) + (
        f"\n\nThe `reliable` rule (residual after HARQ at most {nr.RESIDUAL_TARGET:g}) on the committed BLER table; "
        f"air time: SmolLM2's {RESIDUAL_READ_TOKENS}-token prefill in fp16 on the {frame.name} frame."
    )


NR_TAILS = "nr_bler_tails.csv"  # python -m layersplit.nr --tails results/nr_bler_tails.csv


def block_nr_tails(results: Path) -> str:
    """The table's curve where HARQ's residuals are read, against the same points measured deeper (the tails
    file): the lookup (an extrapolation past each curve's last lost TB), the bound the table's points certify,
    and the deep measurement with its 95% interval; the verdict says where the lookup lies in that interval."""
    from . import nr

    tails, bler_table = results / NR_TAILS, results / "nr_bler.csv"
    if not (tails.is_file() and bler_table.is_file()):
        return f"(no {NR_TAILS} or nr_bler.csv in {results}: python -m layersplit.nr --tails {results}/{NR_TAILS})"
    curves, pooled = nr.load_table(str(bler_table), tails=None), nr.load_table(str(bler_table), tails=str(tails))
    gain = 10.0 * math.log10(nr.HARQ_MAX_RETX + 1)  # chase combining of every transmission
    rows = []
    for (mcs, snr), (errors, slots) in sorted(nr.point_counts(nr.read_table(tails, repeats=True)).items()):
        (low, high), lookup = nr.clopper_pearson(errors, slots), curves[mcs](snr)
        verdict = "inside" if low <= lookup <= high else "above: pessimistic" if lookup > high else "below: optimistic"
        rows.append(
            [
                str(mcs),
                f"{snr:g} dB",
                f"{snr - gain:.1f} dB",
                f"{lookup:.2g}",
                f"{curves[mcs].upper_bound(snr):.2g}",
                f"{errors} / {slots:,}",
                f"{errors / slots:.2g} [{low:.2g}, {high:.2g}]",
                verdict,
                f"{pooled[mcs](snr):.2g}",
            ]
        )
    header = [
        "MCS",
        "Es/N0",
        "residual of the point at",
        "table's lookup",
        "table's bound",
        "deep: lost / slots",
        "deep BLER [95%]",
        "lookup against the deep interval",
        "the link's curve there (table and tails)",
    ]
    return table(header, rows) + (
        f"\n\nA residual after {nr.HARQ_MAX_RETX + 1} transmissions is the curve at the SNR + {gain:.2f} dB; the "
        "deep points draw from seeds of their own (independent of the table's), 95% Clopper-Pearson intervals; "
        "the link pools them with the table's points (the file beside the table: `nr.tails_of`)."
    )


NR_SWEEPS = ("sweep_nr_snr_smollm2-135m.csv", "sweep_nr_reliable_snr_smollm2-135m.csv")  # target, reliable rule
RULE_SPLIT = 4  # the split whose air time the rule comparison quotes


def block_nr_rule_cost(results: Path) -> str:
    """What the reliable MCS rule costs in air time over the target rule: the 512-token prefill's tx_s at
    RULE_SPLIT in the two NR sweeps, per Es/N0 where they differ."""
    missing = [name for name in NR_SWEEPS if not (results / name).is_file()]
    if missing:
        return f"(no {', '.join(missing)} in {results}: make reproduce)"
    tx = []
    for name in NR_SWEEPS:
        with (results / name).open(newline="", encoding="utf-8") as f:
            tx.append(
                {
                    float(r["snr_db"]): float(r["tx_s"])
                    for r in csv.DictReader(f)
                    if r["snr_db"] and int(r["split"]) == RULE_SPLIT
                }
            )
    target, reliable = tx
    rows = [
        [f"{s:g}", _ms(str(target[s])), _ms(str(reliable[s])), f"{reliable[s] / target[s]:.2f}"]
        for s in sorted(target.keys() & reliable.keys())
        if reliable[s] != target[s]
    ]
    same = [f"{s:g}" for s in sorted(target.keys() & reliable.keys()) if reliable[s] == target[s]]
    return table(["Es/N0 (dB)", "target rule (ms)", "reliable rule (ms)", "reliable / target"], rows) + (
        f"\n\nThe prefill's air time at split {RULE_SPLIT} in the two NR sweeps; equal at {', '.join(same)} dB."
    )


PROTECT_SNR_CELLS = "sweep_protect_snr_smollm2-135m_cells.csv"  # the protected path against the SNR
PROTECT_P_CELLS = "sweep_protect_p_smollm2-135m_cells.csv"  # ... and against the original's p
PROTECT_TABLE_SPLITS = (1, 4, 12, 24)  # the rows the docs show (the sweeps hold 13 splits)
PROTECT_TABLE_CONDITIONS = {"snr_db": (10.0, 15.0), "dropout": (0.1, 0.3)}  # Es/N0 (dB), p


def _ppl(x: float) -> str:
    return f"{x:,.0f}" if 1e3 <= x < 1e6 else f"{x:.2g}" if x >= 1e6 else f"{x:.3g}"


def block_protect_quality_snr(results: Path) -> str:
    """Perplexity [95% interval] and top-1 accuracy with K protected elements per token at a few splits against
    the SNR (the erasure link), from the protect SNR sweep's cells."""
    return _protect_quality(results, PROTECT_SNR_CELLS, "snr_db")


def block_protect_quality_p(results: Path) -> str:
    """The same against the original's p, from the protect p sweep's cells."""
    return _protect_quality(results, PROTECT_P_CELLS, "dropout")


def _protect_quality(results: Path, name: str, column: str) -> str:
    path = results / name
    if not path.is_file():
        return f"(no {name} in {results}: make reproduce)"
    with path.open(newline="", encoding="utf-8") as f:
        found = list(csv.DictReader(f))
    clean = next(r for r in found if r["link"] == "dropout" and float(r["dropout"]) == 0.0)
    ks = sorted({int(r["protect"]) for r in found})
    cell = {
        (int(r["split"]), float(r[column]), int(r["protect"])): r
        for r in found
        if r[column] and not (column == "dropout" and r["link"] != "dropout")
    }
    rows = []
    for value in PROTECT_TABLE_CONDITIONS[column]:
        for split in PROTECT_TABLE_SPLITS:
            some = cell[split, value, 0]
            label = f"{value:g} dB (PER {float(some['dropout']):.2g})" if column == "snr_db" else f"{value:g}"
            rows.append(
                [str(split), label]
                + [
                    f"{_ppl(float(r['ppl']))} [{_ppl(float(r['ppl_low']))}, {_ppl(float(r['ppl_high']))}], "
                    f"{float(r['token_accuracy']):.3f}"
                    for r in (cell[split, value, k] for k in ks)
                ]
            )
    unit = sorted({r["interval_unit"] for r in found if r[column] and int(r["protect"]) > 0})
    return (
        table(["split", "Es/N0" if column == "snr_db" else "p"] + [f"K = {k}" for k in ks], rows)
        + f"\n\n`results/{name}`: perplexity [95% interval, unit: {', '.join(unit)}], top-1 accuracy; "
        f"clean perplexity {float(clean['ppl']):.4g}, accuracy {float(clean['token_accuracy']):.3f}."
    )
