"""Every figure of the project, drawn from result files only (nothing is recomputed here).

    python figures.py                      # all figures into figures/ (PNG and PDF each)
    python figures.py --only ber_per snr   # some figures
    python figures.py --results-dir results --figures-dir figures

The drawing code is layersplit/plots/, one module per area (channel, sweep, rl, protect, nr; common:
the readers and save()); each names the files its figures read at its top. Add a figure: a function
(results_dir, figures_dir) -> png path in its area's module that reads its files with common.read_csv
(sweeps: common.read_sweep) and ends with common.save(fig, figures_dir, name); register it in FIGURES.

Figures:
    ber_per   results/channel_ber_per.csv (python -m layersplit.channel --table results/channel_ber_per.csv)
              BER and PER against Es/N0 per modulation and fading, closed form vs Monte Carlo.
    sweep     results/sweep_layers_smollm2-135m.csv (plots/sweep.py's SWEEP_COMMAND; make reproduce)
              perplexity and token accuracy against the split, one curve per channel condition.
    snr       results/sweep_snr_{bpsk,qpsk,16qam}.csv (experiments sweep_snr_*, one per modulation)
              perplexity and token accuracy against Es/N0, one curve per modulation, at a few splits;
              the element loss (packet error rate) the link applied, against Es/N0.
    latency   results/latency_breakdown.csv (python -m layersplit.channel --latency-table results/latency_breakdown.csv)
              UE compute + transmission + edge compute against the split, prefill and one decoding
              step, per model and Es/N0.

    rsm_fit   results/rsm_fit_{paper,wireless}.csv (python train_rsm.py fit)
              the surrogates' predictions against the measurements on held-out sweep cells, with R^2.
    training  results/rl_paper_{ppo,a2c,dqn}_curves.csv, rl_paper_ppo.json
              (python train_rsm.py train --seeds 0,1,2 --algo A: make reproduce)
              training return against steps, mean and range over seeds, with the baselines' returns
              (A2C and DQN drawn when their curves exist).
    policy    results/rl_paper_ppo_policy.csv (+ rl_paper_ppo_authors_policy.csv, rl_wireless_ppo_policy.csv if present)
              the chosen split against the channel condition, learned beside the exact optimum.
    cost      results/rl_llm_ppo.json (make llm; else rl_llm_cost.json of make reproduce), results/rl_paper_ppo.json
              seconds per environment step and per run, real LLM against the surrogate; with the full
              train.py run, the LLM-trained and surrogate-trained policies on the same LLM episodes.

    nr_bler   results/nr_bler.csv (+ nr_bler_awgn.csv) (python -m layersplit.nr --table results/nr_bler.csv)
              BLER against Es/N0 per MCS with intervals, and the link they make: MCS, residual loss, goodput.
    nr_snr    results/sweep_nr_snr_smollm2-135m.csv (+ sweep_nr_reliable_snr_...) beside sweep_snr_qpsk.csv
              (experiment sweep_nr_snr)
              perplexity and accuracy against Es/N0, the NR link beside the uncoded one, and where each recovers.

A split is 0-based everywhere: split n cuts after decoder layer n, n + 1 layers on the UE. The
figures take every grid (splits, SNRs, p) from the result files; the experiments' grids are written
once, in layersplit/experiments.py. A missing or malformed result file is reported by
name; the other figures are still drawn and the exit status is non-zero.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Callable

from layersplit import cli
from layersplit.cli import writable_dir

# the figures, and the names callers and the tests find here (each figure's result files, the readers)
from layersplit.plots.channel import LATENCY_FILE, fig_ber_per, fig_latency  # noqa: F401
from layersplit.plots.common import SPLIT_AXIS, SWEEP_COLUMNS, FigureInputError, read_sweep  # noqa: F401
from layersplit.plots.nr import NR_BLER_FILE, NR_ERASURE_FILE, NR_SNR_FILE, fig_nr_bler, fig_nr_snr  # noqa: F401
from layersplit.plots.protect import PROTECT_P_FILE, PROTECT_SNR_FILE, fig_protect  # noqa: F401
from layersplit.plots.rl import fig_cost, fig_policy, fig_rsm_fit, fig_training
from layersplit.plots.sweep import (  # noqa: F401
    SNR_FILE,
    SNR_MODULATIONS,
    SWEEP_FILE,
    fig_snr,
    fig_sweep,
    read_snr_sweeps,
    recovery_snr,
)

README = Path(__file__).resolve().parent / "README.md"  # the front page; --claims writes it and docs/*.md
ALL_DOCS = Path("<all>")  # --claims without a file: every file that holds a generated block
RESULTS_DIR = Path("results")  # where the experiment scripts write their CSV/JSON
FIGURES_DIR = Path("figures")  # where the PNGs (and PDFs of the same figures) go; format and DPI: plots/common.py

FIGURES: dict[str, Callable[[Path, Path], Path]] = {  # name -> figure; --only takes these names
    "ber_per": fig_ber_per,
    "sweep": fig_sweep,
    "snr": fig_snr,
    "latency": fig_latency,
    "rsm_fit": fig_rsm_fit,
    "training": fig_training,
    "policy": fig_policy,
    "cost": fig_cost,
    "protect": fig_protect,
    "nr_bler": fig_nr_bler,
    "nr_snr": fig_nr_snr,
}


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--only", nargs="+", choices=list(FIGURES), help="draw only these figures")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the result files are")
    parser.add_argument(
        "--figures-dir", type=writable_dir, default=str(FIGURES_DIR), help="where to write the figures (PNG and PDF)"
    )
    parser.add_argument(
        "--claims",
        nargs="?",
        const=ALL_DOCS,
        type=Path,
        metavar="FILE",
        help="no figures: write the generated tables (layersplit/claims.py) from --results-dir into FILE "
        "(default: every one in this checkout's README.md and docs/, each in the file that holds it)",
    )
    args = parser.parse_args(argv)
    if not args.results_dir.is_dir():
        parser.error(f"--results-dir {args.results_dir} is not a folder (make the results first: make reproduce)")
    if args.claims == ALL_DOCS:
        return cli.run_main("figures.py", lambda: write_all_claims(args.results_dir))
    if args.claims is not None:
        if not args.claims.is_file():
            parser.error(f"--claims {args.claims}: no such file")
        return cli.run_main("figures.py", lambda: write_claims(args.results_dir, args.claims))
    return cli.run_main(
        "figures.py", lambda: draw(args.only or list(FIGURES), args.results_dir, Path(args.figures_dir))
    )


def write_claims(results_dir: Path, readme: Path) -> int:
    """The README's generated blocks rewritten from the result files (the rest of the README untouched)."""
    from layersplit import claims

    text = readme.read_text()
    held = claims.in_readme(text)
    if not held:
        print(f"figures.py: {readme} holds no generated block (<!-- generated: NAME -->)", file=sys.stderr)
        return 2
    new = claims.blocks(results_dir)
    readme.write_text(claims.update(text, {name: new[name] for name in held}))
    changed = [name for name in held if held[name] != new[name]]
    print(f"{readme}: {len(held)} generated block(s), {len(changed)} rewritten ({', '.join(changed) or 'none'})")
    return 0


def write_all_claims(results_dir: Path) -> int:
    """Every generated block of README.md and docs/ rewritten from the result files, in the file that holds it."""
    from layersplit import claims

    for path, changed in claims.write_all(results_dir, README.parent).items():
        print(f"{path}: {len(changed)} rewritten ({', '.join(changed) or 'none'})")
    return 0


def draw(names: list[str], results_dir: Path, figures_dir: Path) -> int:
    """Draw each figure of `names`; 1 when any failed (each named on stderr), else 0."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        try:
            png = FIGURES[name](results_dir, figures_dir)
            print(f"{name}: wrote {png} and {png.with_suffix('.pdf').name}")
        except FigureInputError as e:
            print(f"figures.py: {name}: {e}", file=sys.stderr)
            failed.append(name)
        except Exception:  # a bug in one figure must not stop the others
            traceback.print_exc()
            print(f"figures.py: {name}: failed (traceback above)", file=sys.stderr)
            failed.append(name)
    if failed:
        print(f"figures.py: {len(failed)} figure(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
