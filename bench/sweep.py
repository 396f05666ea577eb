"""Benchmark of the sweep's fast path on any device, measured in one process against a peak measured in the same run.

    python bench/sweep.py                 # SmolLM2, float32, on the CPU: about 6 minutes on 2 cores
    python bench/sweep.py --tokens 512 --draws 2
    python bench/sweep.py --model random:llama-2-7b --device cuda --dtype bfloat16 --tokens 2048 --draws 5 --grids paper

Prints, on the paper's early splits (1..9) and over every layer, for clean + the paper's 8 p x --draws:
1. the dense matmul peak of this device in this dtype, measured first (TFLOP/s);
2. the fast path's time, its sustained TFLOP/s (FLOPs of the layers and LM head it runs, counted by
   compute.py) and their share of that peak (targets: >= 70% on a CPU in float32, >= 60% on a GPU in bf16);
   where --naive runs it: the naive path (a full forward per cell and draw, the link as a hook), the
   measured speed-up beside its bound from the FLOP count of the layers the fast path skips, and the
   largest perplexity difference between the paths. In float32 the naive path over every layer is the
   original approach (float32, a full forward per cell and draw), against which the default
   configuration (the fast path; float32 on a CPU) is compared.
3. the projected time of the paper's grid over the whole WikiText-2 test text (about 300k tokens, in
   windows of --tokens) with 5 draws, at the fast path's measured rate.
4. with --compiled: the fast path again with the edge's layers compiled (torch.compile), its compile
   time apart, its rate against the eager one and its largest perplexity difference from it.
--profile FILE writes a torch.profiler table of the fast path on the paper's splits (what to tune next).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from layersplit import channel, cli, compute
from layersplit.cli import positive_int
from layersplit.grid import PAPER_DROPOUTS, draws_of, make_conditions
from layersplit.data import EMBEDDED_DATASET
from layersplit.models import EMBEDDED_MODEL

MODEL = EMBEDDED_MODEL  # what is timed (random:llama-2-7b: the paper's shape with random weights, for a GPU)
DTYPE = "float32"  # the CPU's measured dtype (auto there); on a GPU pass --dtype bfloat16
TOKENS = 256  # one window of text: enough to time, small enough to run the naive path over every layer
DRAWS = 1  # draws per condition (the paper's setting on a GPU: 5)
EARLY_SPLITS = list(range(1, 10))  # the paper's grid: split n in 1..9
GRIDS = "paper,layers"  # grids timed: paper (the early splits), layers (every split)
NAIVE = "all"  # grids the naive path also runs: all, paper (the early splits only), none
PAPER_TEXT_TOKENS = 300_000  # the paper's text, WikiText-2's test split, in Llama tokens (about): for the projection
PAPER_DRAWS = 5  # draws per cell of the projected paper-scale run
PEAK_SIZE = {"cpu": 2048, "cuda": 8192}  # square matmul of the peak measurement, per device type
PEAK_SECONDS = 2.0  # how long the peak matmul runs
TARGET_SHARE = {"cpu": 0.70, "cuda": 0.60}  # the targets for the fast path's share of the peak
SEED = 0


def grid(splits, tokens, draws, batch_size=None, compile=False):
    """The sweep configuration: clean + the paper's p (the default sweep's conditions) at `splits`,
    one window of `tokens`; batch None: the sweep's automatic choice; compile: the edge's layers compiled."""
    from layersplit import sweep

    conditions = make_conditions(list(PAPER_DROPOUTS), [], "erasure")
    return sweep.SweepConfig(
        splits, conditions, draws, SEED, tokens, tokens, channel.LinkConfig(), batch_size=batch_size, compile=compile
    )


def flops(model, cfg, n_tokens: int) -> tuple[float, float]:
    """(fast, naive) FLOPs of the grid: decoder layers (attention included) and the LM head.

    The fast path walks the clean prefix once per window, runs the clean suffix once per window
    (it is the same at every split) and each impaired variant from its split on."""
    from layersplit.perplexity import sliding_windows

    dims = compute.model_dims(model.config)
    args = (dims.hidden_size, dims.intermediate_size, dims.num_heads, dims.num_kv_heads, dims.head_dim)
    fast = naive = 0.0
    impaired = sum(draws_of(c, cfg.draws) for c in cfg.conditions[1:])  # conditions[0] is the clean one
    for w in sliding_windows(n_tokens, cfg.context_length, cfg.stride):
        layer = compute.decoder_layer_flops(*args, tokens=w.end - w.begin, context_len=w.end - w.begin)
        head = compute.lm_head_flops(dims.hidden_size, dims.vocab_size, w.end - w.first_target)
        fast += (max(cfg.splits) + 1) * layer + (dims.n_layers - min(cfg.splits) - 1) * layer + head
        for split in cfg.splits:
            fast += impaired * ((dims.n_layers - split - 1) * layer + head)
            naive += (1 + impaired) * (dims.n_layers * layer + head)
    return fast, naive


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_sweep(model, ids, cfg, runner) -> tuple[float, dict]:
    from layersplit import schema, sweep_store

    device = next(model.parameters()).device
    with tempfile.TemporaryDirectory() as tmp:
        store = sweep_store.ResultsStore(
            Path(tmp) / "bench.csv",
            {
                "model": "bench",
                "dataset": "wiki",
                "tokens": len(ids),
                "context_length": cfg.context_length,
                "stride": cfg.stride,
                "dtype": "-",
                "seed": SEED,
            },
        )
        synchronize(device)
        start = time.perf_counter()
        runner(model, ids, cfg, store, progress=False)
        synchronize(device)
        elapsed = time.perf_counter() - start
    return elapsed, {schema.row_key(r): float(r["ppl"]) for r in store.rows}


def matmul_peak(dtype, device) -> float:
    """Dense matmul FLOP/s of this device in this dtype, measured now."""
    import torch

    size = PEAK_SIZE.get(device.type, PEAK_SIZE["cpu"])
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    for _ in range(3):  # warm-up: library initialisation and kernel choice
        a @ b
    synchronize(device)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < PEAK_SECONDS:
        for _ in range(1 if device.type == "cpu" else 10):  # a GPU queues a few before the clock is read
            a @ b
            n += 1
        synchronize(device)
    return n * 2 * size**3 / (time.perf_counter() - start)


def profile(model, ids, cfg, path: Path) -> None:
    """The fast path on cfg under torch.profiler: a table of the operators by self time."""
    import torch
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.profiler.profile(activities=activities) as prof:
        from layersplit import sweep

        timed_sweep(model, ids, cfg, sweep.run_fast)
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    cli.write_text_atomic(path, prof.key_averages().table(sort_by=sort, row_limit=40))
    print(f"   profile of the fast path on the paper's splits: {path}")


def main(argv=None) -> int:
    parser = cli.parser(__doc__)
    cli.add_run_arguments(parser, model=MODEL, dtype=DTYPE)
    parser.add_argument("--dataset", default=EMBEDDED_DATASET, help="the text: the embedded Wikipedia, or a .txt file")
    parser.add_argument("--tokens", type=positive_int, default=TOKENS, help="tokens of text measured (one window)")
    parser.add_argument("--draws", type=positive_int, default=DRAWS, help="noise draws per cell")
    parser.add_argument(
        "--grids", default=GRIDS, help="grids timed, comma-separated: paper (splits 1..9), layers (every split)"
    )
    parser.add_argument(
        "--naive",
        choices=("all", "paper", "none"),
        default=NAIVE,
        help="grids on which the naive path runs too (every layer's is the slowest run)",
    )
    parser.add_argument(
        "--batch-size", type=cli.batch_size, default="auto", help="variants per forward (auto: the sweep's)"
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="then time the fast path again with the edge's layers compiled (add_noise.py --compile)",
    )
    parser.add_argument(
        "--profile",
        type=cli.writable_file,
        metavar="FILE",
        help="write a profile of the fast path here (checked writable before the minutes of timing)",
    )
    args = parser.parse_args(argv)
    args.grids = [g.strip() for g in args.grids.split(",") if g.strip()]
    if not args.grids or any(g not in ("paper", "layers") for g in args.grids):
        parser.error("--grids: a comma-separated choice of paper, layers")
    import torch

    from layersplit import sweep
    from layersplit.data import load_text, tokenize
    from layersplit.models import keep_freed_memory, load_model

    keep_freed_memory()  # as add_noise.py does, for every path measured here
    torch.manual_seed(SEED)
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    ids = tokenize(tokenizer, load_text(args.dataset), args.tokens)
    n_layers = model.config.num_hidden_layers
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{args.model}, {n_layers} layers, {str(dtype).removeprefix('torch.')}, {where}; {len(ids)} tokens; "
        f"conditions: clean + p in {PAPER_DROPOUTS} x {args.draws} draw(s); batch {args.batch_size or 'auto'}"
    )

    peak = matmul_peak(dtype, device)
    size = PEAK_SIZE.get(device.type, PEAK_SIZE["cpu"])
    print(f"\n1. dense matmul peak here ({size}^3, {str(dtype).removeprefix('torch.')}): {peak / 1e12:.3f} TFLOP/s")
    timed_sweep(
        model, ids[: min(len(ids), 64)], grid([1], min(len(ids), 64), 1, args.batch_size), sweep.run_fast
    )  # warm-up

    target = TARGET_SHARE.get(device.type)
    print(
        f"\n2. the fast path (and the naive one where --naive runs it); targets: >= {target:.0%} of the peak"
        if target
        else "\n2. the fast path (and the naive one where --naive runs it)"
    )
    grids = {
        "paper": ("paper's splits 1..9", EARLY_SPLITS, args.naive in ("all", "paper")),
        "layers": (f"every layer 0..{n_layers - 1}", list(range(n_layers)), args.naive == "all"),
    }
    rates, eager_ppl = {}, {}
    for name, splits, with_naive in (grids[g] for g in args.grids):
        cfg = grid(splits, len(ids), args.draws, args.batch_size)
        t_fast, ppl_fast = timed_sweep(model, ids, cfg, sweep.run_fast)
        eager_ppl[name] = ppl_fast
        f_fast, f_naive = flops(model, cfg, len(ids))
        rates[name] = f_fast / t_fast
        line = (
            f"   {name:22s} fast {t_fast:7.1f} s  {f_fast / t_fast / 1e12:7.3f} TFLOP/s  "
            f"{100 * f_fast / t_fast / peak:4.0f}% of the peak"
        )
        if with_naive:
            t_naive, ppl_naive = timed_sweep(model, ids, cfg, sweep.run_naive)
            diff = max(abs(ppl_fast[k] - ppl_naive[k]) / ppl_naive[k] for k in ppl_naive)
            bound, speedup = f_naive / f_fast, t_naive / t_fast
            line += (
                f"  naive {t_naive:7.1f} s  speed-up {speedup:.2f}x  FLOP bound {bound:.2f}x  max |dPPL|/PPL {diff:.1e}"
            )
            if dtype == torch.float32 and splits[0] == 0:
                line += "  (naive in float32: the original approach)"
        print(line, flush=True)
    name = grids["paper"][0] if "paper" in args.grids else grids["layers"][0]
    paper = grid(EARLY_SPLITS, len(ids), PAPER_DRAWS)
    seconds = flops(model, paper, PAPER_TEXT_TOKENS)[0] / rates[name]
    print(
        f"\n3. projected: the paper's grid (splits 1..9, clean + 8 p x {PAPER_DRAWS} draws) over {PAPER_TEXT_TOKENS:,} "
        f"tokens in windows of {len(ids)}: {seconds / 3600:.2f} h at the rate of the {name} run"
    )
    if args.compiled:
        timed_compiled(model, ids, args, [grids[g] for g in args.grids], eager_ppl, rates, peak)
    if args.profile:
        profile(model, ids, grid(EARLY_SPLITS, len(ids), args.draws, args.batch_size), Path(args.profile))
    return 0


def timed_compiled(model, ids, args, grids, eager_ppl, eager_rates, peak) -> None:
    """The fast path again with the edge's layers compiled: compiling first (two splits of the first
    grid, so both batch shapes of a grid are compiled before the clock runs), then each grid against
    its eager time and numbers."""
    from layersplit import sweep

    print("\n4. the fast path with the edge's layers compiled (add_noise.py --compile)")
    first = grids[0][1][:2]
    t_compile, _ = timed_sweep(
        model, ids, grid(first, len(ids), args.draws, args.batch_size, compile=True), sweep.run_fast
    )
    print(f"   compiling, with splits {first} run: {t_compile:.1f} s", flush=True)
    for name, splits, _ in grids:
        cfg = grid(splits, len(ids), args.draws, args.batch_size, compile=True)
        t, ppl = timed_sweep(model, ids, cfg, sweep.run_fast)
        rate = flops(model, cfg, len(ids))[0] / t
        diff = max(abs(ppl[k] - eager_ppl[name][k]) / eager_ppl[name][k] for k in eager_ppl[name])
        print(
            f"   {name:22s} compiled {t:7.1f} s  {rate / 1e12:7.3f} TFLOP/s  {100 * rate / peak:4.0f}% of the peak  "
            f"{rate / eager_rates[name]:.2f}x the eager rate  max |dPPL|/PPL against eager {diff:.1e}",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(cli.run_main("bench/sweep.py", main))
