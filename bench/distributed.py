"""Benchmark of the sweep on Ray workers against the same sweep in one process, measured in one run.

    python bench/distributed.py                       # about 5 minutes on 2 CPU cores
    python bench/distributed.py --tokens 1024 --splits 1-4

On the embedded SmolLM2, the paper's grid (splits, clean + the 8 p, one draw) is swept three ways
with the same total of CPU threads: in this process (sweep.run_fast), on 1 Ray worker with all the
threads, and on 2 Ray workers with half each. It prints the wall times, the speed-up of 2 workers
over 1 and its scaling efficiency (speed-up / 2), Ray's overhead over the single process, and
whether every run wrote the same rows (it must: the masks are seeded per seed, window and draw).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from layersplit import cli
from layersplit.cli import positive_int
from layersplit.grid import PAPER_DROPOUTS, make_conditions

TOKENS = 512  # one 512-token window per cell
SPLITS = "1-10"  # the environments' split range
DRAWS = 1
SEED = 0


def main(argv=None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--tokens", type=positive_int, default=TOKENS, help="tokens of text swept")
    p.add_argument("--splits", type=cli.split_list, default=SPLITS, help="0-based splits")
    p.add_argument("--draws", type=positive_int, default=DRAWS, help="noise draws per cell")
    args = p.parse_args(argv)
    import ray
    import torch

    from layersplit import channel, compute, distributed, sweep, sweep_store
    from layersplit.data import load_text, tokenize
    from layersplit.models import keep_freed_memory, load_model

    keep_freed_memory()
    threads = torch.get_num_threads()
    model, tokenizer = load_model(device="cpu", dtype="float32")
    ids = tokenize(tokenizer, load_text("wiki"), args.tokens)
    splits = cli.parse_splits(args.splits, model.config.num_hidden_layers)
    cfg = sweep.SweepConfig(
        splits,
        make_conditions(list(PAPER_DROPOUTS), [], "erasure"),
        args.draws,
        SEED,
        args.tokens,
        args.tokens,
        channel.LinkConfig(),
    )
    dims = compute.model_dims(model.config)
    run_config = {
        "model": "bench",
        "dataset": "wiki",
        "tokens": len(ids),
        "context_length": args.tokens,
        "stride": args.tokens,
        "dtype": "float32",
        "seed": SEED,
    }
    print(
        f"SmolLM2-135M float32, {len(ids)} tokens, splits {args.splits}, clean + {len(PAPER_DROPOUTS)} p x "
        f"{args.draws} draw(s); {threads} CPU threads in all",
        flush=True,
    )
    times, rows, files = {}, {}, {}  # files: the results CSVs, compared byte for byte
    with tempfile.TemporaryDirectory() as tmp:
        store = sweep_store.ResultsStore(Path(tmp) / "single.csv", run_config)
        start = time.perf_counter()
        sweep.run_fast(model, ids, cfg, store, progress=False)
        times["one process"], files["one process"] = time.perf_counter() - start, store.path.read_bytes()
        rows["one process"] = store.rows
        distributed.connect("local", num_cpus=threads)
        for workers in (1, 2):
            store = sweep_store.ResultsStore(Path(tmp) / f"ray{workers}.csv", run_config)
            start = time.perf_counter()
            distributed.run_sweep("smollm2-135m", "cpu", "float32", ids, cfg, store, dims, workers, progress=False)
            label = f"Ray, {workers} worker{'s' if workers > 1 else ''} x {threads // workers} thread(s)"
            times[label], files[label] = time.perf_counter() - start, store.path.read_bytes()
            rows[label] = store.rows
        ray.shutdown()
    for label, seconds in times.items():
        print(f"  {label:34s} {seconds:7.1f} s")
    one, two = list(times.values())[1:]
    print(
        f"2 workers over 1: speed-up {one / two:.2f}x, scaling efficiency {one / two / 2:.0%} "
        f"(each worker loads the model: {len(splits)} splits x {len(cfg.conditions)} conditions)"
    )
    print(
        f"Ray, 1 worker, over one process: {list(times.values())[1] / times['one process']:.2f}x the wall time "
        f"(start-up, model load in the worker, transfers)"
    )
    same = all(f == files["one process"] for f in files.values())
    print(f"same rows in every run (the results files byte for byte): {'yes' if same else 'NO'}")
    for label, r in rows.items():
        worst = max(abs(a["nll"] - b["nll"]) / abs(b["nll"]) for a, b in zip(r, rows["one process"]))
        print(f"  {label}: largest relative NLL difference to one process {worst:.1e}")

    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(cli.run_main("bench/distributed.py", main))
