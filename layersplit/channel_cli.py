"""The uplink's command line (python -m layersplit.channel) and the tables it writes.

channel.py holds the physics; this module checks it and reports it:
- monte_carlo_link simulates packets symbol by symbol (Gray-mapped constellation, fade, noise, ML
  detection), and ber_per_table sets its BER and PER beside channel.py's closed forms (--table);
- the latency table of the uncoded link (--latency-table, compute.latency_table) and the protected
  path's cost table (--protect-table, compute.protect_table);
- write_table, the one table writer (format_row: floats to 6 significant digits), which nr_sim.py's
  BLER table and nr_cli.py's latency table use too;
- add_link_arguments and link_config_from_args: the operating-point options this CLI shares with
  add_noise.py and serve.py.
channel.py's `python -m` entry runs main here.

CLI:
    python -m layersplit.channel --snr-db 10 --modulation qpsk --fading rayleigh --json
    python -m layersplit.channel --table results/channel_ber_per.csv
    python -m layersplit.channel --latency-table results/latency_breakdown.csv
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import UserError, cli, compute, links, protect_arq
from .channel import (
    DEFAULT_BANDWIDTH_HZ,
    DEFAULT_BITS_PER_ELEMENT,
    DEFAULT_BLOCK_FADING,
    DEFAULT_ELEMENTS_PER_PACKET,
    DEFAULT_FADING,
    DEFAULT_HEADER_BITS,
    DEFAULT_MODULATION,
    DEFAULT_NAKAGAMI_M,
    DEFAULT_SNR_DB,
    FADINGS,
    MODULATIONS,
    LinkConfig,
    achievable_rate_bps,
    average_ber,
    bits_per_symbol,
    element_loss,
    packet_error_rate,
    payload_bits,
    tx_latency_s,
)
from .cli import writable_file
from .distributed import link_settings_set

# ---- CLI defaults ----------------------------------------------------------------------------
DEFAULT_TOKENS = 512  # prompt length crossing the link at prefill
DEFAULT_HIDDEN_SIZE = 576  # SmolLM2-135M d_model

# ---- BER/PER table ---------------------------------------------------------------------------
TABLE_SNR_DB = tuple(np.arange(0.0, 40.1, 2.5))  # Es/N0 grid in dB
TABLE_MC_SYMBOLS = 300_000  # Monte Carlo symbols per point and fading mode
TABLE_SEED = 0  # seed of the table's Monte Carlo (one numpy Generator for the whole table)

# ---- latency table (--latency-table) ---------------------------------------------------------
LATENCY_TABLE_SNR_DB = (10.0, 20.0, 30.0)  # average Es/N0 in dB: a weak, a fair and a strong uplink
PROTECT_TABLE_SNR_DB = (5.0, 10.0, 15.0, 20.0, 25.0, 30.0)  # Es/N0 of the protected path's cost table (--protect-table)
PROTECT_TABLE_KS = (0, 1, 4, 16, 64)  # protection levels K of that table: the sweeps'


# ---- Monte Carlo -----------------------------------------------------------------------------
def monte_carlo_link(cfg: LinkConfig, n_packets: int, rng: np.random.Generator) -> dict[str, float]:
    """Simulate n_packets packets of cfg.bits_per_packet bits symbol by symbol: Gray-mapped
    constellation, y = h s + n with complex Gaussian n, ML detection with known h, bit errors
    counted. block_fading: one fade per packet; otherwise one fade per symbol and the bits are
    interleaved across all packets, so bit errors are independent as packet_error_rate assumes.
    Returns ber, per and their standard errors (packets are independent).
    """
    n_bits = cfg.bits_per_packet
    bps = bits_per_symbol(cfg.modulation)
    rails = 1 if cfg.modulation == "bpsk" else 2
    side = 2 ** (bps // rails)  # PAM levels per rail
    energy = 1.0 if rails == 1 else 2.0 * (MODULATIONS[cfg.modulation] - 1) / 3.0  # mean |s|^2
    shape = (n_packets, math.ceil(n_bits / bps))

    index = rng.integers(0, side, size=(*shape, rails))
    level = 2.0 * index - (side - 1)
    s = level[..., 0] + (1j * level[..., 1] if rails == 2 else 0.0)
    fade_shape = (n_packets, 1) if cfg.block_fading else shape
    if cfg.fading == "awgn":
        h = np.ones(fade_shape)
    elif cfg.fading == "rayleigh":
        h = (rng.standard_normal(fade_shape) + 1j * rng.standard_normal(fade_shape)) / math.sqrt(2.0)
    else:
        gain = rng.gamma(cfg.nakagami_m, 1.0 / cfg.nakagami_m, size=fade_shape)
        h = np.sqrt(gain) * np.exp(2j * np.pi * rng.random(fade_shape))
    sigma = math.sqrt(energy / (2.0 * 10.0 ** (cfg.snr_db / 10.0)))  # per real dimension: N0 / 2
    y = h * s + sigma * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    r = y / h  # nearest point to y / h is the ML decision for a flat fade known at the receiver
    received = np.stack([r.real, r.imag][:rails], axis=-1)
    decided = np.clip(np.rint((received + side - 1) / 2.0), 0, side - 1).astype(index.dtype)

    wrong = (index ^ (index >> 1)) ^ (decided ^ (decided >> 1))  # Gray labels differ in these bits
    bit_errors = (wrong[..., None] >> np.arange(bps // rails)) & 1
    bit_errors = bit_errors.reshape(n_packets, -1)[:, :n_bits]  # first L bits of each packet
    if not cfg.block_fading:  # ideal bit interleaver: the bits of one symbol (one fade) scatter
        bit_errors = rng.permutation(bit_errors.ravel()).reshape(n_packets, n_bits)
    per_packet = bit_errors.sum(axis=1)
    lost = per_packet > 0
    return {
        "ber": per_packet.mean() / n_bits,
        "ber_se": per_packet.std(ddof=1) / math.sqrt(n_packets) / n_bits,
        "per": lost.mean(),
        "per_se": lost.std(ddof=1) / math.sqrt(n_packets),
    }


def ber_per_table(
    snr_db_list: list[float],
    modulations: list[str],
    fadings: list[str],
    mc_symbols: int,
    seed: int,
    link: LinkConfig = LinkConfig(),
) -> list[dict[str, float | str]]:
    """One row per (fading, modulation, Es/N0): closed-form and Monte Carlo BER and PER.

    per_fast assumes independent bit errors (fast or interleaved fading), per_block one fade per
    packet; both use link.bits_per_packet and link.nakagami_m. Each Monte Carlo mode simulates
    about mc_symbols symbols.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for fading in fadings:
        for modulation in modulations:
            n_packets = max(2, mc_symbols * bits_per_symbol(modulation) // link.bits_per_packet)
            for snr_db in snr_db_list:
                point = dict(snr_db=float(snr_db), modulation=modulation, fading=fading)
                fast = LinkConfig(**{**asdict(link), **point, "block_fading": False})
                block = LinkConfig(**{**asdict(link), **point, "block_fading": True})
                mc_fast = monte_carlo_link(fast, n_packets, rng)
                mc_block = mc_fast if fading == "awgn" else monte_carlo_link(block, n_packets, rng)
                rows.append(
                    {
                        **point,
                        "ebn0_db": fast.ebn0_db,
                        "nakagami_m": link.nakagami_m if fading == "nakagami" else math.nan,
                        "bits_per_packet": link.bits_per_packet,
                        "ber": average_ber(modulation, snr_db, fading, link.nakagami_m),
                        "ber_mc": mc_fast["ber"],
                        "ber_mc_se": mc_fast["ber_se"],
                        "per_fast": packet_error_rate(fast),
                        "per_fast_mc": mc_fast["per"],
                        "per_block": packet_error_rate(block),
                        "per_block_mc": mc_block["per"],
                        "per_block_mc_se": mc_block["per_se"],
                        "mc_packets": n_packets,
                    }
                )
    return rows


def format_row(row: dict) -> dict:
    """A table row as the tables write it: floats to 6 significant digits."""
    return {k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()}


def write_table(rows: list[dict[str, float | str]], path: str | Path) -> None:
    """The rows as CSV (format_row), written beside and renamed: a kill or a full disk never leaves half a
    table in place of the previous one. The one table writer (the BLER table's rows: nr_sim.measure_table)."""
    path = Path(path)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow(format_row(row))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        cli.write_text_atomic(path, text.getvalue())
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or type(e).__name__})") from None


