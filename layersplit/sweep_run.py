"""add_noise.py --sweep from its parsed arguments: the model loaded, the grid checked, the results store
opened, the grid run (the fast path, the naive one, or the fast one on Ray workers), the cell table
written beside the rows and the perplexity table printed.

Torch and the model load here, after the command line was parsed (add_noise.py --help stays fast).
The sweep itself is sweep.py; its files are sweep_store.py (rows, windows) and cells.py (the cells).
"""

from __future__ import annotations

import argparse
import sys
import time

from . import UserError, cells, schema, sweep, sweep_store
from .cli import parse_splits
from .data import load_text, tokenize
from .grid import draws_of
from .models import find_decoder_layers, load_model
from .segments import SplitModel, check_composition


def run(args: argparse.Namespace) -> sweep_store.ResultsStore:
    """Run the sweep add_noise.py's arguments describe (resuming its results file); return its store."""
    start = time.perf_counter()
    sweep_store.check_output(args.output_path)  # a results file of another kind, or damaged, is refused untouched
    if args.verify:
        sweep_store.read_reference(args.verify)  # and a bad reference before the sweep, not after it
    if args.ray:  # join or start Ray first: a bad address or missing GPUs are refused before the model loads
        from . import distributed

        distributed.connect(args.ray)
        workers = distributed.workers_for(args.device, args.workers)
        if distributed.uses_gpus(args.device) and args.dtype == "auto":
            args.dtype = "bfloat16"  # what auto picks on a GPU with bfloat16 (this process loads on its CPU)
    model, tokenizer = load_model(
        args.model,
        device="cpu" if args.ray else args.device,
        dtype=args.dtype,
        device_map=None if args.ray else args.device_map,
    )
    # a bad grid fails here, before any evaluation and before the results file is created
    splits = parse_splits(args.splits, len(find_decoder_layers(model)))
    hidden = model.config.hidden_size
    protects = max(c.protect for c in args.conditions)
    if protects > hidden:
        raise UserError(f"--protects {protects}: a token has only {hidden} elements (use 0..{hidden})")
    ids = tokenize(tokenizer, load_text(args.dataset), args.max_tokens or None)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    output = args.output_path
    store = sweep_store.ResultsStore(
        output,
        {
            "model": args.model,
            "dataset": args.dataset,
            "tokens": len(ids),
            "context_length": args.context_length,
            "stride": args.stride,
            "dtype": dtype,
            "seed": args.seed,
        },
        sweep_store.link_columns(args.channel, args.link),
    )
    cfg = sweep.SweepConfig(
        splits,
        args.conditions,
        args.draws,
        args.seed,
        args.context_length,
        args.stride,
        args.channel,
        args.batch_size,
        args.mask_device,
        args.compile,
    )
    cell_draws = sum(draws_of(c, args.draws) for c in args.conditions) * len(splits)
    print(
        f"sweep: {len(splits)} splits x {len(args.conditions)} conditions ({cell_draws} cell-draws, "
        f"{len(store.done)} already in {output}), {len(ids)} tokens, {dtype}"
        f"{', edge layers compiled' if cfg.compile and not args.naive else ''}",
        file=sys.stderr,
    )
    naive = args.naive
    if not naive:
        try:
            check_composition(SplitModel(model), splits[0])
        except UserError as e:
            print(f"warning: {e}; using the naive path", file=sys.stderr)
            naive = True
    if args.ray and not naive:
        from . import compute

        counts = distributed.run_sweep(
            args.model,
            args.device,
            args.dtype,
            ids,
            cfg,
            store,
            compute.model_dims(model.config),
            workers,
            progress=not args.no_progress,
        )
        print(f"Ray: {counts['tasks']} tasks on {workers} workers ({counts['restarted']} restarted)", file=sys.stderr)
    else:
        (sweep.run_naive if naive else sweep.run_fast)(model, ids, cfg, store, progress=not args.no_progress)
    cells.write_cells(store.rows, schema.cells_path(output), store.windows)
    print(sweep.summarise(store.rows, store.windows))
    print(
        f"{len(store.rows)} rows in {output}, cells with 95% intervals in {schema.cells_path(output)}; "
        f"{time.perf_counter() - start:.0f} s",
        file=sys.stderr,
    )
    return store
