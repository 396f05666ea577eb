"""serve.py's two roles, run from its checked arguments: the edge (run_edge) and the UE (run_ue: its
client, and the text it prints for each request)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys

from .. import cli, links
from . import protocol


# --- the edge -----------------------------------------------------------------------------------
def run_edge(args: argparse.Namespace) -> int:
    """Load the model, serve until SIGTERM or Ctrl-C, print the edge's counts."""
    from ..models import find_decoder_layers, load_model
    from .edge import EdgeServer
    from .session import format_splits

    logging.basicConfig(
        level=logging.ERROR if args.quiet else logging.INFO, stream=sys.stderr, format="%(asctime)s edge %(message)s"
    )
    if args.token is None and not protocol.is_loopback(args.host):  # before the model loads: seen at once
        print(
            f"serve.py: warning: the edge listens on {args.host or 'every interface'}, beyond loopback, without a "
            f"token: anyone who reaches port {args.port} can use it (set {protocol.TOKEN_ENV} or --token)",
            file=sys.stderr,
            flush=True,
        )
    model, _ = load_model(args.model, device=args.device, dtype=args.dtype)
    splits = cli.parse_splits(args.splits, len(find_decoder_layers(model)))
    server = EdgeServer(
        model,
        host=args.host,
        port=args.port,
        splits=splits,
        max_sessions=args.max_sessions,
        max_queue=args.max_queue,
        queue_timeout_s=args.queue_timeout,
        idle_timeout_s=args.idle_timeout,
        max_frame_bytes=args.max_frame_bytes,
        max_context=args.max_context,
        handshake_timeout_s=args.handshake_timeout,
        max_handshakes=args.max_handshakes,
        decode=args.decode,
        token=args.token,
        evict_idle_s=args.evict_idle,
        prefill_chunk=args.prefill_chunk,
    )
    sm = server.split_model
    print(
        f"edge listening on {server.address} (model {args.model}: {sm.n_layers} decoder layers, "
        f"{str(sm.dtype).removeprefix('torch.')}, {sm.device}, {server.decode} decoding; serves splits "
        f"{format_splits(splits)}, 0-based; "
        f"{args.max_sessions} sessions at once, {args.max_queue} queued; "
        f"{'OPEN needs the token' if args.token else 'no token'})",
        flush=True,
    )

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
def build_client(args: argparse.Namespace, model, tokenizer, split_for_snr=None):
    """The UE client of the arguments; `split_for_snr(snr_db) -> split`, when given, chooses each
    request's split instead of the fixed --split."""
    from ..channel import SnrProcess
    from .simulated_uplink import Uplink
    from .ue import UEClient

    uplink = Uplink(args.link, args.template, seed=args.seed)
    # an infinite mean SNR is a loss-free link (the UE client's snr=None)
    snr = (
        SnrProcess(args.snr_mean, args.snr_std, args.snr_rho, seed=args.seed) if math.isfinite(args.snr_mean) else None
    )
    return UEClient(
        model,
        tokenizer,
        args.connect,
        split=split_for_snr or args.split,
        wire=args.wire,
        uplink=uplink,
        snr=snr,
        timeout_s=args.timeout,
        sleep_air=args.sleep_air,
        protect=args.protect,
        decode=args.decode,
        token=args.token,
    )


def describe_link(args: argparse.Namespace) -> str:
    kind = links.link_class(args.link, links.SERVED)
    if not kind.physical or args.snr_mean == math.inf and args.snr_std == 0:
        return f"link {links.LossFreeLink.name} ({links.LossFreeLink().summary()})"
    snr = (
        f"SNR {args.snr_mean:g} dB"
        if args.snr_std == 0
        else f"SNR AR(1) mean {args.snr_mean:g} dB, std {args.snr_std:g} dB, rho {args.snr_rho:g}"
    )
    return f"link {args.link}: {kind(args.template).summary()}; {snr}"


