"""Burst losses against independent ones at the same mean loss: perplexity paired on the same windows.

    python add_noise.py --sweep --link burst   --splits 1,2,4,6,8,10,16,24 --dropouts '' --snrs 15,20 \
        --draws 2 --max-tokens 4096 --output results/sweep_burst_smollm2-135m.csv
    python add_noise.py --sweep --link erasure --splits 1,2,4,6,8,10,16,24 --dropouts '' --snrs 15,20 \
        --draws 2 --max-tokens 4096 --output results/sweep_erasure_pair_smollm2-135m.csv
    python bench/burst.py        # the paired table: results/burst_pairs.csv (its block in docs/uncoded-link.md)

Both sweeps run the uncoded link at the same Es/N0, so the same packet error rate; --link burst holds each
fade for a coherence time (uplink.burst_loss), so consecutive packets are lost together. For each (split,
Es/N0) the table gives each link's perplexity (token-weighted over windows and draws), the NLL difference
burst - erasure paired on the same windows (cells.paired: per window the mean over draws, then the t
interval over the windows) and the spread of the loss share over the transfers.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

from layersplit import UserError, cells, cli, schema

BURST = "results/sweep_burst_smollm2-135m.csv"  # --link burst
ERASURE = "results/sweep_erasure_pair_smollm2-135m.csv"  # --link erasure, the same grid
OUTPUT = "results/burst_pairs.csv"
COLUMNS = ("split", "snr_db", "ppl_erasure", "ppl_burst", "nll_difference", "ci95", "windows", "draws", "significant")


def pooled_ppl(rows: list[dict]) -> float:
    """Token-weighted perplexity of rows (windows and draws pooled)."""
    tokens = sum(int(r["scored_tokens"]) for r in rows)
    return math.exp(sum(float(r["nll"]) * int(r["scored_tokens"]) for r in rows) / tokens)


def pairs(burst: list[dict], erasure: list[dict]) -> list[dict]:
    def by_cell(rows):
        out: dict[tuple, list[dict]] = {}
        for r in rows:
            if r["snr_db"] != "":
                out.setdefault((int(r["split"]), float(r["snr_db"])), []).append(r)
        return out

    b, e = by_cell(burst), by_cell(erasure)
    table = []
    for key in sorted(b.keys() & e.keys()):
        found = cells.paired(b[key], e[key])
        table.append(
            {
                "split": key[0],
                "snr_db": key[1],
                "ppl_erasure": pooled_ppl(e[key]),
                "ppl_burst": pooled_ppl(b[key]),
                "nll_difference": found["difference"],
                "ci95": found["ci95"],
                "windows": found["units"],
                "draws": len(b[key]),
                "significant": bool(found.get("significant")),
            }
        )
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/burst.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--burst", type=Path, default=Path(BURST), help="the --link burst sweep")
    p.add_argument("--erasure", type=Path, default=Path(ERASURE), help="the --link erasure sweep on the same grid")
    p.add_argument("--output", type=cli.writable_file, default=OUTPUT, help="the paired table (CSV)")
    args = p.parse_args(argv)

    def body() -> int:
        table = pairs(schema.read_sweep(args.burst), schema.read_sweep(args.erasure))
        if not table:
            raise UserError(f"{args.burst} and {args.erasure} share no (split, Es/N0) cell")
        out = io.StringIO()
        w = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in table)
        cli.write_text_atomic(Path(args.output), out.getvalue())
        for r in table:
            print(
                f"split {r['split']:2d} at {r['snr_db']:g} dB: ppl erasure {r['ppl_erasure']:.4g}, burst "
                f"{r['ppl_burst']:.4g}; NLL burst - erasure {r['nll_difference']:+.3f} +- {r['ci95']:.3f}"
                f" over {r['windows']} windows{' *' if r['significant'] else ''}"
            )
        print(f"wrote {len(table)} cells to {args.output}")
        return 0

    return cli.run_main(p.prog, body)


if __name__ == "__main__":
    sys.exit(main())
