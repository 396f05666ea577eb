"""Real split inference over a socket: an edge server and a UE client in two processes.

The UE runs the embeddings and the first SPLIT decoder layers (--split N = N layers ON THE UE,
1..L-1), sends each step's hidden state to the edge as packets in a wire dtype (fp32, fp16, bf16,
int8 with a per-token scale) through a simulated uplink that loses packets (erasure) or flips bits
(bitflip) at the request's SNR, seeded by (seed, request, step); the edge zero-fills lost packets,
runs the remaining layers and the LM head, and returns the greedy next token. Both keep KV caches,
so each decoding step sends one token's activation. With a loss-free link (--link none, or
--snr-db inf) and --wire fp32 the tokens are exactly the single-process model's.

    python serve.py edge                                   # terminal 1: the edge on 127.0.0.1:8765, every split
    python serve.py ue --prompt "The capital of France is" # terminal 2: split 5, fp16, erasure at an AR(1) SNR
    python serve.py ue --prompt "The capital of France is" --link none --wire fp32   # = the single-process tokens
    python serve.py ue --prompt "One" --prompt "Two" --split 9 --wire int8 --max-new-tokens 64 --json
    python serve.py ue --prompt "Hello" --snr-db 15 --modulation 16qam --fading nakagami --sleep-air
    python serve.py ue --prompt "Hello" --policy runs/LayerSplit-Wireless-v0/ppo_s0   # split chosen per request from its SNR
    python serve.py edge --port 0 --splits 1-9 --max-sessions 2 --max-queue 4     # port 0: any free port, printed
    python serve.py edge --host 0.0.0.0 --model meta-llama/Llama-2-7b-hf --device cuda   # the paper's model, reachable from other hosts

Every constant below can be overridden from the command line (see `python serve.py edge --help`,
`python serve.py ue --help`).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys

import torch

from layersplit import UserError, serving
from layersplit.channel import SnrProcess, add_link_arguments, link_config_from_args
from layersplit.cli import positive_int
from layersplit.models import EMBEDDED_MODEL, find_decoder_layers, load_model

# --- both sides -------------------------------------------------------------------------------
MODEL = EMBEDDED_MODEL  # embedded SmolLM2-135M, a local folder, or a Hugging Face id (both sides load the same)
DEVICE = "auto"  # auto: CUDA when present, else CPU
DTYPE = "auto"  # auto: float32 on CPU, bfloat16 (or float16) on CUDA
THREADS = 0  # torch CPU threads of this process; 0: torch's default (one per core)
HOST = serving.DEFAULT_HOST  # loopback: one machine by default
PORT = serving.DEFAULT_PORT  # the edge's TCP port
# --- the edge ---------------------------------------------------------------------------------
SPLITS = "all"  # layers-on-the-UE the edge serves: all = 1..L-1
MAX_SESSIONS = serving.MAX_SESSIONS  # sessions served at once
MAX_QUEUE = serving.MAX_QUEUE  # connections queued beyond that; more are refused as busy
QUEUE_TIMEOUT_S = serving.QUEUE_TIMEOUT_S  # longest wait in the queue before a busy refusal
IDLE_TIMEOUT_S = serving.IDLE_TIMEOUT_S  # a connection without a complete frame for this long is dropped
# A new connection must send its OPEN within this long to be served; only then does it take a session,
# so idle or stray connections never keep a UE waiting (serving.HANDSHAKE_TIMEOUT_S says why 5 s).
HANDSHAKE_TIMEOUT_S = serving.HANDSHAKE_TIMEOUT_S
MAX_HANDSHAKES = serving.MAX_HANDSHAKES  # connections waiting for their OPEN; a newer one drops the oldest
MAX_FRAME_BYTES = serving.MAX_FRAME_BYTES  # largest frame accepted (bounds per-connection memory)
MAX_CONTEXT = serving.MAX_CONTEXT  # prompt + generated tokens per session (bounds each KV cache)
# --- the UE -----------------------------------------------------------------------------------
PROMPT = "The capital of France is"  # used when no --prompt is given
MAX_NEW_TOKENS = 32  # greedy tokens per request (fewer when the model ends the text)
SPLIT = 5  # decoder layers on the UE: the paper's fixed baseline (5 on the UE, the rest on the edge)
WIRE = "fp16"  # activations on the wire: fp32, fp16, bf16, int8 (fp16: the channel's default 16 bits)
LINK = "erasure"  # none (loss-free), erasure (packets lost at the PER and zero-filled), bitflip (no CRC)
# The SNR of each request is one step of an AR(1) process in dB (layersplit.channel.SnrProcess).
# 25 dB mean: with the default link (QPSK, Rayleigh, 64 fp16 elements + CRC-32 per packet) about 3%
# of packets are lost there (15 dB: 29%, 35 dB: 0.3%), the range where the sweep shows mild,
# split-dependent damage, so the choice of split matters. 5 dB spread: typical shadowing spreads
# are 4-8 dB (3GPP TR 38.901). rho 0.9: consecutive requests of one UE see a slowly changing channel.
SNR_MEAN_DB = 25.0
SNR_STD_DB = 5.0
SNR_RHO = 0.9
SEED = 0  # seeds the SNR process and every packet loss (per request and step)
TIMEOUT_S = serving.CLIENT_TIMEOUT_S  # the UE gives up on an edge silent for this long (queueing included)


def positive_float(text: str) -> float:
    """> 0, inf included: check_numbers then names the timeouts' upper bound (layersplit.cli's types
    refuse non-finite values before that)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="serve.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="role", required=True, metavar="{edge,ue}")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--model", default=MODEL, help=f"model to split, the same on both sides (default: {MODEL}, embedded)")
        q.add_argument("--device", default=DEVICE, help=f"auto, cpu, cuda, cuda:N (default: {DEVICE})")
        q.add_argument("--dtype", default=DTYPE, choices=["auto", "float32", "bfloat16", "float16"],
                       help=f"model dtype (default: {DTYPE}: float32 on CPU)")
        q.add_argument("--threads", type=int, default=THREADS,
                       help="torch CPU threads of this process, 0 for torch's default of one per core; with the UE and "
                            "the edge on one machine, or a loaded one, 1 each avoids OpenMP threads waiting on each "
                            f"other (default: {THREADS})")

    e = sub.add_parser("edge", help="run the edge server: the last layers and the LM head",
                       description="The edge server: runs decoder layers split..L-1 and the LM head for every UE session.")
    e.add_argument("--host", default=HOST, help=f"address to listen on (default: {HOST}; 0.0.0.0 for other hosts)")
    e.add_argument("--port", type=int, default=PORT, help=f"TCP port, 0 for any free one (default: {PORT})")
    common(e)
    e.add_argument("--splits", default=SPLITS,
                   help="numbers of decoder layers on the UE this edge serves: all (1..L-1) or like 1-9,15 "
                        f"(default: {SPLITS})")
    e.add_argument("--max-sessions", type=positive_int, default=MAX_SESSIONS, help=f"sessions served at once (default: {MAX_SESSIONS})")
    e.add_argument("--max-queue", type=int, default=MAX_QUEUE,
                   help=f"connections queued when all sessions are busy; more are refused with a 'busy' error (default: {MAX_QUEUE})")
    e.add_argument("--queue-timeout", type=positive_float, default=QUEUE_TIMEOUT_S,
                   help=f"seconds a queued connection waits before a 'busy' refusal (default: {QUEUE_TIMEOUT_S:g})")
    e.add_argument("--idle-timeout", type=positive_float, default=IDLE_TIMEOUT_S,
                   help=f"seconds without a complete frame before a connection is dropped (default: {IDLE_TIMEOUT_S:g})")
    e.add_argument("--handshake-timeout", type=positive_float, default=HANDSHAKE_TIMEOUT_S,
                   help="seconds a new connection has to send its OPEN; until then it holds no session "
                        f"(default: {HANDSHAKE_TIMEOUT_S:g})")
    e.add_argument("--max-handshakes", type=positive_int, default=MAX_HANDSHAKES,
                   help="connections waiting for their OPEN at once; a newer one drops the oldest "
                        f"(default: {MAX_HANDSHAKES})")
    e.add_argument("--max-frame-bytes", type=positive_int, default=MAX_FRAME_BYTES,
                   help=f"largest frame accepted; bigger ones are refused and the connection closed (default: {MAX_FRAME_BYTES})")
    e.add_argument("--max-context", type=positive_int, default=MAX_CONTEXT,
                   help=f"most tokens (prompt + generated) one session may hold in its KV cache (default: {MAX_CONTEXT})")
    e.add_argument("--quiet", action="store_true", help="log only errors")

    u = sub.add_parser("ue", help="run a UE client: the first layers, the uplink, the requests",
                       description="A UE client: runs the embeddings and the first --split decoder layers, sends the "
                                   "activations through the simulated uplink to the edge and prints what it measured.")
    u.add_argument("--connect", default=f"{HOST}:{PORT}", metavar="HOST:PORT", help=f"the edge (default: {HOST}:{PORT})")
    u.add_argument("--prompt", action="append", help=f"a prompt; repeat for several requests (default: {PROMPT!r})")
    u.add_argument("--max-new-tokens", type=positive_int, default=MAX_NEW_TOKENS, help=f"greedy tokens per request (default: {MAX_NEW_TOKENS})")
    u.add_argument("--split", type=int, default=SPLIT,
                   help=f"number of decoder layers ON THE UE, 1..L-1; the edge runs the rest and the LM head (default: {SPLIT})")
    u.add_argument("--policy", metavar="RUN_DIR",
                   help="choose each request's split from its SNR with a policy trained on LayerSplit-Wireless-v0 "
                        "(a run folder of train_rsm.py, e.g. runs/LayerSplit-Wireless-v0/ppo_s0); overrides --split")
    u.add_argument("--wire", choices=list(serving.WIRE_DTYPES), default=WIRE,
                   help=f"dtype of the activations on the wire; int8 adds a float32 scale per token (default: {WIRE})")
    u.add_argument("--link", choices=serving.LINKS, default=LINK,
                   help=f"none: loss-free; erasure: packets lost with the channel's PER and zero-filled by the edge; "
                        f"bitflip: payload bits flipped at the BER, no CRC (default: {LINK})")
    g = u.add_argument_group("SNR of each request: an AR(1) process in dB, one step per request")
    g.add_argument("--snr-mean", type=float, help=f"stationary mean Es/N0 in dB (default: {SNR_MEAN_DB:g})")
    g.add_argument("--snr-std", type=float, help=f"stationary standard deviation in dB, 0 for a fixed SNR (default: {SNR_STD_DB:g})")
    g.add_argument("--snr-rho", type=float, help=f"lag-1 correlation between consecutive requests (default: {SNR_RHO:g})")
    add_link_arguments(u.add_argument_group("physical link (the erasure and bitflip links)"), snr_db_default=None)
    u.set_defaults(bits_per_element=None)  # set by --wire
    for action in u._actions:  # the shared link options, as this client reads them
        if action.dest == "snr_db":
            action.help = ("a fixed Es/N0 in dB for every request instead of the AR(1) process; inf: a loss-free link "
                           "(default: the process)")
        elif action.dest == "bits_per_element":
            action.help = argparse.SUPPRESS  # --wire sets it
    u.add_argument("--seed", type=int, default=SEED, help=f"seed of the SNR process and the packet losses (default: {SEED})")
    u.add_argument("--sleep-air", action="store_true",
                   help="really wait each transfer's time on air at the link rate before sending it (default: only report it)")
    u.add_argument("--timeout", type=positive_float, default=TIMEOUT_S, help=f"seconds to wait for the edge (default: {TIMEOUT_S:g})")
    common(u)
    u.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.role == "edge":
        if args.max_queue < 0:
            p.error("--max-queue must be >= 0")
        return args
    try:
        serving.parse_address(args.connect)
    except UserError as e:
        p.error(str(e))
    args.prompts = args.prompt or [PROMPT]
    bits = serving.wire_bits(args.wire)
    if args.bits_per_element not in (None, bits):
        p.error(f"--bits-per-element is set by --wire ({args.wire}: {bits} bits); leave it out")
    args.bits_per_element = bits
    if args.snr_db is not None:  # a fixed SNR for every request
        if any(v is not None for v in (args.snr_mean, args.snr_std, args.snr_rho)):
            p.error("give --snr-db (a fixed SNR) or --snr-mean/--snr-std/--snr-rho (an SNR process), not both")
        if math.isnan(args.snr_db):
            p.error("--snr-db must be a number of dB or inf")
        args.snr_mean, args.snr_std, args.snr_rho = args.snr_db, 0.0, 0.0
    else:
        args.snr_mean = SNR_MEAN_DB if args.snr_mean is None else args.snr_mean
        args.snr_std = SNR_STD_DB if args.snr_std is None else args.snr_std
        args.snr_rho = SNR_RHO if args.snr_rho is None else args.snr_rho
    if not (math.isfinite(args.snr_mean) or args.snr_mean == math.inf) or not args.snr_std >= 0 \
            or not -1 <= args.snr_rho <= 1 or math.isinf(args.snr_std):
        p.error("the SNR process needs a finite (or +inf) mean, a finite std >= 0 and -1 <= rho <= 1")
    try:  # the packet, fading and bandwidth options; the SNR is set per request
        args.snr_db = args.snr_mean if math.isfinite(args.snr_mean) else SNR_MEAN_DB
        args.template = link_config_from_args(args)
    except ValueError as e:
        p.error(str(e))
    return args