# ---- CLI -------------------------------------------------------------------------------------
def link_summary(cfg: LinkConfig, tokens: int, hidden_size: int) -> dict[str, float | int | str | bool]:
    """Everything the CLI reports for one operating point, inputs included."""
    return {
        **asdict(cfg),
        "tokens": tokens,
        "hidden_size": hidden_size,
        "ebn0_db": cfg.ebn0_db,
        "bits_per_packet": cfg.bits_per_packet,
        "ber": average_ber(cfg.modulation, cfg.snr_db, cfg.fading, cfg.nakagami_m),
        "per": packet_error_rate(cfg),
        "element_loss": element_loss(cfg),
        "rate_bps": achievable_rate_bps(cfg),
        "payload_bits_prefill": payload_bits(cfg, tokens, hidden_size),
        "payload_bits_decode": payload_bits(cfg, 1, hidden_size),
        "tx_latency_prefill_s": tx_latency_s(cfg, tokens, hidden_size),
        "tx_latency_decode_s": tx_latency_s(cfg, 1, hidden_size),
    }


def add_link_arguments(p: argparse.ArgumentParser, snr_db_default: float | None = DEFAULT_SNR_DB) -> None:
    """The operating-point options, shared by this CLI and the scripts that impair a model (their
    parsers show each default: cli.HelpFormatter)."""
    p.add_argument(
        "--snr-db",
        type=float,
        default=snr_db_default,
        help="average received SNR per symbol, Es/N0, in dB (Eb/N0 = Es/N0 / log2 M)",
    )
    p.add_argument(
        "--modulation", choices=list(MODULATIONS), default=DEFAULT_MODULATION, help="Gray-mapped constellation"
    )
    p.add_argument("--fading", choices=FADINGS, default=DEFAULT_FADING, help="the fade of the received amplitude")
    p.add_argument(
        "--nakagami-m",
        type=float,
        default=DEFAULT_NAKAGAMI_M,
        help="Nakagami shape m >= 0.5 for --fading nakagami (1 = Rayleigh)",
    )
    p.add_argument(
        "--bits-per-element",
        type=int,
        default=DEFAULT_BITS_PER_ELEMENT,
        help="bits per activation on the wire: 32 fp32, 16 fp16/bf16, 8 int8",
    )
    p.add_argument(
        "--elements-per-packet",
        type=int,
        default=DEFAULT_ELEMENTS_PER_PACKET,
        help="activations per packet, k (k=1 with --header-bits 0: i.i.d. element loss)",
    )
    p.add_argument("--header-bits", type=int, default=DEFAULT_HEADER_BITS, help="header/CRC bits per packet")
    p.add_argument("--bandwidth-hz", type=float, default=DEFAULT_BANDWIDTH_HZ, help="uplink bandwidth")
    p.add_argument(
        "--block-fading",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_BLOCK_FADING,
        help="one fade per packet (--no-block-fading: independent bit errors)",
    )


