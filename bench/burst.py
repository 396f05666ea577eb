"""Burst losses against independent ones at the same mean loss: perplexity paired on the same windows.

The uncoded link (--pair uncoded, the default):
    python add_noise.py --sweep --link burst   --splits 1,2,4,6,8,10,16,24 --dropouts '' --snrs 15,20 \
        --draws 2 --max-tokens 4096 --output results/sweep_burst_smollm2-135m.csv
    python add_noise.py --sweep --link erasure --splits 1,2,4,6,8,10,16,24 --dropouts '' --snrs 15,20 \
        --draws 2 --max-tokens 4096 --output results/sweep_erasure_pair_smollm2-135m.csv
    python bench/burst.py        # the paired table: results/burst_pairs.csv (its block in docs/uncoded-link.md)
The 5G NR link (--pair nr):
    python add_noise.py --sweep --link nr_burst --splits 1,2,4,6,8,10,16,24 --dropouts '' --snrs 0,20,35 \
        --draws 2 --max-tokens 8192 --output results/sweep_nr_burst_smollm2-135m.csv
    python add_noise.py --sweep --link nr       --splits 1,2,4,6,8,10,16,24 --dropouts '' --snrs 0,20,35 \
        --draws 2 --max-tokens 8192 --output results/sweep_nr_pair_smollm2-135m.csv
    python bench/burst.py --pair nr   # results/nr_burst_pairs.csv (its block in docs/nr-link.md)

Each pair of sweeps runs one link at the same Es/N0, so the same mean loss (the uncoded link's packet error
rate, NR's residual TB loss after HARQ); the burst link holds each fade for a coherence time
(uplink.burst_loss, uplink.nr_burst_loss), so consecutive packets or TBs are lost together. For each (split,
Es/N0) the table gives each link's perplexity (token-weighted over windows and draws) and the NLL
difference burst - independent paired on the same windows (cells.paired: per window the mean over draws,
then the t interval over the windows).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

from layersplit import UserError, cells, cli, schema

# --pair -> (the burst sweep, the independent sweep on the same grid, the paired table)
PAIRS = {
    "uncoded": (
        "results/sweep_burst_smollm2-135m.csv",  # --link burst
        "results/sweep_erasure_pair_smollm2-135m.csv",  # --link erasure
        "results/burst_pairs.csv",
    ),
    "nr": (
        "results/sweep_nr_burst_smollm2-135m.csv",  # --link nr_burst
        "results/sweep_nr_pair_smollm2-135m.csv",  # --link nr
        "results/nr_burst_pairs.csv",
    ),
}
COLUMNS = (
    "split",
    "snr_db",
    "ppl_independent",
    "ppl_burst",
    "nll_difference",
    "ci95",
    "windows",
    "draws",
    "significant",
)


def pooled_ppl(rows: list[dict]) -> float:
    """Token-weighted perplexity of rows (windows and draws pooled)."""
    tokens = sum(int(r["scored_tokens"]) for r in rows)
    return math.exp(sum(float(r["nll"]) * int(r["scored_tokens"]) for r in rows) / tokens)


def pairs(burst: list[dict], independent: list[dict]) -> list[dict]:
    def by_cell(rows):
        out: dict[tuple, list[dict]] = {}
        for r in rows:
            if r["snr_db"] != "":
                out.setdefault((int(r["split"]), float(r["snr_db"])), []).append(r)
        return out

    b, e = by_cell(burst), by_cell(independent)
    table = []
    for key in sorted(b.keys() & e.keys()):
        found = cells.paired(b[key], e[key])
        table.append(
            {
                "split": key[0],
                "snr_db": key[1],
                "ppl_independent": pooled_ppl(e[key]),
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
    p.add_argument("--pair", choices=PAIRS, default="uncoded", help="which link's committed pair (the files below)")
    p.add_argument("--burst", type=Path, help="the burst sweep (default: the pair's)")
    p.add_argument("--independent", "--erasure", type=Path, help="the independent sweep on the same grid")
    p.add_argument("--output", type=cli.writable_file, help="the paired table (CSV; default: the pair's)")
    args = p.parse_args(argv)
    burst, independent, output = PAIRS[args.pair]
    args.burst, args.independent = args.burst or Path(burst), args.independent or Path(independent)
    args.output = args.output or output

    def body() -> int:
        table = pairs(schema.read_sweep(args.burst), schema.read_sweep(args.independent))
        if not table:
            raise UserError(f"{args.burst} and {args.independent} share no (split, Es/N0) cell")
        out = io.StringIO()
        w = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in table)
        cli.write_text_atomic(Path(args.output), out.getvalue())
        for r in table:
            print(
                f"split {r['split']:2d} at {r['snr_db']:g} dB: ppl independent {r['ppl_independent']:.4g}, burst "
                f"{r['ppl_burst']:.4g}; NLL burst - independent {r['nll_difference']:+.3f} +- {r['ci95']:.3f}"
                f" over {r['windows']} windows{' *' if r['significant'] else ''}"
            )
        print(f"wrote {len(table)} cells to {args.output}")
        return 0

    return cli.run_main(p.prog, body)


if __name__ == "__main__":
    sys.exit(main())