# --- bounds on the options (check_numbers): limits of validity, not settings -------------------
# The most --threads accepted: more than any machine's cores. torch takes any count, but 10^6 makes
# OpenMP crash at the first forward.
MAX_THREADS = 1024
# The SNR options' range, wider than any radio link's. Far beyond it the channel model breaks down:
# 10^(SNR/10) overflows near +3000 dB, and near -300 dB the link rate underflows to 0 (a division by
# zero). The spread is bounded too, so that the AR(1) process stays within +-300 dB (6.7 std).
MAX_ABS_SNR_DB = 100.0
MAX_SNR_STD_DB = 30.0
# Nakagami fading of a larger m is AWGN (--fading awgn) to many digits; the fade integrals fail near 1e308.
MAX_NAKAGAMI_M = 1e6


def check_numbers(args: argparse.Namespace) -> None:
    """Values argparse lets through that would otherwise end in a traceback (an OverflowError for
    --port 99999 or --idle-timeout inf, a crash in OpenMP for --threads 1000000): a UserError, which
    main reports in one line with exit status 2, before any model is loaded."""
    if not 0 <= args.threads <= MAX_THREADS:
        raise UserError(f"--threads {args.threads} is not a thread count: use 0 (torch's default) to {MAX_THREADS}")
    if args.role == "edge":
        serving.check_port(args.port, "--port")
        for option in ("queue_timeout", "idle_timeout", "handshake_timeout"):
            serving.check_timeout(getattr(args, option), "--" + option.replace("_", "-"))
        return
    serving.check_timeout(args.timeout, "--timeout")
    if abs(args.snr_mean) > MAX_ABS_SNR_DB and args.snr_mean != math.inf:
        raise UserError(f"SNR {args.snr_mean:g} dB (--snr-db or --snr-mean) is out of range: use "
                        f"-{MAX_ABS_SNR_DB:g}..{MAX_ABS_SNR_DB:g} dB, or inf for a loss-free link")
    if args.snr_std > MAX_SNR_STD_DB:
        raise UserError(f"--snr-std {args.snr_std:g} dB is out of range: use 0..{MAX_SNR_STD_DB:g} dB")
    if args.nakagami_m > MAX_NAKAGAMI_M:
        raise UserError(f"--nakagami-m {args.nakagami_m:g} is out of range: use 0.5..{MAX_NAKAGAMI_M:g} "
                        "(--fading awgn for no fading)")
    if args.seed < 0:  # numpy seeds are non-negative
        raise UserError(f"--seed {args.seed} is negative: use an integer >= 0")
    if args.elements_per_packet > serving.MAX_ELEMENTS_PER_PACKET:  # the edge would refuse the OPEN
        raise UserError(f"--elements-per-packet {args.elements_per_packet} is too large: "
                        f"use 1..{serving.MAX_ELEMENTS_PER_PACKET}")