def print_request(r, sleep_air: bool) -> None:
    """One request's report (serving.ue.RequestReport) as text."""
    kind = links.link_class(r.link, links.SERVED)
    loss = "loss-free" if not math.isfinite(r.snr_db) else kind.loss_text(r.packet_error_rate, r.bit_error_rate)
    protected = f"; {r.protect} elements per token protected" if r.protect else ""
    print(
        f"request {r.request}: split {r.split} ({r.split + 1} layers on the UE, {r.layers_on_edge} on the edge); "
        f"SNR {r.snr_db:.1f} dB, {loss}; {r.wire} on the wire{protected}; {r.prompt_tokens} prompt tokens"
    )
    tpot = f"{1e3 * r.tpot_s:.1f} ms" if math.isfinite(r.tpot_s) else "n/a"
    print(
        f"  time to first token {1e3 * r.ttft_s:.1f} ms, time per output token {tpot}, "
        f"{r.tokens_per_s:.1f} tokens/s ({len(r.tokens)} tokens; compute UE {1e3 * r.ue_compute_s:.0f} ms, "
        f"edge {1e3 * r.edge_compute_s:.0f} ms)"
    )
    per_token = (
        f", {r.uplink_bytes_per_token:.0f} B per token after it" if math.isfinite(r.uplink_bytes_per_token) else ""
    )
    flips = f", {r.bits_flipped} bits flipped" if kind.flips_bits else ""
    protected_air = f" (protected path {r.protected_air_bits / 8e3:.2f} kB)" if r.protected_air_bits else ""
    air = (
        f"; on air {r.air_bits / 8e3:.1f} kB{protected_air}, {1e3 * r.air_s:.2f} ms at the link rate "
        f"({'slept' if sleep_air else 'accounted, not slept'})"
        if r.air_bits
        else ""
    )
    print(
        f"  bytes on the wire {r.wire_bytes} (uplink {r.uplink_bytes}: prompt {r.uplink_bytes_prefill}{per_token}; "
        f"downlink {r.downlink_bytes}); packets lost {r.packets_lost} of {r.packets}{flips}{air}"
    )
    if r.stop_message:
        print(f"  ended by the edge ({r.stop_reason}) after {len(r.tokens)} tokens: {r.stop_message}")
    print(f"  text: {r.text!r}")


def run_ue(args: argparse.Namespace, split_for_snr=None) -> int:
    """Load the model, send every prompt to the edge in turn, print what each request measured (--json: one object)."""
    from ..models import load_model

    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    client = build_client(args, model, tokenizer, split_for_snr)
    sm = client.split_model
    header = {
        "model": args.model,
        "n_layers": sm.n_layers,
        "dtype": str(sm.dtype).removeprefix("torch."),
        "device": str(sm.device),
        "edge": args.connect,
        "wire": args.wire,
        "link": args.link,
        "snr_mean_db": args.snr_mean,
        "snr_std_db": args.snr_std,
        "snr_rho": args.snr_rho,
        "seed": args.seed,
        "split": "policy" if split_for_snr else args.split,
        "protect": args.protect,
        "max_new_tokens": args.max_new_tokens,
        "decode": client.decode,
    }
    if not args.json:
        print(
            f"UE: model {args.model} ({sm.n_layers} decoder layers, {header['dtype']}, {sm.device}, "
            f"{client.decode} decoding) -> edge "
            f"{args.connect}; {describe_link(args)}; seed {args.seed}",
            flush=True,
        )
    reports, ended = [], None
    with client:
        for prompt in args.prompts:
            try:
                report = client.generate(prompt, args.max_new_tokens)
            except protocol.EdgeError as e:  # after some tokens: print them, then the error
                if e.report is None:
                    raise
                report, ended = e.report, e
            reports.append(report)
            if not args.json:
                print_request(report, args.sleep_air)
            if ended is not None:
                break
    if args.json:
        print(json.dumps({**header, "requests": [r.to_dict() for r in reports]}))
    if ended is not None:
        raise ended  # one line and exit status 2, as when the edge refuses before any token
    return 0
