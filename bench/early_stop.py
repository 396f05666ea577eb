"""The NR link's LDPC early stopping (nr_sim.EARLY_STOP) against Sionna's decoder run to all its iterations.

    python bench/early_stop.py                        # about 5 minutes on 2 CPU cores
    python bench/early_stop.py --points 3:0 --slots 32

For each (MCS, Es/N0) point the same seeded slots (the tails' seeds, in the tails' batches) go through Sionna's
PUSCH link twice, the decoder stopping early and not: the TBs each loses, compared slot by slot, the
belief-propagation iterations each runs and its seconds, measured in this one run. Writes --output (JSON).
The default points: the waterfall of MCS 3 and 14 (some TBs lost, some not) and the deep points of the same
MCSs that `python -m layersplit.nr --tails` measures (none lost; where the time goes).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from layersplit import cli
from layersplit.cli import positive_int
from layersplit.nr_cli import parse_points

POINTS = "3:0,3:11,14:14,14:21"  # (MCS, Es/N0 dB): two waterfall points, two deep ones
SLOTS = 128  # slots per point, through both decoders
SEED = 2  # the tails' seed (nr_sim.TABLE_SEED + TAIL_SEED_OFFSET): the first slots of the deep points
OUTPUT = "results/early_stop.json"


def parse_args(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--points", default=POINTS, metavar="MCS:SNR,...", help="the (MCS, Es/N0 dB) points")
    p.add_argument("--slots", type=positive_int, default=SLOTS, help="slots per point")
    p.add_argument("--seed", type=int, default=SEED, help="seed of the points' slots")
    p.add_argument("--output", type=cli.writable_file, default=OUTPUT, help="JSON of every point")
    args = p.parse_args(argv)
    try:
        args.point_list = parse_points(args.points)
    except cli.UserError as e:
        p.error(str(e))
    if not args.point_list or any(m not in range(3, 29) for m, _ in args.point_list):
        p.error(f"--points {cli.shown(args.points)}: MCS 3-28 (the BLER table's), one point or more")
    return args


def measure(mcs: int, snr: float, slots: int, seed: int) -> dict:
    """Both decoders over the same slots, batch by batch as nr_sim.simulate_point draws them, taking turns (so
    that other work on the machine slows both alike)."""
    import torch

    from layersplit import nr_sim

    sims = {"full": nr_sim.Simulator(mcs, early_stop=False), "early": nr_sim.Simulator(mcs, early_stop=True)}
    masks = {name: [] for name in sims}
    seconds = dict.fromkeys(sims, 0.0)
    for sim in sims.values():
        sim.lost(snr, 1, seed + 1)  # warm-up (first-call set-up), neither timed nor counted
        sim.iterations = 0
    for done in range(0, slots, nr_sim.TABLE_BATCH):
        n = min(nr_sim.TABLE_BATCH, slots - done)
        for name, sim in sims.items():
            start = time.perf_counter()
            masks[name].append(sim.lost(snr, n, nr_sim.point_seed(seed, mcs, snr) + done))
            seconds[name] += time.perf_counter() - start
    code_words = slots * sims["full"].tx._tb_encoder.num_cbs
    row = {"mcs": mcs, "snr_db": snr, "slots": slots}
    for name, sim in sims.items():
        row[f"lost_{name}"] = int(torch.cat(masks[name]).sum())
        row[f"iterations_per_code_word_{name}"] = sim.iterations / code_words
        row[f"seconds_per_slot_{name}"] = seconds[name] / slots
    row["same_slot_by_slot"] = bool(torch.equal(torch.cat(masks["full"]), torch.cat(masks["early"])))
    row["full_over_early_time"] = seconds["full"] / seconds["early"]
    return row


def run(args) -> int:
    import torch

    from layersplit import nr_sim

    load = os.getloadavg()[0]  # other work on the machine slows both decoders alike: recorded beside the times
    rows = []
    for mcs, snr in args.point_list:
        row = measure(mcs, snr, args.slots, args.seed)
        rows.append(row)
        print(
            f"MCS {mcs:2d} at {snr:g} dB: lost {row['lost_full']} / {row['lost_early']} of {args.slots} "
            f"(same slot by slot: {row['same_slot_by_slot']}), iterations a code word "
            f"{row['iterations_per_code_word_full']:.1f} / {row['iterations_per_code_word_early']:.1f}, "
            f"{row['seconds_per_slot_full']:.3f} / {row['seconds_per_slot_early']:.3f} s a slot "
            f"({row['full_over_early_time']:.2f}x)",
            flush=True,
        )
    report = {
        "points": rows,
        "all_same": all(r["same_slot_by_slot"] for r in rows),
        "batch": nr_sim.TABLE_BATCH,
        "seed": args.seed,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0 if report["all_same"] else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    return cli.run_main("early_stop.py", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
