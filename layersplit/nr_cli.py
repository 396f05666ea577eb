"""The 5G NR link's command line (python -m layersplit.nr; nr.py's `python -m` entry runs main here).

One run does one of: the link at one SNR (MCS, BLER, residual loss, goodput, air time; nr.py), the BLER
table's Monte Carlo (--table), its check against fresh simulations (--check) or its points measured deeper
where HARQ's residuals are read (--tails; nr_sim.py), or the latency table over the NR link (--latency-table;
compute.latency_table, written by channel_cli.write_table).

CLI:
    python -m layersplit.nr --snr-db 10                       # MCS, BLER, goodput, latency at 10 dB
    python -m layersplit.nr --table results/nr_bler.csv       # the Monte Carlo BLER table (resumable)
    python -m layersplit.nr --check 14:10 --max-slots 64      # simulate MCS 14 at 10 dB afresh vs the table
    python -m layersplit.nr --tails results/nr_bler_tails.csv # the residuals' points, to 2,000 slots (resumable)
    python -m layersplit.nr --tails results/nr_bler_tails.csv --points reliable --device cuda --batch 512
                                                              # the reliable rule's points, to 36,887 slots
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from . import UserError, channel, channel_cli, cli, compute, links, nr, nr_frame
from .distributed import link_settings_set
from .nr import (
    BLER_TABLE,
    CHANNEL,
    CHANNELS,
    HARQ_MAX_RETX,
    MCS_INDICES,
    MCS_RULE,
    MCS_RULES,
    RECEIVER,
    RECEIVERS,
    RESIDUAL_TARGET,
    TARGET_BLER,
    elements_per_tb,
    load_table,
    operating_point,
    read_table,
    slots_to_certify,
)
from .nr_sim import (
    TABLE_BATCH,
    TABLE_MAX_SLOTS,
    TABLE_MIN_ERRORS,
    TABLE_DEVICE,
    TABLE_SEED,
    TABLE_SNR_DB,
    TAIL_MAX_SLOTS,
    TAIL_POINTS,
    TAIL_SEED_OFFSET,
    check,
    measure_points,
    measure_table,
    reliable_points,
)


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser(
        "The 5G NR coded uplink (Sionna): the link at one SNR, its BLER table, the table's check, its latency table.",
        prog="python -m layersplit.nr",
    )
    p.add_argument("--snr-db", type=cli.snr_db, default=channel.DEFAULT_SNR_DB, help="average received Es/N0 in dB")
    p.add_argument(
        "--tokens", type=cli.positive_int, default=channel_cli.DEFAULT_TOKENS, help="prompt tokens sent at prefill"
    )
    p.add_argument(
        "--hidden-size",
        type=cli.positive_int,
        default=channel_cli.DEFAULT_HIDDEN_SIZE,
        help="d_model of the split model",
    )
    p.add_argument(
        "--bits-per-element",
        type=cli.positive_int,
        default=channel.DEFAULT_BITS_PER_ELEMENT,
        help="bits per activation on the wire",
    )
    p.add_argument("--mcs-rule", choices=MCS_RULES, default=MCS_RULE, help="link adaptation rule")
    p.add_argument(
        "--residual-read",
        choices=nr.RESIDUAL_READS,
        default=nr.RESIDUAL_READ,
        help="how --mcs-rule reliable reads a residual: the extrapolated curve or the measured points' bound",
    )
    p.add_argument(
        "--target-bler",
        type=cli.finite_float,
        default=TARGET_BLER,
        help="first-transmission BLER target (--mcs-rule target)",
    )
    p.add_argument(
        "--harq-max-retx", type=cli.non_negative_int, default=HARQ_MAX_RETX, help="HARQ retransmissions at most"
    )
    p.add_argument(
        "--frame",
        type=nr_frame.frame_name,
        default=nr_frame.FRAME,
        help="the slot pattern (D, S, U) the air time follows, or FDD (default: %(default)s; nr_frame.py)",
    )
    p.add_argument("--bler-table", type=Path, default=BLER_TABLE, help="the BLER table the link reads")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    g = p.add_argument_group("the BLER table (Monte Carlo with Sionna)")
    g.add_argument(
        "--table",
        metavar="CSV",
        type=cli.writable_file,
        help="measure BLER against Es/N0 per MCS by Monte Carlo and append to CSV (resumes)",
    )
    g.add_argument(
        "--check",
        metavar="MCS:SNR,...",
        help="simulate these (MCS, Es/N0) cases afresh (seed --seed + 1) and compare with --bler-table",
    )
    g.add_argument(
        "--tails",
        metavar="CSV",
        type=cli.writable_file,
        help="measure the --points deeper (up to --max-slots, default %d, seed --seed + %d) and append to CSV "
        "(resumes): the BLER where the residuals after HARQ are read" % (TAIL_MAX_SLOTS, TAIL_SEED_OFFSET),
    )
    g.add_argument(
        "--points",
        metavar="MCS:SNR,...",
        default=",".join(f"{m}:{s:g}" for m, s in TAIL_POINTS),
        help="the (MCS, Es/N0) points of --tails, or 'reliable': where the reliable rule's bound is read at the "
        "protect sweeps' SNRs (nr_sim.reliable_points), each to the slots that certify the residual target "
        "(default --max-slots %d)" % slots_to_certify(RESIDUAL_TARGET),
    )
    g.add_argument(
        "--latency-table",
        metavar="CSV",
        type=cli.writable_file,
        help="write UE compute, air time and edge compute against the split over the NR link for "
        "SmolLM2-135M and Llama-2-7B (prefill of --tokens tokens and one decoding step)",
    )
    g.add_argument("--mcs", type=str, default=",".join(map(str, MCS_INDICES)), help="MCS indices of the table")
    g.add_argument(
        "--snrs", type=str, default=",".join(f"{s:g}" for s in TABLE_SNR_DB), help="Es/N0 grid of the table, dB"
    )
    g.add_argument("--channel", choices=CHANNELS, default=CHANNEL, help="TDL fading, or AWGN (the LDPC check)")
    g.add_argument("--receiver", choices=RECEIVERS, default=RECEIVER, help="LS channel estimation, or perfect CSI")
    g.add_argument(
        "--max-slots",
        type=cli.positive_int,
        help=f"slots per point at most (--check: slots per case; default {TABLE_MAX_SLOTS}, --tails {TAIL_MAX_SLOTS})",
    )
    g.add_argument("--min-errors", type=cli.positive_int, default=TABLE_MIN_ERRORS, help="lost TBs that end a point")
    g.add_argument("--batch", type=cli.positive_int, default=TABLE_BATCH, help="slots per Sionna call")
    g.add_argument("--seed", type=cli.seed, default=TABLE_SEED, help="seed of the Monte Carlo")
    g.add_argument(
        "--device",
        default=TABLE_DEVICE,
        help="where Sionna runs the Monte Carlo: cpu (the committed tables), cuda or cuda:N (its own random "
        "streams; large --batch for deep tails)",
    )
    return p


def parse_points(text: str | None, option: str = "--points") -> list[tuple[int, float]]:
    """(MCS, Es/N0 dB) pairs from "MCS:SNR,...", the SNRs in the CLI's range; UserError names the option."""
    try:
        found = [(int(a), float(b)) for a, b in (c.split(":") for c in text.split(","))] if text else []
    except ValueError:
        raise UserError(f"{option} {cli.shown(text)}: give MCS:SNR pairs, e.g. 14:10,3:0") from None
    if any(not cli.SNR_DB_MIN <= snr <= cli.SNR_DB_MAX for _, snr in found):  # NaN too
        raise UserError(f"{option} {cli.shown(text)}: SNRs must lie in {cli.SNR_DB_MIN:g}..{cli.SNR_DB_MAX:g} dB")
    return found


