"""Real split inference over a socket: an edge server and a UE client in two processes.

The UE runs the embeddings and decoder layers 0..SPLIT (--split N cuts after 0-based layer N: N + 1
layers on the UE, as in add_noise.py and everywhere in this project), sends each step's hidden state
to the edge as packets in a wire dtype (fp32, fp16, bf16, int8 with a per-token scale) through a
simulated uplink that loses packets (erasure) or flips bits (bitflip) at the request's SNR, drawn
from the request's seeded stream by the same impairment engine as add_noise.py's split hook; the
edge zero-fills lost packets, runs the remaining layers and the LM head, and returns the greedy next
token. Both keep KV caches, so each decoding step sends one token's activation. With a loss-free
link (--link none, or --snr-db inf) and --wire fp32 the tokens are exactly the single-process model's.

    python serve.py edge                                   # terminal 1: the edge on 127.0.0.1:8765, every split
    python serve.py ue --prompt "The capital of France is" # terminal 2: split 4, fp16, erasure at an AR(1) SNR
    python serve.py ue --prompt "The capital of France is" --link none --wire fp32   # = the single-process tokens
    python serve.py ue --prompt "One" --prompt "Two" --split 8 --wire int8 --max-new-tokens 64 --json
    python serve.py ue --prompt "Hello" --snr-db 15 --modulation 16qam --fading nakagami --sleep-air
    python serve.py ue --prompt "Hello" --snr-db 12 --protect 4   # each token's 4 largest elements protected
    python serve.py ue --prompt "Hello" --policy runs/LayerSplit-Wireless-v0/ppo_s0  # split per request from its SNR
    python serve.py ue --prompt "Hello" --policy runs/LayerSplit-Protect-v0/ppo_s0    # split and K chosen per request
    python serve.py edge --port 0 --splits 0-8 --max-sessions 2 --max-queue 4     # port 0: any free port, printed
    export LAYERSPLIT_EDGE_TOKEN=$(python -c "import secrets; print(secrets.token_urlsafe(24))")   # on both machines
    python serve.py edge --host 0.0.0.0 --model meta-llama/Llama-2-7b-hf --device cuda   # reachable from other hosts
    python serve.py ue --connect EDGE_HOST:8765 --model meta-llama/Llama-2-7b-hf          # sends the token it reads
    python serve.py edge --device cuda --decode compiled --max-context 512   # static caches of 512 tokens, CUDA graphs

Every constant below can be overridden from the command line (see `python serve.py edge --help`,
`python serve.py ue --help`); the edge's limits are layersplit/serving/protocol.py's.

The edge listens on loopback unless --host says otherwise. Beyond loopback, anyone who reaches its
port can run the model on its compute unless it has a token (--token or LAYERSPLIT_EDGE_TOKEN, the
same on both sides); the token and the activations cross the network unencrypted, so on a network
you do not trust run both ends through a VPN or an SSH tunnel (ssh -L 8765:127.0.0.1:8765 EDGE_HOST).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from layersplit import UserError, cli
from layersplit.channel import SNR_MEAN_DB, SNR_RHO, SNR_STD_DB
from layersplit.channel_cli import add_link_arguments, link_config_from_args
from layersplit.grid import SERVED_LINKS
from layersplit.models import EMBEDDED_MODEL
from layersplit.serving import protocol, roles
from layersplit.wire import WIRE_FORMATS, wire_bits

# --- both sides -------------------------------------------------------------------------------
MODEL = EMBEDDED_MODEL  # embedded SmolLM2-135M, a local folder, or a Hugging Face id (both sides load the same)
THREADS = 0  # torch CPU threads of this process; 0: torch's default (one per core)
# How each side decodes (layersplit/segments.py DECODE_MODES); each side picks its own, nothing of it
# crosses the socket. eager: a growing KV cache, the model's forward every step (the reference);
# static: a fixed-length KV cache written in place; compiled: that cache and a torch.compile'd
# one-token step, on CUDA replayed as a CUDA graph (the first step of each split compiles: tens of
# seconds). auto: compiled on CUDA, where a step is otherwise bound by launching hundreds of small
# kernels from Python; eager on a CPU, where compiling costs tens of seconds and a static cache
# makes each step attend over its whole length, so CPU numbers stay what they were.
DECODE = "auto"
DECODE_CHOICES = ("auto", "eager", "static", "compiled")  # auto and segments.DECODE_MODES (that module needs torch)
# --- the edge ---------------------------------------------------------------------------------
SPLITS = "all"  # the splits the edge serves: all = 0..L-1
# --- the UE -----------------------------------------------------------------------------------
PROMPT = "The capital of France is"  # used when no --prompt is given
MAX_NEW_TOKENS = 32  # greedy tokens per request (fewer when the model ends the text)
SPLIT = 4  # 0-based: 5 layers on the UE, the paper's fixed baseline (the rest on the edge)
WIRE = "fp16"  # activations on the wire: fp32, fp16, bf16, int8 (fp16: the channel's default 16 bits)
LINK = (
    "erasure"  # none (loss-free), erasure (packets lost at the PER and zero-filled), bitflip (no CRC), nr (5G NR TBs)
)
SEED = 0  # seeds the SNR process and every packet loss (one stream per request)
# Each token's K largest-magnitude elements also cross a protected path (as add_noise.py --protect, in the
# design of layersplit/protect_arq.py's PROTECT_PATH), at the cost of its bits on air. 0: no protected path.
PROTECT = 0


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser(__doc__, prog="serve.py")
    sub = p.add_subparsers(dest="role", required=True, metavar="{edge,ue}")

    def common(q: argparse.ArgumentParser) -> None:
        cli.add_run_arguments(q, model=MODEL)
        q.add_argument(
            "--threads",
            type=cli.threads,
            default=THREADS,
            help="torch CPU threads of this process, 0 for torch's default of one per core; with the UE and "
            "the edge on one machine, or a loaded one, 1 each avoids OpenMP threads waiting on each other",
        )
        q.add_argument(
            "--decode",
            choices=DECODE_CHOICES,
            default=DECODE,
            help="eager: a growing KV cache, the model's forward each step; static: a fixed-length KV cache "
            "(the edge's holds --max-context tokens, the UE's the prompt and --max-new-tokens); "
            "compiled: static and a compiled decoding step (CUDA graphs on CUDA); auto: compiled on "
            "CUDA, eager elsewhere. Each side chooses its own",
        )
        q.add_argument(
            "--token",
            help=f"the edge's shared secret ({protocol.MIN_TOKEN_CHARS}.."
            f"{protocol.MAX_TOKEN_CHARS} printable ASCII characters); the same on the edge "
            f"and every UE. Default: ${protocol.TOKEN_ENV}, which unlike an option does not "
            "show in ps. It crosses the network unencrypted",
        )

    e = sub.add_parser(
        "edge",
        help="run the edge server: the last layers and the LM head",
        formatter_class=cli.HelpFormatter,
        description="The edge server: runs decoder layers split + 1..L-1 and the LM head for every UE session.",
    )
    e.add_argument(
        "--host",
        default=protocol.DEFAULT_HOST,
        help="address to listen on. The default, loopback, is reachable from this machine only; any other "
        "(0.0.0.0: every interface) lets whoever reaches the port use the model and this machine's "
        "compute, unless a --token is set (a warning says so)",
    )
    e.add_argument("--port", type=cli.integer, default=protocol.DEFAULT_PORT, help="TCP port, 0 for any free one")
    common(e)
    e.add_argument(
        "--splits",
        type=cli.split_list,
        default=SPLITS,
        help="the 0-based splits this edge serves (split n: n + 1 layers on the UE): all (0..L-1) or like 0-8,14",
    )
    e.add_argument(
        "--max-sessions", type=cli.positive_int, default=protocol.MAX_SESSIONS, help="sessions served at once"
    )
    e.add_argument(
        "--max-queue",
        type=cli.integer,
        default=protocol.MAX_QUEUE,
        help="connections queued when all sessions are busy; more are refused with a 'busy' error",
    )
    e.add_argument(
        "--queue-timeout",
        type=cli.positive_float,
        default=protocol.QUEUE_TIMEOUT_S,
        help="seconds a queued connection waits before a 'busy' refusal",
    )
    e.add_argument(
        "--idle-timeout",
        type=cli.positive_float,
        default=protocol.IDLE_TIMEOUT_S,
        help="seconds without a complete frame before a connection is dropped",
    )
    e.add_argument(
        "--evict-idle",
        type=cli.positive_float,
        default=protocol.EVICT_IDLE_S,
        help="while a connection waits for a session, a session whose UE has sent nothing for this many "
        "seconds since the edge's last answer is closed to make room; shorter than --queue-timeout",
    )
    e.add_argument(
        "--handshake-timeout",
        type=cli.positive_float,
        default=protocol.HANDSHAKE_TIMEOUT_S,
        help="seconds a new connection has to send its OPEN; until then it holds no session",
    )
    e.add_argument(
        "--max-handshakes",
        type=cli.positive_int,
        default=protocol.MAX_HANDSHAKES,
        help="connections waiting for their OPEN at once; a newer one drops the oldest",
    )
    e.add_argument(
        "--max-frame-bytes",
        type=cli.positive_int,
        default=protocol.MAX_FRAME_BYTES,
        help="largest frame accepted; bigger ones are refused and the connection closed",
    )
    e.add_argument(
        "--max-context",
        type=cli.positive_int,
        default=protocol.MAX_CONTEXT,
        help="most tokens (prompt + generated) one session may hold in its KV cache",
    )
    e.add_argument(
        "--prefill-chunk",
        type=cli.non_negative_int,
        default=protocol.PREFILL_CHUNK,
        help="run a prompt's activation in chunks of this many tokens, taking turns with the other "
        "sessions, so that their long prompts delay a session by one chunk each; 0: each prompt in "
        "one forward",
    )
    e.add_argument("--quiet", action="store_true", help="log only errors")

    u = sub.add_parser(
        "ue",
        help="run a UE client: the first layers, the uplink, the requests",
        formatter_class=cli.HelpFormatter,
        description="A UE client: runs the embeddings and decoder layers 0..--split, sends the "
        "activations through the simulated uplink to the edge and prints what it measured.",
    )
    default_edge = f"{protocol.DEFAULT_HOST}:{protocol.DEFAULT_PORT}"
    u.add_argument("--connect", default=default_edge, metavar="HOST:PORT", help="the edge")
    u.add_argument("--prompt", action="append", help=f"a prompt; repeat for several requests (default: {PROMPT!r})")
    u.add_argument("--max-new-tokens", type=cli.positive_int, default=MAX_NEW_TOKENS, help="greedy tokens per request")
    u.add_argument(
        "--split",
        type=cli.integer,
        default=SPLIT,
        help="0-based decoder layer after which the link sits: split n runs n + 1 layers on the UE, the "
        "rest and the LM head on the edge",
    )
    u.add_argument(
        "--policy",
        metavar="RUN_DIR",
        help="choose each request's split from its SNR with a policy trained on LayerSplit-Wireless-v0, or its "
        "split and K on LayerSplit-Protect-v0 (a run folder of train_rsm.py, e.g. "
        "runs/LayerSplit-Wireless-v0/ppo_s0); overrides --split (and --protect)",
    )
    u.add_argument(
        "--trust-zip",
        action="store_true",
        help="also read a --policy folder's Stable-Baselines3 policy.zip (when it has no "
        "policy.safetensors): loading one unpickles it, which can run code stored in it; only for "
        "folders you made",
    )
    u.add_argument(
        "--wire",
        choices=list(WIRE_FORMATS),
        default=WIRE,
        help="dtype of the activations on the wire; int8 adds a float32 scale per token",
    )
    u.add_argument(
        "--link",
        choices=SERVED_LINKS,
        default=LINK,
        help="none: loss-free; erasure: packets lost with the channel's PER and zero-filled by the edge; "
        "bitflip: payload bits flipped at the BER, no CRC; nr: 5G NR transport blocks lost with their "
        "residual BLER after HARQ (layersplit/nr.py)",
    )
    g = u.add_argument_group(
        "SNR of each request: an AR(1) process in dB, one step per request (the wireless "
        "environment's, layersplit/channel.py)"
    )
    g.add_argument("--snr-mean", type=cli.snr_db_or_inf, help=f"stationary mean Es/N0 in dB (default: {SNR_MEAN_DB:g})")
    g.add_argument(
        "--snr-std",
        type=snr_std,
        help=f"stationary standard deviation in dB, 0 for a fixed SNR (default: {SNR_STD_DB:g})",
    )
    g.add_argument(
        "--snr-rho", type=correlation, help=f"lag-1 correlation between consecutive requests (default: {SNR_RHO:g})"
    )
    add_link_arguments(u.add_argument_group("physical link (the erasure and bitflip links)"), snr_db_default=None)
    cli.bound_link_arguments(u, snr=cli.snr_db_or_inf)  # inf: a loss-free link
    u.set_defaults(bits_per_element=None)  # set by --wire
    for action in u._actions:  # the shared link options, as this client reads them
        if action.dest == "snr_db":
            action.help = (
                "a fixed Es/N0 in dB for every request instead of the AR(1) process; inf: a loss-free link "
                "(default: the process)"
            )
        elif action.dest == "bits_per_element":
            action.help = argparse.SUPPRESS  # --wire sets it
    u.add_argument(
        "--protect",
        type=cli.non_negative_int,
        default=PROTECT,
        metavar="K",
        help="also send each token's K largest-magnitude elements (index and value) over a protected path "
        "(layersplit/protect_arq.py's PROTECT_PATH: NR transport blocks with HARQ), its expected bits on air "
        "counted; 0..the model's hidden size",
    )
    u.add_argument("--seed", type=cli.seed, default=SEED, help="seed of the SNR process and the packet losses")
    u.add_argument(
        "--sleep-air",
        action="store_true",
        help="really wait each transfer's time on air at the link rate before sending it (default: only report it)",
    )
    u.add_argument(
        "--timeout", type=cli.positive_float, default=protocol.CLIENT_TIMEOUT_S, help="seconds to wait for the edge"
    )
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
        protocol.parse_address(args.connect)
    except UserError as e:
        p.error(str(e))
    args.prompts = args.prompt or [PROMPT]
    bits = wire_bits(args.wire)
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
    if (
        not (math.isfinite(args.snr_mean) or args.snr_mean == math.inf)
        or not args.snr_std >= 0
        or not -1 <= args.snr_rho <= 1
        or math.isinf(args.snr_std)
    ):
        p.error("the SNR process needs a finite (or +inf) mean, a finite std >= 0 and -1 <= rho <= 1")
    try:  # the packet, fading and bandwidth options; the SNR is set per request
        args.snr_db = args.snr_mean if math.isfinite(args.snr_mean) else SNR_MEAN_DB
        args.template = link_config_from_args(args)
    except ValueError as e:
        p.error(str(e))
    return args


# --- bounds on the options: limits of validity, not settings ---------------------------------------
# The SNR options' range is cli.SNR_DB_MIN..SNR_DB_MAX (and inf for --snr-db and --snr-mean: a
# loss-free link). The spread is bounded too, so that the AR(1) process stays within +-300 dB
# (6.7 std), where 10^(SNR/10) neither overflows nor underflows the link rate to 0.
MAX_SNR_STD_DB = 30.0


def snr_std(text: str) -> float:
    value = cli.finite_float(text)
    if not 0 <= value <= MAX_SNR_STD_DB:
        raise argparse.ArgumentTypeError(f"{value:g} dB is out of range: use 0..{MAX_SNR_STD_DB:g} dB")
    return value


def correlation(text: str) -> float:
    value = cli.finite_float(text)
    if not -1 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is not a correlation: use -1..1")
    return value


def check_numbers(args: argparse.Namespace) -> None:
    """What the argparse types cannot check alone, which would otherwise end in a traceback (an
    OverflowError for --port 99999 or --idle-timeout inf): a UserError, which main reports in one line
    with exit status 2, before any model is loaded. The token too: --token, else the environment's (an
    empty or malformed one is refused, not taken for none). Seeds, threads, SNRs and the link's shape
    are bounded by their types (layersplit/cli.py)."""
    if args.token is None and protocol.TOKEN_ENV in os.environ:
        args.token = protocol.check_token(os.environ[protocol.TOKEN_ENV], protocol.TOKEN_ENV)
    args.token = protocol.check_token(args.token, "--token")
    if args.role == "edge":
        protocol.check_port(args.port, "--port")
        for option in ("queue_timeout", "idle_timeout", "handshake_timeout", "evict_idle"):
            protocol.check_timeout(getattr(args, option), "--" + option.replace("_", "-"))
        if args.evict_idle >= args.queue_timeout:
            raise UserError(
                f"--evict-idle {args.evict_idle:g} must be shorter than --queue-timeout "
                f"{args.queue_timeout:g}: a waiting UE would be refused before any idle session is evicted"
            )
        return
    protocol.check_timeout(args.timeout, "--timeout")
    # --protect's upper bound, the hidden size, is checked once the model is loaded (UEClient)
    if args.elements_per_packet > protocol.MAX_ELEMENTS_PER_PACKET:  # the edge would refuse the OPEN
        raise UserError(
            f"--elements-per-packet {args.elements_per_packet} is too large: use 1..{protocol.MAX_ELEMENTS_PER_PACKET}"
        )


def main(argv=None, split_for_snr=None) -> int:
    args = parse_args(argv)

    def body() -> int:
        check_numbers(args)
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        chooser = split_for_snr
        if args.role == "ue" and args.policy and chooser is None:
            from layersplit.policies import split_chooser

            chooser = split_chooser(args.policy, trust_zip=args.trust_zip)
        return roles.run_edge(args) if args.role == "edge" else roles.run_ue(args, chooser)

    return cli.run_main("serve.py", body)


if __name__ == "__main__":
    sys.exit(main())
