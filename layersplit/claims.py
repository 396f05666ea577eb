"""The quoted numbers of the README and docs/, generated from the committed result files, so they cannot drift.

Each block is a Markdown table written from `results/` between `<!-- generated: NAME -->` and
`<!-- end: NAME -->` in whichever file holds it: README.md or a page of docs/ (`doc_files`), each block
in one file only (`held`). `python figures.py --claims FILE` rewrites the blocks of one file,
`write_all` those of every file; a test fails when a file differs from what is written from the
committed files. This module puts each block in its place; the tables are claims_tables.py's (claims,
rl, ablation, sweep, paired), claims_timings.py's (fairness, gpu, pipeline, fresh) and claims_radio.py's
(nr_link, nr_latency, nr_ldpc, protect_arq, protect_cost, protect_quality_*, burst, nr_burst,
nr_rule_cost, nr_residual_read, nr_tails), from the numbers claims_stats.py computes and the
committed link tables:

    claims     the paper's claims: what was measured, with 95% intervals, and the verdict
    rl         mean return of every agent and baseline on every environment, per-seed shares of the optimum
    ablation   the original PPO set-up, the default, and each single change (bench/rl.py --ablation)
    sweep      the surrogate sweep's cells: perplexity with its interval over windows
    paired     split against split on the same windows and masks (cells.paired)
    fairness   the next UE's first token behind long prompts, per edge --prefill-chunk
    gpu        one bench/gpu.sh run on a GPU (bench/gpu_summary.py's summary)
    pipeline   every experiment of the pipeline (experiments.py) with its wall time in the committed run
    fresh      make reproduce, quick and test timed on a fresh clone (bench/fresh_clone.py)
    nr_link    rate and loss per Es/N0: the uncoded link beside the NR link on FDD and its TDD frame
    nr_latency the activation's air time: uncoded, NR on FDD, NR on its TDD frame
    nr_ldpc    the LDPC code on AWGN against Shannon's limit and its constellation's
    protect_arq the protected path in a block fade: ARQ with a cap and round trips against NR's coded path
    protect_cost what the protected path in use adds to a prefill's air time, and what it loses
    protect_rl LayerSplit-Protect-v0's policies and what protection and adapting K are worth, paired by seed
    protect_quality_snr, protect_quality_p  perplexity and accuracy with K protected elements against the SNR,
               and against p (the two protect sweeps)
    burst      burst losses against independent ones at the same PER, paired on windows (bench/burst.py)
    nr_burst   the same on the NR link at the same residual TB loss (bench/burst.py --pair nr)
    nr_rule_cost the reliable MCS rule's air time against the target rule's, from the two NR sweeps
    nr_residual_read the reliable rule reading extrapolated residuals against the bounds the data certify
    nr_tails   the curves where residuals are read, against those points measured deeper (nr --tails)

Intervals: over seeds for the surrogate-trained agents (seed k of every policy plays the same
episodes, so gaps are paired by seed), over episodes on the real LLM (each episode its own start and
link draws, the same for every policy), over windows of text for the sweep. A verdict is drawn from
the intervals by a stated rule (`claims_stats.verdict`), never typed by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import UserError
from .claims_radio import (
    block_burst,
    block_nr_burst,
    block_nr_latency,
    block_nr_ldpc,
    block_nr_link,
    block_nr_residual_read,
    block_nr_tails,
    block_nr_rule_cost,
    block_protect_arq,
    block_protect_cost,
    block_protect_quality_p,
    block_protect_quality_snr,
)
from .claims_tables import block_ablation, block_claims, block_paired, block_protect_rl, block_rl, block_sweep
from .claims_timings import block_fairness, block_fresh, block_gpu, block_pipeline

BEGIN, END = "<!-- generated: {} -->", "<!-- end: {} -->"

BLOCKS = {
    "claims": block_claims,
    "rl": block_rl,
    "ablation": block_ablation,
    "sweep": block_sweep,
    "paired": block_paired,
    "nr_latency": block_nr_latency,
    "nr_link": block_nr_link,
    "nr_ldpc": block_nr_ldpc,
    "protect_arq": block_protect_arq,
    "protect_cost": block_protect_cost,
    "protect_rl": block_protect_rl,
    "protect_quality_snr": block_protect_quality_snr,
    "protect_quality_p": block_protect_quality_p,
    "burst": block_burst,
    "nr_burst": block_nr_burst,
    "nr_rule_cost": block_nr_rule_cost,
    "nr_residual_read": block_nr_residual_read,
    "nr_tails": block_nr_tails,
    "fairness": block_fairness,
    "gpu": block_gpu,
    "pipeline": block_pipeline,
    "fresh": block_fresh,
}


def blocks(results: Path) -> dict[str, str]:
    return {name: make(Path(results)) for name, make in BLOCKS.items()}


def _pattern(name: str) -> re.Pattern:
    return re.compile(re.escape(BEGIN.format(name)) + r"\n(?:(.*?)\n)?" + re.escape(END.format(name)), re.S)


def in_readme(text: str) -> dict[str, str]:
    """The generated blocks a Markdown text (the README, a docs/ page) holds now, by name."""
    return {name: m.group(1) or "" for name in BLOCKS if (m := _pattern(name).search(text))}


def update(text: str, new: dict[str, str]) -> str:
    """The text with every generated block it holds replaced by `new`'s."""
    for name, body in new.items():
        text = _pattern(name).sub(lambda _m, n=name, b=body: f"{BEGIN.format(n)}\n{b}\n{END.format(n)}", text)
    return text


# --- where the blocks live --------------------------------------------------------------------
def doc_files(root: Path) -> list[Path]:
    """The files that may hold generated blocks: README.md and every page of docs/."""
    root = Path(root)
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def held(root: Path) -> dict[str, tuple[Path, str]]:
    """Every generated block of README.md and docs/, by name: the file that holds it and its body now.
    UserError when two places hold the same block (each table lives in one place)."""
    found: dict[str, tuple[Path, str]] = {}
    for path in doc_files(root):
        text = path.read_text(encoding="utf-8")
        for name, body in in_readme(text).items():
            if name in found or len(_pattern(name).findall(text)) > 1:
                where = found[name][0] if name in found else path
                raise UserError(f"{path}: generated block {name!r} is also in {where}: keep it in one place")
            found[name] = (path, body)
    return found


def write_all(results: Path, root: Path) -> dict[Path, list[str]]:
    """Rewrite every generated block of README.md and docs/ from `results`, in the file that holds it;
    a file whose blocks are current is left untouched. Returns, per file with blocks, the names rewritten."""
    new = blocks(results)
    by_file: dict[Path, list[str]] = {}
    for name, (path, _) in held(root).items():
        by_file.setdefault(path, []).append(name)
    changed = {}
    for path, names in by_file.items():
        text = path.read_text(encoding="utf-8")
        now = in_readme(text)
        changed[path] = [n for n in names if now[n] != new[n]]
        if changed[path]:
            path.write_text(update(text, {n: new[n] for n in names}), encoding="utf-8")
    return changed
