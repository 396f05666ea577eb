"""Which elements should the protected path carry? Each token's top-K against a calibrated fixed set.

    python bench/protect_rule.py                       # about 10 minutes on 2 CPU cores
    python bench/protect_rule.py --splits 6 --snrs 10 --ks 4 --tokens 512

The project's protected path (--protect K) sends each token's K largest-magnitude elements, index and
value. The alternative the issue names is a fixed set of channels found by a calibration pass over
held-out text: the same K channels for every token, values only (no index bits). This script measures
both on the erasure link through the impairment engine (layersplit/uplink.py): the ordinary path is
impaired exactly as the sweep impairs it (same streams), then each rule restores its elements.

    top-K          each token's K largest |h| (the engine's rule, uplink.protected)
    fixed-K        the K channels of largest mean h^2 over CALIBRATION_TOKENS tokens of the corpus's
                   train part (never evaluated), the same for every token
    fixed-bits     the fixed set at the top-K rule's bits: K x (index + value bits) / value bits channels

Prints perplexity per rule and the ratio to top-K (< 1: the fixed set is better), and writes every
cell to --output. Perplexities pool the tokens of every window and draw (token-weighted NLL).
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path

from layersplit import channel, cli, models
from layersplit.cli import positive_int

SPLITS = "2,6,12"  # 0-based splits compared
SNRS = "10,20"  # Es/N0 of the erasure link (QPSK, the channel module's defaults): PER 0.65 and 0.02 at 64 elements
KS = "1,4,16,64"  # protection levels K
TOKENS = 1024  # evaluated tokens of the test text (windows of the sweep's context length)
CALIBRATION_TOKENS = 2048  # tokens of the train part that rank the fixed set's channels
DRAWS = 2  # loss draws per cell (the sweep's streams: window i, draw d)
OUTPUT = "results/protect_rule.csv"


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_run_arguments(p, model=models.EMBEDDED_MODEL, seed=0)
    p.add_argument("--splits", type=cli.split_list, default=SPLITS, help="0-based splits")
    p.add_argument("--snrs", default=SNRS, help="Es/N0 in dB of the erasure link")
    p.add_argument("--ks", default=KS, help="protection levels K (elements per token, 0..the hidden size)")
    p.add_argument("--tokens", type=positive_int, default=TOKENS, help="evaluated tokens")
    p.add_argument("--calibration-tokens", type=positive_int, default=CALIBRATION_TOKENS, help="calibration tokens")
    p.add_argument("--draws", type=positive_int, default=DRAWS, help="loss draws per cell")
    p.add_argument("--output", type=cli.writable_file, default=OUTPUT, help="CSV of every cell")
    args = p.parse_args(argv)
    try:  # the lists are checked here, not after the model has loaded
        args.snr_list, args.k_list = cli.parse_snrs(args.snrs, "--snrs"), cli.parse_counts(args.ks, "--ks")
    except cli.UserError as e:
        p.error(str(e))
    if not args.snr_list or not args.k_list:
        p.error("--snrs and --ks need one value or more")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return cli.run_main("protect_rule.py", lambda: run(args))


def run(args) -> int:
    import torch

    from layersplit import data, links, uplink
    from layersplit.cli import parse_splits
    from layersplit.perplexity import sliding_windows
    from layersplit.segments import SplitModel

    torch.manual_seed(args.seed)
    model, tokenizer = models.load_model(args.model, args.device, args.dtype)
    segments = SplitModel(model)
    splits = parse_splits(args.splits, segments.n_layers)
    snrs, ks = args.snr_list, args.k_list
    d = segments.hidden_size
    if max(ks) > d:
        raise cli.UserError(f"--ks {max(ks)}: a token has only {d} elements (use 0..{d})")
    index_bits, value_bits = math.ceil(math.log2(d)), channel.LinkConfig().bits_per_element
    context = min(512, model.config.max_position_embeddings)
    test_ids = data.tokenize(tokenizer, data.load_text(part="test"), args.tokens)
    calib_ids = data.tokenize(tokenizer, data.load_text(part="train"), args.calibration_tokens)
    windows = sliding_windows(len(test_ids), context, context)
    rows, start = [], time.perf_counter()
    for split in splits:
        # the calibration pass: mean h^2 per channel after layer `split`, over the held-out windows
        energy = torch.zeros(d, dtype=torch.float64)
        for w in sliding_windows(len(calib_ids), context, context):
            h = segments.hidden_after(calib_ids[w.begin : w.end][None].to(model.device), 0, split + 1)
            energy += h.double().pow(2).sum((0, 1)).cpu()
        ranked = energy.argsort(descending=True)
        hidden = [
            segments.hidden_after(test_ids[w.begin : w.end][None].to(model.device), 0, split + 1) for w in windows
        ]
        for snr in snrs:
            imp = links.physical(channel.LinkConfig(snr_db=snr, bits_per_element=value_bits), "erasure")
            for k in ks:
                rules = {"top-K": None, "fixed-K": k, "fixed-bits": k * (index_bits + value_bits) // value_bits}
                totals = {rule: [0.0, 0, 0] for rule in rules}  # NLL sum, correct, tokens
                for i, (w, h) in enumerate(zip(windows, hidden)):
                    targets = test_ids[w.first_target : w.end]
                    for draw in range(args.draws):
                        stream = uplink.stream_seed(args.seed, i, draw)
                        lost = uplink.impair(h, imp, uplink.generator(stream))[0]
                        variants = []
                        for rule, n in rules.items():
                            if n is None:
                                keep = uplink.protected(h, k)
                            else:
                                keep = torch.zeros_like(h, dtype=torch.bool)
                                keep[..., ranked[: min(n, d)]] = True
                            variants.append(torch.where(keep, h, lost))
                        engine = uplink.impair(h, imp.protecting(k), uplink.generator(stream))[0]
                        assert torch.equal(variants[0], engine), "top-K here must be the engine's --protect K"
                        nll, correct = segments.score_from(torch.cat(variants), split + 1, targets)
                        for rule, s, c in zip(rules, nll.tolist(), correct.tolist()):
                            totals[rule][0] += s
                            totals[rule][1] += c
                            totals[rule][2] += len(targets)
                for rule, (s, c, n) in totals.items():
                    elements = k if rules[rule] is None else min(rules[rule], d)
                    bits = k * (index_bits + value_bits) if rules[rule] is None else elements * value_bits
                    rows.append(
                        {
                            "split": split,
                            "snr_db": snr,
                            "packet_error_rate": imp.loss,
                            "k": k,
                            "rule": rule,
                            "elements": elements,
                            "bits_per_token": bits,
                            "ppl": math.exp(s / n),
                            "token_accuracy": c / n,
                            "tokens": n,
                        }
                    )
                top = rows[-3]["ppl"]
                print(
                    f"split {split:2d}, {snr:g} dB (PER {imp.loss:.3f}), K={k:3d}: top-K ppl {top:9.2f}; "
                    + "; ".join(
                        f"{r['rule']} ({r['elements']} ch) {r['ppl']:9.2f} = {r['ppl'] / top:.2f}x" for r in rows[-2:]
                    ),
                    flush=True,
                )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    cli.write_text_atomic(args.output, table.getvalue())  # renamed into place: a kill never leaves half a table
    worse = sum(r["ppl"] > top_r["ppl"] for top_r, *fixed in zip(rows[::3], rows[1::3], rows[2::3]) for r in fixed)
    print(
        f"{len(rows) // 3} cells: a fixed set was worse than top-K in {worse} of {2 * len(rows) // 3} comparisons "
        f"-> {args.output} ({time.perf_counter() - start:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
