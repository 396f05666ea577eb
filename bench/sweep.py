"""Benchmark of the sweep's fast path, measured in one process on the embedded SmolLM2.

    python bench/sweep.py                 # about 6 minutes on 2 CPU cores
    python bench/sweep.py --tokens 512 --draws 2

Prints, for a small grid:
1. fast path against the naive path (a full forward per cell and draw), same dtype: the measured
   speed-up beside its bound from the FLOP count of the layers the fast path skips, on the paper's
   early splits (1..9) and over every layer; and the largest perplexity difference between them;
2. the default configuration (fast path, the sweep's auto dtype) against the original approach
   (float32, a full forward per cell and draw) over every layer;
3. the fast path's sustained GFLOP/s as a fraction of the dense matmul peak measured here in the
   same dtype.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from layersplit import channel, cli, compute  # noqa: E402
from layersplit.cli import positive_int  # noqa: E402
from layersplit.grid import PAPER_DROPOUTS, draws_of, make_conditions  # noqa: E402

TOKENS = 256  # one window of text: enough to time, small enough to run the naive path over every layer
DRAWS = 1  # draws per condition
EARLY_SPLITS = list(range(1, 10))  # the paper's grid: split n in 1..9
MATMUL_SIZE = 2048  # square matmul for the peak measurement
SEED = 0


def grid(splits, tokens, draws):
    """The sweep configuration: clean + the paper's p (the default sweep's conditions) at `splits`."""
    from layersplit import sweep

    conditions = make_conditions(list(PAPER_DROPOUTS), [], "erasure")
    return sweep.SweepConfig(splits, conditions, draws, SEED, tokens, tokens, channel.LinkConfig(), batch_size=16)


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


def timed_sweep(model, ids, cfg, runner) -> tuple[float, dict]:
    from layersplit import sweep

    with tempfile.TemporaryDirectory() as tmp:
        store = sweep.ResultsStore(Path(tmp) / "bench.csv", {"model": "bench", "dataset": "wiki", "tokens": len(ids),
                                   "context_length": cfg.context_length, "stride": cfg.stride, "dtype": "-", "seed": SEED})
        start = time.perf_counter()
        runner(model, ids, cfg, store, progress=False)
        elapsed = time.perf_counter() - start
    return elapsed, {sweep.row_key(r): float(r["ppl"])
                     for r in store.rows}


def matmul_peak(dtype) -> float:
    import torch

    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=dtype) for _ in range(2))
    a @ b
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 2.0:
        a @ b
        n += 1
    return n * 2 * MATMUL_SIZE**3 / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--tokens", type=positive_int, default=TOKENS, help="tokens of text measured")
    parser.add_argument("--draws", type=positive_int, default=DRAWS, help="noise draws per cell")
    args = parser.parse_args(argv)
    import torch

    from layersplit import sweep
    from layersplit.data import load_text, tokenize
    from layersplit.models import keep_freed_memory, load_model

    keep_freed_memory()  # as add_noise.py does, for every path measured here
    torch.manual_seed(SEED)
    model32, tokenizer = load_model(device="cpu", dtype="float32")
    default_model, _ = load_model(device="cpu", dtype="auto")
    default_dtype = next(default_model.parameters()).dtype
    ids = tokenize(tokenizer, load_text("wiki"), args.tokens)
    n_layers = model32.config.num_hidden_layers
    print(f"SmolLM2-135M, {len(ids)} tokens, conditions: clean + p in {PAPER_DROPOUTS} x {args.draws} draw(s); "
          f"{torch.get_num_threads()} threads; sweep default dtype here: {default_dtype}")

    print("\n1. fast path vs naive path, float32")
    results = {}
    for name, splits in (("paper's splits 1..9", EARLY_SPLITS), (f"every layer 0..{n_layers - 1}", list(range(n_layers)))):
        cfg = grid(splits, len(ids), args.draws)
        t_fast, ppl_fast = timed_sweep(model32, ids, cfg, sweep.run_fast)
        t_naive, ppl_naive = timed_sweep(model32, ids, cfg, sweep.run_naive)
        f_fast, f_naive = flops(model32, cfg, len(ids))
        bound, speedup = f_naive / f_fast, t_naive / t_fast
        diff = max(abs(ppl_fast[k] - ppl_naive[k]) / ppl_naive[k] for k in ppl_naive)
        results[name] = (t_fast, t_naive, f_fast)
        print(f"   {name:22s} fast {t_fast:6.1f} s  naive {t_naive:6.1f} s  speed-up {speedup:.2f}x  "
              f"FLOP bound {bound:.2f}x  realised {100 * speedup / bound:.0f}% of the bound  "
              f"max |dPPL|/PPL {diff:.1e}")

    print("\n2. default configuration vs the original approach (float32, full forward per cell and draw), every layer")
    cfg = grid(list(range(n_layers)), len(ids), args.draws)
    t_fast32, t_original, _ = results[f"every layer 0..{n_layers - 1}"]
    if default_dtype == torch.float32:  # the default here is exactly the fast path measured in 1
        t_default, note = t_fast32, " (the float32 fast path measured in 1)"
    else:
        t_default, note = timed_sweep(default_model, ids, cfg, sweep.run_fast)[0], ""
    print(f"   default ({default_dtype}, fast path) {t_default:.1f} s, original approach {t_original:.1f} s: "
          f"{t_original / t_default:.2f}x (target >= 2x){note}")

    print("\n3. sustained throughput of the fast path against the dense matmul peak, same dtype")
    t_fast, _, f_fast = results[f"every layer 0..{n_layers - 1}"]
    measured = [(torch.float32, t_fast, f_fast)]
    if default_dtype != torch.float32:
        measured.append((default_dtype, t_default, flops(default_model, cfg, len(ids))[0]))
    for dtype, seconds, flop in measured:
        achieved, peak = flop / seconds, matmul_peak(dtype)
        print(f"   {str(dtype):15s} fast path {achieved / 1e9:6.1f} GFLOP/s, matmul peak {peak / 1e9:6.1f} GFLOP/s: "
              f"{100 * achieved / peak:.0f}% (target >= 50%)")


if __name__ == "__main__":
    main()