def link_config_from_args(args: argparse.Namespace) -> LinkConfig:
    """The LinkConfig of parsed add_link_arguments options (raises ValueError on bad values)."""
    return LinkConfig(
        args.snr_db,
        args.modulation,
        args.fading,
        args.nakagami_m,
        args.bits_per_element,
        args.elements_per_packet,
        args.header_bits,
        args.bandwidth_hz,
        args.block_fading,
    )


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser(
        "BER, packet error rate, element loss and link latency of the split-layer uplink.",
        prog="python -m layersplit.channel",
    )
    add_link_arguments(p)
    cli.bound_link_arguments(p)  # finite and in range at parse time (an SNR of 1e308 overflowed)
    p.add_argument("--tokens", type=cli.positive_int, default=DEFAULT_TOKENS, help="prompt tokens sent at prefill")
    p.add_argument(
        "--hidden-size", type=cli.positive_int, default=DEFAULT_HIDDEN_SIZE, help="d_model of the split model"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--table",
        metavar="CSV",
        type=writable_file,
        help="write the closed-form vs Monte Carlo BER/PER table over all SNRs, modulations and fadings"
        " (uses the packet and --nakagami-m options)",
    )
    p.add_argument(
        "--latency-table",
        metavar="CSV",
        type=writable_file,
        help="write UE compute, air time and edge compute against the split (compute.py) for SmolLM2-135M and "
        f"Llama-2-7B, prefill of --tokens tokens and one decoding step, at Es/N0 "
        f"{', '.join(f'{s:g}' for s in LATENCY_TABLE_SNR_DB)} dB (uses the link options but --snr-db)",
    )
    p.add_argument(
        "--protect-table",
        metavar="CSV",
        type=writable_file,
        help="write the protected path's extra bits and air time (--protect K, K in PROTECT_TABLE_KS) against "
        "Es/N0 for SmolLM2-135M and Llama-2-7B, prefill of --tokens tokens and one decoding step",
    )
    p.add_argument(
        "--protect-path",
        choices=tuple(protect_arq.PROTECT_PATHS),
        default=protect_arq.PROTECT_PATH,
        help="--protect-table: the protected path's design (layersplit/protect_arq.py)",
    )
    p.add_argument(
        "--arq-table",
        metavar="CSV",
        type=writable_file,
        help="write how the protected path delivers in a block fade (protect_arq.py: ARQ with a retry cap and round "
        "trips, a new fade each try, and NR's coded path) against Es/N0 and K, prefill of --tokens tokens",
    )
    p.add_argument("--mc-symbols", type=int, default=TABLE_MC_SYMBOLS, help="Monte Carlo symbols per table point")
    p.add_argument("--seed", type=cli.seed, default=TABLE_SEED, help="seed of the table's Monte Carlo")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = link_config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    if args.mc_symbols < 1:  # (--tokens and --hidden-size: by their types)
        parser.error("--mc-symbols must be >= 1")

    def body() -> int:
        if args.table:
            start = time.time()
            rows = ber_per_table(list(TABLE_SNR_DB), list(MODULATIONS), list(FADINGS), args.mc_symbols, args.seed, cfg)
            write_table(rows, args.table)
            print(f"wrote {len(rows)} rows to {args.table} in {time.time() - start:.1f} s")
            return 0
        if args.latency_table:
            link = links.ErasureLink(cfg)  # the uncoded link's air time and columns
            rows = compute.latency_table(list(LATENCY_TABLE_SNR_DB), compute.TABLE_MODELS, args.tokens, link)
            write_table(rows, args.latency_table)
            print(f"wrote {len(rows)} rows to {args.latency_table}")
            return 0
        if args.protect_table:
            rows = compute.protect_table(
                list(PROTECT_TABLE_SNR_DB), compute.TABLE_MODELS, PROTECT_TABLE_KS, args.tokens, cfg
            )
            write_table(rows, args.protect_table)
            print(f"wrote {len(rows)} rows to {args.protect_table}")
            return 0
        if args.arq_table:
            rows = protect_arq.design_table(
                list(PROTECT_TABLE_SNR_DB), compute.TABLE_MODELS, PROTECT_TABLE_KS[1:], args.tokens, cfg
            )
            write_table(rows, args.arq_table)
            print(f"wrote {len(rows)} rows to {args.arq_table}")
            return 0
        summary = link_summary(cfg, args.tokens, args.hidden_size)
        if args.json:
            print(json.dumps(summary))
            return 0
        for key, value in summary.items():
            print(f"{key:22s} {value:.4g}" if isinstance(value, float) else f"{key:22s} {value}")
        return 0

    with link_settings_set(protect_path=args.protect_path):  # the links read it at each call
        return cli.run_main(parser.prog, body)
