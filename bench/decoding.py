"""Benchmark of split inference over a socket against the single-process model, measured in one run.

    python bench/decoding.py                              # about 2 minutes on 2 CPU cores
    python bench/decoding.py --prompts 2 --max-new-tokens 16 --rounds 1 --split 8
    python bench/decoding.py --model meta-llama/Llama-2-7b-hf --device cuda
    python bench/decoding.py --model random:llama-2-7b --device cuda --decode compiled --wires bf16,fp16
    python bench/decoding.py --fairness --rounds 2        # the next UE behind three maximal prompts, about 3 minutes

The UE runs in this process, the edge in a second process (`python serve.py edge`) on loopback,
with a loss-free link so that every run generates the same number of tokens. On the same prompts,
interleaved round by round so that a change in the machine's load hits every path alike, it prints:
0. the warm-up time of each path, first (with compiled decoding, compiling its steps);
1. the single-process model (greedy, KV cache) against the socket path in each wire dtype: time to
   first token, time per output token, tokens per second, and the socket path's overhead as ratios;
   whether the tokens are identical to the single-process model's (they must be for fp32);
2. per wire dtype: bytes per token on the wire (uplink, frames and packet headers included, beside
   the bare activation), bytes of the prompt's activation per prompt token, and where the time of a
   decoding step goes (UE layers, edge layers, the rest: serialisation, socket, Python);
3. decoding against the memory bound: the weights a decoding step reads over the time per output
   token (bytes/s) beside the device's memory bandwidth measured in the same run (a large copy),
   and the bound, weight bytes / bandwidth, for each path.
Both processes decode in the mode --decode (serve.py's; auto: compiled on CUDA, eager on a CPU);
in another mode than eager the single-process tokens are also checked against eager decoding's.

--fairness measures something else: three sessions each send a maximal prompt (the edge's context,
MAX_CONTEXT tokens), and FAIRNESS_SETTLE_S later a UE sends a short one; its time to first token
and the time until the three long prompts have their tokens, per edge --prefill-chunk (0: each
prompt in one forward, so the UE waits for all three; else they take turns a chunk at a time).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from layersplit import UserError, cli
from layersplit.cli import writable_file
from layersplit.models import EMBEDDED_MODEL
from serve import DECODE, DECODE_CHOICES
from layersplit.serving import protocol
from layersplit.wire import WIRE_FORMATS

ROOT = Path(__file__).resolve().parents[1]

MODEL = EMBEDDED_MODEL  # the model both processes load
PROMPTS = (  # the same prompts for every path (a few lengths, so the prompt's bytes show)
    "The capital of France is",
    "Photosynthesis is the process by which green plants and some other organisms use sunlight to",
    "In 1969, the Apollo 11 mission landed the first humans on the Moon. The commander of the mission was",
    "A wireless uplink carries the hidden state of a language model from a phone to an edge server, where",
)
N_PROMPTS = len(PROMPTS)  # how many of PROMPTS to use
MAX_NEW_TOKENS = 16  # greedy tokens per request
ROUNDS = 3  # every path runs every prompt once per round; medians over prompts and rounds
SPLIT = 4  # 0-based: 5 layers on the UE (the paper's fixed baseline)
WIRES = tuple(WIRE_FORMATS)  # fp32, fp16, bf16, int8
# torch CPU threads of each process (this one: the UE and the single-process model; the edge). 1: on
# the shared 2-core machine, 2 threads per process made a SmolLM2 prefill 20x and a decoding step
# 3.5x slower whenever other jobs ran (OpenMP barriers wait for descheduled threads); with one
# thread each, the single-process model and the split path each compute on one core at a time.
THREADS = 1
EDGE_START_TIMEOUT_S = 300  # the edge process loads the model before it listens
# How long each process waits for the other during a step (the UE's --timeout, the edge's
# --idle-timeout): a compiled decoding step compiles at its first call, tens of seconds per split and
# side, minutes for a large model on a CPU.
STEP_TIMEOUT_S = 1800
# The copy that measures the memory bandwidth: far larger than any cache (an H200's L2 is 50 MB).
BANDWIDTH_BYTES = {"cuda": 1 << 30, "cpu": 1 << 28}
BANDWIDTH_REPEATS = 5  # the best of these copies
FAIRNESS_LONG = 3  # --fairness: sessions that each send a maximal prompt just before the measured UE's
FAIRNESS_CHUNKS = (0, protocol.PREFILL_CHUNK)  # --fairness: the edge's --prefill-chunk, whole prompts then the default
FAIRNESS_SETTLE_S = 0.2  # --fairness: from sending the long prompts to the UE's OPEN: they are in the edge's line
FAIRNESS_WIRE, FAIRNESS_PACKET = "fp16", 64  # --fairness: the long prompts' wire dtype and elements per packet
FAIRNESS_OUTPUT = "results/serve_fairness.json"  # --fairness: the measured times (what the README quotes)


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    cli.add_run_arguments(p, model=MODEL)
    p.add_argument(
        "--prompts", type=cli.integer, default=N_PROMPTS, help=f"how many of the built-in prompts (1..{len(PROMPTS)})"
    )
    p.add_argument("--max-new-tokens", type=cli.integer, default=MAX_NEW_TOKENS, help="tokens per request")
    p.add_argument("--rounds", type=cli.integer, default=ROUNDS, help="repetitions of every path and prompt")
    p.add_argument(
        "--split", type=cli.integer, default=SPLIT, help="0-based split: split n runs n + 1 layers on the UE"
    )
    p.add_argument("--wires", default=",".join(WIRES), help="wire dtypes to measure")
    p.add_argument(
        "--threads", type=cli.threads, default=THREADS, help="torch CPU threads per process, 0: torch's default"
    )
    p.add_argument(
        "--decode",
        choices=DECODE_CHOICES,
        default=DECODE,
        help="how both processes decode (serve.py --decode): eager, static (a fixed-length KV cache), "
        "compiled (and a compiled step, CUDA graphs on CUDA); auto: compiled on CUDA, eager elsewhere",
    )
    p.add_argument(
        "--fairness",
        action="store_true",
        help=f"instead: a UE's time to first token behind {FAIRNESS_LONG} maximal prompts, per edge "
        f"--prefill-chunk ({', '.join(map(str, FAIRNESS_CHUNKS))})",
    )
    p.add_argument(
        "--fairness-output",
        type=writable_file,
        default=str(ROOT / FAIRNESS_OUTPUT),
        help="--fairness: the times as JSON",
    )
    args = p.parse_args(argv)
    if not 1 <= args.prompts <= len(PROMPTS) or args.max_new_tokens < 2 or args.rounds < 1:
        p.error(f"--prompts must be in 1..{len(PROMPTS)}, --max-new-tokens >= 2, --rounds >= 1")
    args.wires = [w.strip() for w in args.wires.split(",")]
    if any(w not in WIRE_FORMATS for w in args.wires):
        p.error(f"--wires: choose among {', '.join(WIRE_FORMATS)}")
    return args


def start_edge(args, max_context: int, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """The edge process; its static caches hold max_context tokens, read whole at every step. extra:
    more options (a later one overrides an earlier)."""
    edge = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "serve.py"),
            "edge",
            "--port",
            "0",
            "--model",
            args.model,
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--quiet",
            "--max-sessions",
            str(len(args.wires)),
            "--threads",
            str(args.threads),
            "--decode",
            args.decode,
            "--max-context",
            str(max_context),
            "--idle-timeout",
            str(STEP_TIMEOUT_S),
            *extra,
        ],
        # on loopback without a token, whatever this shell exports: the UE here sends none
        env={k: v for k, v in os.environ.items() if k != protocol.TOKEN_ENV},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + EDGE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = edge.stdout.readline()
        match = re.search(r"listening on (\S+):(\d+)", line)
        if match:
            return edge, f"{match[1]}:{match[2]}"
        if not line and edge.poll() is not None:
            break
    edge.kill()
    raise UserError("the edge process did not start (run `python serve.py edge --port 0` to see why)")


def single(split_model, tokenizer, prompt: str, n: int, decode: str) -> dict:
    from layersplit.serving.ue import generate_single_process

    tokens, times, start = generate_single_process(split_model, tokenizer, prompt, n, decode)
    return {
        "tokens": tokens,
        "ttft": times[0] - start,
        "tpot": (times[-1] - times[0]) / (len(tokens) - 1),
        "seconds": times[-1] - start,
    }


def socket_path(client, prompt: str, n: int) -> dict:
    r = client.generate(prompt, n)
    steps = len(r.tokens)  # >= 2: the bench's prompts do not end the text at once
    return {
        "tokens": r.tokens,
        "ttft": r.ttft_s,
        "tpot": r.tpot_s,
        "seconds": r.total_s,
        "bytes_per_token": r.uplink_bytes_per_token,
        "prefill_bytes_per_token": r.uplink_bytes_prefill / r.prompt_tokens,
        "ue_step": (r.ue_compute_s - r.ue_prefill_s) / (steps - 1),
        "edge_step": (r.edge_compute_s - r.edge_prefill_s) / (steps - 1),
        "wire_bytes": r.wire_bytes,
    }


def measure_bandwidth(torch, device) -> float:
    """The device's memory bandwidth in bytes/s: a large device-to-device copy, bytes read + written
    over its time, the best of BANDWIDTH_REPEATS."""
    size = BANDWIDTH_BYTES[device.type if device.type in BANDWIDTH_BYTES else "cpu"]
    src = torch.ones(size // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
    dst.copy_(src)  # first touch: page faults, allocation
    sync(device)
    best = math.inf
    for _ in range(BANDWIDTH_REPEATS):
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size / best


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decoding step reads: every parameter once (tied ones once), but of the
    input embedding only one row, unless it is the LM head too (read whole)."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() lists a tied one once
    tied = head is not None and head.weight.data_ptr() == embedding.data_ptr()
    return total if tied else total - embedding.numel() * embedding.element_size()


def stop_edge(edge: subprocess.Popen) -> None:
    edge.send_signal(signal.SIGTERM)
    try:
        edge.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        edge.kill()


def fairness(args, split_model, tokenizer) -> int:
    """--fairness: a short prompt's time to first token behind FAIRNESS_LONG maximal ones."""
    import numpy as np
    import torch

    from layersplit.serving.ue import UEClient
    from layersplit.wire import encode, n_packets

    n, d, k, wire = protocol.MAX_CONTEXT, split_model.hidden_size, FAIRNESS_PACKET, FAIRNESS_WIRE
    ids = torch.randint(split_model.model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(0))
    hidden = split_model.ue_forward(args.split, ids, split_model.new_cache("ue", args.split))[0]
    data, scales = encode(hidden, wire)  # one long prompt's activation, sent by every long session
    rows = protocol.packet_rows(data, n_packets(n * d, k), k * WIRE_FORMATS[wire][0])
    payload = protocol.pack_activation(0, n, d, rows, np.arange(len(rows)), scales)
    opening = {
        "protocol": protocol.PROTOCOL_VERSION,
        "model": split_model.fingerprint,
        "split": args.split,
        "wire": wire,
        "elements_per_packet": k,
    }
    print(
        f"model {args.model} ({split_model.n_layers} decoder layers, {split_model.device}, {args.threads} thread(s) "
        f"per process); split {args.split}; {FAIRNESS_LONG} sessions each send a {n}-token prompt, then "
        f"{FAIRNESS_SETTLE_S:g} s later a UE sends {PROMPTS[0]!r}; {args.rounds} rounds",
        flush=True,
    )
    table, rows = [], []
    load = os.getloadavg()[0]
    for chunk in FAIRNESS_CHUNKS:
        edge, address = start_edge(args, n, ("--max-sessions", str(FAIRNESS_LONG + 1), "--prefill-chunk", str(chunk)))
        host, port = protocol.parse_address(address)
        ttfts, longs = [], []
        try:
            client = UEClient(
                split_model,
                tokenizer,
                address,
                split=args.split,
                wire=wire,
                decode=args.decode,
                timeout_s=STEP_TIMEOUT_S,
            )
            with client:
                client.generate(PROMPTS[0], 2)  # warm-up
            for _ in range(args.rounds):
                socks = []
                for _ in range(FAIRNESS_LONG):
                    sock = socket.create_connection((host, port), timeout=STEP_TIMEOUT_S)
                    protocol.send_json(sock, protocol.OPEN, opening)
                    if protocol.recv_frame(sock, timeout_s=STEP_TIMEOUT_S)[0] != protocol.READY:
                        raise UserError("the edge refused a long session")
                    socks.append(sock)
                start = time.perf_counter()
                for sock in socks:
                    protocol.send_frame(sock, protocol.ACTIVATION, payload)
                time.sleep(FAIRNESS_SETTLE_S)
                with client:
                    ttfts.append(client.generate(PROMPTS[0], 2).ttft_s)
                for sock in socks:
                    if protocol.recv_frame(sock, timeout_s=STEP_TIMEOUT_S)[0] != protocol.TOKEN:
                        raise UserError("a long session got no token")
                longs.append(time.perf_counter() - start)
                for sock in socks:
                    sock.close()
                print(
                    f"--prefill-chunk {chunk}: TTFT {ttfts[-1]:.2f} s, long prompts done after {longs[-1]:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            stop_edge(edge)
        table.append((chunk, statistics.median(ttfts), statistics.median(longs)))
        rows.append(
            {
                "prefill_chunk": chunk,
                "ttft_s": ttfts,
                "long_prompts_done_s": longs,
                "ttft_median_s": table[-1][1],
                "long_prompts_done_median_s": table[-1][2],
            }
        )
    print(f"\n{'--prefill-chunk':>16s}{'short TTFT s':>14s}{'long prompts done s':>21s}  (medians of {args.rounds})")
    for chunk, ttft, done in table:
        print(f"{chunk or '0 (whole)':>16}{ttft:14.2f}{done:21.2f}")
    cli.write_text_atomic(
        args.fairness_output,
        json.dumps(
            {
                "model": args.model,
                "split": args.split,
                "threads_per_process": args.threads,
                "rounds": args.rounds,
                "long_sessions": FAIRNESS_LONG,
                "long_prompt_tokens": n,
                "short_prompt": PROMPTS[0],
                "wire": wire,
                "load_average_at_start": load,
                "rows": rows,
            },
            indent=2,
        ),
    )
    print(f"times in {args.fairness_output}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from layersplit.models import keep_freed_memory, load_model
    from layersplit.segments import SplitModel, resolve_decode, static_capacity
    from layersplit.serving.ue import UEClient

    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    split_model = SplitModel(model)
    split_model.validate_split(args.split)
    args.decode = decode = resolve_decode(args.decode, split_model.device)
    if args.fairness:
        return fairness(args, split_model, tokenizer)
    prompts = PROMPTS[: args.prompts]
    n = args.max_new_tokens
    dtype = str(split_model.dtype).removeprefix("torch.")
    bandwidth = measure_bandwidth(torch, split_model.device)
    weight_bytes = weight_bytes_per_token(model)
    print(
        f"model {args.model} ({split_model.n_layers} decoder layers, {dtype}, {split_model.device}, "
        f"{torch.get_num_threads()} threads); split {args.split} ({args.split + 1} layers on the UE); "
        f"{len(prompts)} prompts x {n} new tokens x {args.rounds} rounds; {decode} decoding; edge in a second "
        f"process on loopback, loss-free link",
        flush=True,
    )
    context = static_capacity(max(len(tokenizer(p).input_ids) for p in prompts) + n)
    edge, address = start_edge(args, context)
    start = time.perf_counter()
    try:
        clients = {
            w: UEClient(
                split_model, tokenizer, address, split=args.split, wire=w, decode=decode, timeout_s=STEP_TIMEOUT_S
            ).connect()
            for w in args.wires
        }
        # warm-up: first calls allocate and pick kernels; a static cache's length compiles its own
        # step, recorded as a CUDA graph at its second call: one whole request per length
        warm = (
            {static_capacity(len(tokenizer(p).input_ids) + n): p for p in prompts}
            if decode != "eager"
            else {0: prompts[0]}
        )
        warmed = {"single process": 0.0, **{f"socket {w}": 0.0 for w in clients}}  # compiling included: printed first,
        for p in warm.values():  # in case a time limit cuts the rest
            tick = time.perf_counter()
            single(split_model, tokenizer, p, n if decode != "eager" else 2, decode)
            warmed["single process"] += time.perf_counter() - tick
            for w, client in clients.items():
                tick = time.perf_counter()
                client.generate(p, n if decode != "eager" else 2)
                warmed[f"socket {w}"] += time.perf_counter() - tick
        print(
            f"warm-up ({decode} decoding{', compiling each step' if decode == 'compiled' else ''}): "
            + ", ".join(f"{path} {seconds:.1f} s" for path, seconds in warmed.items()),
            flush=True,
        )
        # today's tokens: eager decoding, untimed
        eager = (
            {p: single(split_model, tokenizer, p, n, "eager")["tokens"] for p in prompts} if decode != "eager" else {}
        )
        runs = {"single": [], **{w: [] for w in args.wires}}
        reference = {}
        for rnd in range(args.rounds):
            for prompt in prompts:
                runs["single"].append(single(split_model, tokenizer, prompt, n, decode))
                if eager:
                    runs["single"][-1]["same_as_eager"] = runs["single"][-1]["tokens"] == eager[prompt]
                reference.setdefault(prompt, runs["single"][-1]["tokens"])
                for w, client in clients.items():
                    run = socket_path(client, prompt, n)
                    run["identical"] = run["tokens"] == reference[prompt]
                    runs[w].append(run)
            print(
                f"round {rnd + 1}/{args.rounds} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True
            )
        for client in clients.values():
            client.close()
    finally:
        stop_edge(edge)

    def summary(rs):
        tokens = sum(len(r["tokens"]) for r in rs)
        return {
            "ttft": statistics.median(r["ttft"] for r in rs),
            "tpot": statistics.median(r["tpot"] for r in rs),
            "tps": tokens / sum(r["seconds"] for r in rs),
        }

    base = summary(runs["single"])
    print(
        f"\n{'path':16s}{'TTFT ms':>9s}{'TPOT ms':>9s}{'tokens/s':>10s}{'TTFT ratio':>12s}{'TPOT ratio':>12s}"
        f"{'tok/s ratio':>13s}  same tokens as single-process"
    )
    print(
        f"{'single process':16s}{1e3 * base['ttft']:9.1f}{1e3 * base['tpot']:9.1f}{base['tps']:10.2f}"
        f"{1:12.3f}{1:12.3f}{1:13.3f}"
    )
    for w in args.wires:
        s = summary(runs[w])
        same = sum(r["identical"] for r in runs[w])
        print(
            f"{'socket ' + w:16s}{1e3 * s['ttft']:9.1f}{1e3 * s['tpot']:9.1f}{s['tps']:10.2f}"
            f"{s['ttft'] / base['ttft']:12.3f}{s['tpot'] / base['tpot']:12.3f}{s['tps'] / base['tps']:13.3f}"
            f"  {same}/{len(runs[w])} requests"
        )

    d = split_model.hidden_size
    print(
        f"\n{'wire':6s}{'B/token':>9s}{'bare':>7s}{'B/prompt token':>16s}{'UE ms/step':>12s}{'edge ms/step':>14s}"
        f"{'rest ms/step':>14s}"
    )
    for w in args.wires:
        rs = runs[w]
        bare = d * WIRE_FORMATS[w][0] + (4 if w == "int8" else 0)
        ue, edge_s = statistics.median(r["ue_step"] for r in rs), statistics.median(r["edge_step"] for r in rs)
        rest = statistics.median(r["tpot"] - r["ue_step"] - r["edge_step"] for r in rs)
        print(
            f"{w:6s}{statistics.median(r['bytes_per_token'] for r in rs):9.0f}{bare:7d}"
            f"{statistics.median(r['prefill_bytes_per_token'] for r in rs):16.1f}{1e3 * ue:12.2f}{1e3 * edge_s:14.2f}"
            f"{1e3 * rest:14.2f}"
        )
    rests = [statistics.median(r["tpot"] - r["ue_step"] - r["edge_step"] for r in runs[w]) for w in args.wires]
    print(
        f"\nsocket path overhead per decoding step (serialisation, packets, loopback, Python): "
        f"{1e3 * min(rests):.2f}-{1e3 * max(rests):.2f} ms, "
        f"{min(rests) / base['tpot']:.1%}-{max(rests) / base['tpot']:.1%} "
        f"of the single-process time per output token"
    )
    print(
        f"\ndecoding against the memory bound: {weight_bytes / 1e6:.1f} MB of weights read per token (the KV cache "
        f"not counted); memory bandwidth {bandwidth / 1e9:.1f} GB/s measured now "
        f"(a large copy on {split_model.device}, "
        f"bytes read + written); bound: {1e3 * weight_bytes / bandwidth:.2f} ms per token"
    )
    print(f"{'path':16s}{'TPOT ms':>9s}{'bound ms':>10s}{'TPOT/bound':>12s}{'weights GB/s':>14s}{'of bandwidth':>14s}")
    for name, rs in (("single process", runs["single"]), *((f"socket {w}", runs[w]) for w in args.wires)):
        tpot = summary(rs)["tpot"]
        print(
            f"{name:16s}{1e3 * tpot:9.2f}{1e3 * weight_bytes / bandwidth:10.2f}{tpot * bandwidth / weight_bytes:12.2f}"
            f"{weight_bytes / tpot / 1e9:14.2f}{weight_bytes / tpot / bandwidth:14.1%}"
        )
    if eager:
        same = sum(r["same_as_eager"] for r in runs["single"])
        print(
            f"\nsingle-process tokens in {decode} decoding equal to eager decoding's: "
            f"{same}/{len(runs['single'])} requests"
        )
    print(
        f"\nB/token: uplink bytes of one decoding step (frame header {protocol.HEADER.size} + activation header "
        f"{protocol.ACT_HEADER.size} + a {protocol.SEQ.size}-byte sequence number per packet of 64 elements); bare: "
        f"the activation alone ({d} elements; int8 with its 4-byte scale). Downlink: "
        f"{protocol.HEADER.size + protocol.TOKEN_BODY.size} bytes per token. Total {time.perf_counter() - start:.0f} s."
    )
    fp32 = runs.get("fp32")
    if fp32 and not all(r["identical"] for r in fp32):
        print("error: the fp32 socket path did not reproduce the single-process tokens", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main("bench/decoding.py", main))