def main(argv: list[str] | None = None) -> int:
    import json

    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # bad lists are refused here, before any Monte Carlo starts
        mcs_list = cli.parse_floats(args.mcs, "--mcs")
        snr_list = cli.parse_snrs(args.snrs)
    except UserError as e:
        parser.error(str(e))
    if any(m != int(m) for m in mcs_list):
        parser.error(f"--mcs {args.mcs!r}: MCS indices are integers")
    mcs_list = [int(m) for m in mcs_list]

    def pairs(option: str, text: str | None) -> list[tuple[int, float]]:
        try:
            return parse_points(text, option)
        except UserError as e:
            parser.error(str(e))

    cases = pairs("--check", args.check)
    reliable = args.tails and args.points == "reliable"  # the points are the table's: read in body()
    points = pairs("--points", args.points) if args.tails and not reliable else []
    if any(m not in range(29) for m, _ in points):  # refused before the file is touched
        parser.error(f"--points {cli.shown(args.points)}: MCS indices are 0-28")
    if args.max_slots is None:
        tail_slots = slots_to_certify(RESIDUAL_TARGET) if reliable else TAIL_MAX_SLOTS
        args.max_slots = tail_slots if args.tails else TABLE_MAX_SLOTS

    if args.device != TABLE_DEVICE:
        from .models import resolve_device  # torch: only when another device is asked for

        try:
            args.device = str(resolve_device(args.device))
        except UserError as e:
            parser.error(str(e))
    if args.latency_table and args.bler_table != BLER_TABLE:  # the rows read the link's table, not the option
        parser.error(
            "--latency-table reads the table the link uses: set LAYERSPLIT_NR_BLER_TABLE instead of --bler-table"
        )

    def body() -> int:  # (cli.run_main has checked the table LAYERSPLIT_NR_BLER_TABLE names)
        if args.bler_table != BLER_TABLE:
            read_table(args.bler_table)  # a bad table is named before any Monte Carlo
        if args.table:
            start = time.time()
            n = measure_table(
                Path(args.table),
                mcs_list,
                snr_list,
                args.seed,
                args.channel,
                args.receiver,
                args.max_slots,
                args.min_errors,
                args.batch,
                device=args.device,
            )
            print(f"simulated {n} points into {args.table} in {time.time() - start:.0f} s")
        elif args.tails:
            start = time.time()
            tail_points = reliable_points(load_table(args.bler_table)) if reliable else points
            if reliable:
                print("the reliable rule's points: " + ", ".join(f"MCS {m} at {s:g} dB" for m, s in tail_points))
            n = measure_points(
                Path(args.tails),
                tail_points,
                args.seed + TAIL_SEED_OFFSET,
                args.channel,
                args.receiver,
                args.max_slots,
                args.min_errors,
                args.batch,
                device=args.device,
            )
            print(f"simulated {n} points into {args.tails} in {time.time() - start:.0f} s")
        elif cases:
            rows = check(
                cases, args.max_slots, args.seed + 1, args.bler_table, args.channel, args.receiver, args.device
            )
            for r in rows:
                print(
                    json.dumps(r)
                    if args.json
                    else f"MCS {r['mcs']:2d} at {r['snr_db']:5.1f} dB: {r['errors']}/{r['slots']} lost, "
                    f"BLER {r['bler']:.3f} "
                    f"[{r['bler_low']:.3f}, {r['bler_high']:.3f}]; table {r['table_bler']:.3f} "
                    f"[{r['table_low']:.3f}, {r['table_high']:.3f}]: "
                    f"{'agrees' if r['agrees'] else 'OUTSIDE the interval'}"
                )
            return 0 if all(r["agrees"] for r in rows) else 1
        elif args.latency_table:  # compute.py's one latency table, over this link
            link = links.NrLink(channel.LinkConfig(bits_per_element=args.bits_per_element))
            rows = compute.latency_table(
                list(channel_cli.LATENCY_TABLE_SNR_DB), compute.TABLE_MODELS, args.tokens, link
            )
            channel_cli.write_table(rows, args.latency_table)
            print(f"wrote {len(rows)} rows to {args.latency_table}")
        else:
            point = operating_point(
                args.snr_db, args.mcs_rule, args.target_bler, args.harq_max_retx, args.bler_table, args.frame
            )
            k = elements_per_tb(point, args.bits_per_element)
            out = {
                "snr_db": args.snr_db,
                "mcs": point.mcs,
                "tb_size": point.tb_size,
                "bler": point.bler,
                "residual_tb_loss": point.residual,
                "transmissions_per_tb": point.transmissions,
                "frame": point.frame.name,
                "goodput_bps": point.goodput_bps,
                "elements_per_tb": k,
                "tx_latency_prefill_s": point.air_s(math.ceil(args.tokens * args.hidden_size / k)),
                "tx_latency_decode_s": point.air_s(math.ceil(args.hidden_size / k)),
            }
            if args.json:
                print(json.dumps(out))
            else:
                for key, value in out.items():
                    print(f"{key:22s} {value:.4g}" if isinstance(value, float) else f"{key:22s} {value}")
        return 0

    with link_settings_set(frame=args.frame, residual_read=args.residual_read):  # the links read them at each call
        return cli.run_main(parser.prog, body)