# --- the edge -----------------------------------------------------------------------------------
def run_edge(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s edge %(message)s")
    model, _ = load_model(args.model, device=args.device, dtype=args.dtype)
    splits = serving.parse_splits(args.splits, len(find_decoder_layers(model)))
    server = serving.EdgeServer(model, host=args.host, port=args.port, splits=splits, max_sessions=args.max_sessions,
                                max_queue=args.max_queue, queue_timeout_s=args.queue_timeout,
                                idle_timeout_s=args.idle_timeout, max_frame_bytes=args.max_frame_bytes,
                                max_context=args.max_context, handshake_timeout_s=args.handshake_timeout,
                                max_handshakes=args.max_handshakes)
    sm = server.split_model
    print(f"edge listening on {server.address} (model {args.model}: {sm.n_layers} decoder layers, "
          f"{str(sm.dtype).removeprefix('torch.')}, {sm.device}; serves {serving.format_splits(splits)} layers on the UE; "
          f"{args.max_sessions} sessions at once, {args.max_queue} queued)", flush=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    print(f"edge stopped: {json.dumps(server.stats)}", flush=True)
    return 0


# --- the UE -------------------------------------------------------------------------------------
def build_client(args: argparse.Namespace, model, tokenizer, split_for_snr=None) -> serving.UEClient:
    """The UE client of the arguments; `split_for_snr(snr_db) -> layers on the UE`, when given,
    chooses each request's split instead of the fixed --split."""
    uplink = serving.Uplink(args.link, args.template, seed=args.seed)
    # an infinite mean SNR is a loss-free link (the UE client's snr=None)
    snr = SnrProcess(args.snr_mean, args.snr_std, args.snr_rho, seed=args.seed) if math.isfinite(args.snr_mean) else None
    return serving.UEClient(model, tokenizer, args.connect, split=split_for_snr or args.split, wire=args.wire,
                            uplink=uplink, snr=snr, timeout_s=args.timeout, sleep_air=args.sleep_air)


def describe_link(args: argparse.Namespace) -> str:
    if args.link == "none" or args.snr_mean == math.inf and args.snr_std == 0:
        return "link none (loss-free)"
    t = args.template
    snr = (f"SNR {args.snr_mean:g} dB" if args.snr_std == 0 else
           f"SNR AR(1) mean {args.snr_mean:g} dB, std {args.snr_std:g} dB, rho {args.snr_rho:g}")
    return (f"link {args.link}: {t.modulation}, {t.fading}{f' m={t.nakagami_m:g}' if t.fading == 'nakagami' else ''}, "
            f"packets of {t.elements_per_packet} x {t.bits_per_element} bits + {t.header_bits}, "
            f"{t.bandwidth_hz / 1e6:g} MHz; {snr}")


def print_request(r: serving.RequestReport, sleep_air: bool) -> None:
    loss = ("loss-free" if not math.isfinite(r.snr_db) or r.link == "none" else
            f"PER {r.packet_error_rate:.4g}" if r.link == "erasure" else f"BER {r.bit_error_rate:.3g}")
    print(f"request {r.request}: split {r.split} ({r.split} layers on the UE, {r.layers_on_edge} on the edge); "
          f"SNR {r.snr_db:.1f} dB, {loss}; {r.wire} on the wire; {r.prompt_tokens} prompt tokens")
    tpot = f"{1e3 * r.tpot_s:.1f} ms" if math.isfinite(r.tpot_s) else "n/a"
    print(f"  time to first token {1e3 * r.ttft_s:.1f} ms, time per output token {tpot}, "
          f"{r.tokens_per_s:.1f} tokens/s ({len(r.tokens)} tokens; compute UE {1e3 * r.ue_compute_s:.0f} ms, "
          f"edge {1e3 * r.edge_compute_s:.0f} ms)")
    per_token = f", {r.uplink_bytes_per_token:.0f} B per token after it" if math.isfinite(r.uplink_bytes_per_token) else ""
    flips = f", {r.bits_flipped} bits flipped" if r.link == "bitflip" else ""
    air = (f"; on air {r.air_bits / 8e3:.1f} kB, {1e3 * r.air_s:.2f} ms at the link rate "
           f"({'slept' if sleep_air else 'accounted, not slept'})" if r.air_bits else "")
    print(f"  bytes on the wire {r.wire_bytes} (uplink {r.uplink_bytes}: prompt {r.uplink_bytes_prefill}{per_token}; "
          f"downlink {r.downlink_bytes}); packets lost {r.packets_lost} of {r.packets}{flips}{air}")
    print(f"  text: {r.text!r}")


def run_ue(args: argparse.Namespace, split_for_snr=None) -> int:
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    client = build_client(args, model, tokenizer, split_for_snr)
    sm = client.split_model
    header = {"model": args.model, "n_layers": sm.n_layers, "dtype": str(sm.dtype).removeprefix("torch."),
              "device": str(sm.device), "edge": args.connect, "wire": args.wire, "link": args.link,
              "snr_mean_db": args.snr_mean, "snr_std_db": args.snr_std, "snr_rho": args.snr_rho, "seed": args.seed,
              "split": "policy" if split_for_snr else args.split, "max_new_tokens": args.max_new_tokens}
    if not args.json:
        print(f"UE: model {args.model} ({sm.n_layers} decoder layers, {header['dtype']}, {sm.device}) -> edge "
              f"{args.connect}; {describe_link(args)}; seed {args.seed}", flush=True)
    reports = []
    with client:
        for prompt in args.prompts:
            report = client.generate(prompt, args.max_new_tokens)
            reports.append(report)
            if not args.json:
                print_request(report, args.sleep_air)
    if args.json:
        print(json.dumps({**header, "requests": [r.to_dict() for r in reports]}))
    return 0


def main(argv=None, split_for_snr=None) -> int:
    args = parse_args(argv)
    try:
        check_numbers(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.role == "ue" and args.policy and split_for_snr is None:
            from layersplit.policies import split_chooser

            split_for_snr = split_chooser(args.policy)
        return run_edge(args) if args.role == "edge" else run_ue(args, split_for_snr)
    except UserError as e:
        print(f"serve.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
