"""The surrogates fitted from sweep results: the training cells of each form (paper_cells,
wireless_cells), the held-out measure of a fit (holdout_mask, quality), fit_from_sweep, its
one-paragraph description, and fit_and_report, what `train_rsm.py fit` does for each form (the
surrogate file and its reports rsm_fit_<report>.csv and .json). The network, its files and its
numeric fit are surrogate.py's.

The fit reads sweep rows through schema.read_rows (an invalid row is refused by file:line, never
fitted on). Numpy and pandas only: torch is imported by surrogate.py where a network is fitted.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from . import UserError, cells, cli, paper, schema
from .surrogate import EPOCHS, FORMS, REFERENCE_SPLIT, Surrogate, fit

PAPER_SPLITS = paper.SPLITS  # the original surrogate environment's split values 1..10
HOLDOUT_FRACTION = 0.2  # share of cells kept out of the fit to measure its quality
HOLDOUT_REPEATS = 8  # further held-out draws whose R2 is reported too: one draw of 18 cells is a noisy estimate


# --- the training data, from sweep results -------------------------------------------------------
def check_sweep(path: str | Path, needed: tuple[str, ...] = ("split", "nll", "token_accuracy")) -> None:
    """A sweep results file that is there and whose every row is valid (schema.read_rows), else UserError:
    train_rsm.py fit checks all its inputs so before it fits the first."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no sweep results at {path} (make them with: python add_noise.py --sweep)")
    schema.read_rows(path, needed)  # every row checked, on every column it has


def _read_sweep(path: str | Path, needed: tuple[str, ...]):
    """The sweep's rows as a frame with their window scores, each checked first (schema.read_sweep_frame: a row
    with an impossible value is refused, naming its line, never fitted on nor dropped)."""
    if not Path(path).is_file():  # check_sweep's message: what makes the file
        check_sweep(path, needed)
    return schema.read_sweep_frame(path, needed)


def unprotected(frame):
    """The rows without the protected path (--protects K > 0 is not an input of the surrogates)."""
    return frame[schema.is_unprotected(frame)] if "protect" in frame else frame


def _pooled(frame, keys: list[str], where):
    """The rows of `frame` pooled over draws per `keys` (cells.pool: token-weighted NLL and accuracy,
    95% intervals over windows)."""
    import pandas as pd

    pooled = pd.DataFrame(
        [
            {
                **dict(zip(keys, key)),
                **cells.pool(group.to_dict("records")),
                "latency_s": group["total_s"].astype(float).mean() if "total_s" in group else np.nan,
            }
            for key, group in frame.groupby(keys, sort=True)
        ]
    )
    if not pooled.empty:
        cells.report_left_out(pooled.to_dict("records"), where)
    return pooled


def paper_cells(path: str | Path, splits=PAPER_SPLITS, reference_split: int = REFERENCE_SPLIT):
    """One row per (p, split) of the original link: pooled PPL (exp of the token-weighted mean NLL over
    draws) with its 95% interval over windows, the reference PPL at the same p, the inference
    reward, and that reward's standard error over the noise draws (inference_reward_se)."""
    frame = _read_sweep(path, ("link", "split", "dropout", "draw", "nll", "token_accuracy", "scored_tokens"))
    frame = unprotected(frame[schema.is_original_link(frame)])
    if frame.empty:
        raise UserError(f"{path} has no rows of the original link (p): sweep with --dropouts")
    cells = _pooled(frame, ["dropout", "split"], path).drop(columns="latency_s")
    reference = cells[cells["split"] == reference_split].set_index("dropout")["ppl"]
    if reference.empty:
        raise UserError(
            f"{path} has no cells at the reference split {reference_split} (the paper's fixed split): "
            f"sweep with --splits covering {reference_split}"
        )
    cells = cells[cells["split"].isin(list(splits)) & cells["dropout"].isin(reference.index)].copy()
    if cells["split"].nunique() < 2 or cells["dropout"].nunique() < 2:
        raise UserError(
            f"{path} has too few cells of the original link (need several p and splits in {min(splits)}..{max(splits)})"
        )
    cells["ppl_ref"] = cells["dropout"].map(reference)
    cells["inference_reward"] = (cells["ppl_ref"] - cells["ppl"]) / cells["ppl_ref"]
    # the sweep's own noise in the reward: draw d of every split shares its masks and its text (common
    # random numbers), so the paired per-draw reward 1 - exp(nll_d - nll_ref_d) varies only with the masks;
    # its standard error over the draws is what no surrogate can predict on a held-out cell
    ref_draws = frame[frame["split"] == reference_split].set_index(["dropout", "draw"])["nll"]
    paired = frame.assign(
        reward=1
        - np.exp(frame["nll"] - [ref_draws.get((p, d), np.nan) for p, d in zip(frame["dropout"], frame["draw"])])
    )
    se = paired.groupby(["dropout", "split"])["reward"].agg(
        lambda r: r.std(ddof=1) / np.sqrt(len(r)) if len(r) > 1 else 0.0
    )
    cells["inference_reward_se"] = [float(se.get((p, s), np.nan)) for p, s in zip(cells["dropout"], cells["split"])]
    return cells.reset_index(drop=True)


def wireless_cells(path: str | Path, protect: bool = False):
    """One row per (SNR, split, withheld[, K with protect]) of a physical link: log-PPL (token-weighted
    over draws, with its 95% interval), accuracy, latency. Without `protect` only the K = 0 rows."""
    needed = ("link", "snr_db", "split", "withheld", "nll", "token_accuracy", "total_s", "scored_tokens")
    frame = _read_sweep(path, needed + (("protect",) if protect else ()))
    frame = frame[schema.is_physical(frame)]
    frame = frame.assign(protect=frame["protect"].fillna(0)) if protect else unprotected(frame)
    if frame.empty:
        raise UserError(f"{path} has no physical-link rows: sweep with --snrs (and --withheld)")
    if protect and frame["protect"].nunique() < 2:
        raise UserError(f"{path} has one protection level only: sweep with --protects for a protect-form surrogate")
    keys = ["snr_db", "split", "withheld"] + (["protect"] if protect else [])
    cells = _pooled(frame, keys, path).rename(columns={"nll": "log_ppl"})
    finite = np.isfinite(cells["log_ppl"])
    if not finite.all():  # a cell whose perplexity overflowed has no log-PPL to fit: say so, then leave it out
        print(
            f"[layersplit] {path}: {int((~finite).sum())} of {len(cells)} cells have an infinite or undefined "
            "log-perplexity and are left out of the fit",
            file=sys.stderr,
        )
    return cells[finite].reset_index(drop=True)


# --- the fit measured on held-out cells ---------------------------------------------------------
def holdout_mask(n: int, fraction: float = HOLDOUT_FRACTION, seed: int = 0) -> np.ndarray:
    """True for the cells kept out of the fit (a seeded random share, at least one)."""
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).permutation(n)[: max(1, round(fraction * n))]] = True
    return held


def r_squared(y, prediction) -> float:
    """The coefficient of determination of `prediction` for `y` (nan when y is constant); figures.py's too."""
    y, prediction = np.asarray(y, dtype=np.float64), np.asarray(prediction, dtype=np.float64)
    residual = float(np.sum((y - prediction) ** 2))
    total = float(np.sum((y - np.mean(y)) ** 2))
    return 1.0 - residual / total if total > 0 else float("nan")


def ppl_of(form: str, cells, prediction: np.ndarray) -> np.ndarray:
    """Perplexity implied by a prediction: paper PPL_ref (1 - r); wireless exp(log-PPL)."""
    if form == "paper":
        return cells["ppl_ref"].to_numpy() * (1.0 - prediction[:, 0])
    return np.exp(prediction[:, 0])


def quality(surrogate: Surrogate, cells) -> dict:
    """R-squared per output and mean absolute error in perplexity terms on `cells`."""
    prediction = surrogate.predict(cells[list(surrogate.inputs)].to_numpy())
    measured_ppl = cells["ppl"].to_numpy() if surrogate.form == "paper" else np.exp(cells["log_ppl"].to_numpy())
    predicted_ppl = ppl_of(surrogate.form, cells, prediction)
    metrics = {
        f"r2_{name}": r_squared(cells[name].to_numpy(), prediction[:, i]) for i, name in enumerate(surrogate.outputs)
    }
    metrics.update(
        {
            f"mae_{name}": float(np.mean(np.abs(cells[name].to_numpy() - prediction[:, i])))
            for i, name in enumerate(surrogate.outputs)
        }
    )
    metrics["mae_ppl"] = float(np.mean(np.abs(measured_ppl - predicted_ppl)))
    if "inference_reward_se" in cells and surrogate.form == "paper":
        # the share of the target's variance that is the sweep's own sampling noise: no fit can explain
        # it on held-out cells, so 1 - noise_share is about the best held-out R2 these measurements allow
        noise = float(np.nanmean(cells["inference_reward_se"].to_numpy() ** 2))
        metrics["noise_share"] = noise / float(np.var(cells["inference_reward"].to_numpy()))
    metrics["median_relative_error_ppl"] = float(np.median(np.abs(predicted_ppl / measured_ppl - 1.0)))
    metrics["cells"] = int(len(cells))
    return metrics


def fit_from_sweep(
    form: str,
    sweep_path: str | Path,
    seed: int = 0,
    epochs: int = EPOCHS,
    holdout: float = HOLDOUT_FRACTION,
    repeats: int = HOLDOUT_REPEATS,
):
    """Measure the fit on held-out cells, then fit every cell: returns (surrogate fitted on all cells,
    cells with a `held_out` flag and the held-out model's predictions). surrogate.metrics holds the
    held-out quality (of the model fitted without those cells) and the final fit's quality."""
    cells = paper_cells(sweep_path) if form == "paper" else wireless_cells(sweep_path, protect=form == "protect")
    spec = FORMS[form]
    inputs, outputs = list(spec["inputs"]), list(spec["outputs"])
    held = holdout_mask(len(cells), holdout, seed)
    probe = fit(form, cells[~held][inputs].to_numpy(), cells[~held][outputs].to_numpy(), seed, epochs)
    surrogate = fit(
        form,
        cells[inputs].to_numpy(),
        cells[outputs].to_numpy(),
        seed,
        epochs,
        metadata={
            "sweep_file": str(sweep_path),
            "seed": seed,
            "epochs": epochs,
            "cells": len(cells),
            "held_out_cells": int(held.sum()),
            "held_out_fraction": holdout,
        },
    )
    first = _read_sweep(sweep_path, ("model", "dataset")).iloc[0]
    surrogate.metadata.update(model=str(first["model"]), dataset=str(first["dataset"]))
    if form == "paper":
        surrogate.metadata["reference_split"] = REFERENCE_SPLIT
    surrogate.metrics = {"held_out": quality(probe, cells[held]), "train": quality(surrogate, cells)}
    if repeats:  # the held-out R2 over other held-out draws (seeds seed+1..): how much it depends on which cells
        r2 = {}
        for k in range(1, repeats + 1):
            other = holdout_mask(len(cells), holdout, seed + k)
            model = fit(form, cells[~other][inputs].to_numpy(), cells[~other][outputs].to_numpy(), seed + k, epochs)
            for name, value in quality(model, cells[other]).items():
                if name.startswith("r2_") or name == "noise_share":
                    r2.setdefault(name, []).append(value)
        surrogate.metrics["held_out_repeats"] = {"draws": repeats, **r2}
    prediction = probe.predict(cells[inputs].to_numpy())
    cells = cells.assign(held_out=held, **{f"predicted_{n}": prediction[:, i] for i, n in enumerate(outputs)})
    cells["predicted_ppl"] = ppl_of(form, cells, prediction)
    return surrogate, cells


def describe(surrogate: Surrogate) -> str:
    lines = [f"{surrogate.form} surrogate: {', '.join(surrogate.inputs)} -> {', '.join(surrogate.outputs)}"]
    for part, label in (("held_out", "held-out, fitted without them"), ("train", "all cells, the final fit")):
        m = surrogate.metrics.get(part)
        if m:
            r2 = ", ".join(f"R2 {k[3:]} {v:.4f}" for k, v in m.items() if k.startswith("r2_"))
            lines.append(
                f"  {label} ({m['cells']} cells): {r2}; MAE perplexity {m['mae_ppl']:.3g} "
                f"(median relative error {100 * m['median_relative_error_ppl']:.2f}%)"
            )
    repeats = surrogate.metrics.get("held_out_repeats")
    if repeats:
        spread = ", ".join(
            f"R2 {k[3:]} mean {np.mean(v):.3f} [{min(v):.3f}, {max(v):.3f}]"
            for k, v in repeats.items()
            if k.startswith("r2_")
        )
        if "noise_share" in repeats:
            spread += f"; noise share {np.mean(repeats['noise_share']):.3f}"
        lines.append(f"  {repeats['draws']} more held-out draws: {spread}")
    return "\n".join(lines)


# --- the fit command's work ----------------------------------------------------------------------
def report_files(results_dir: str | Path, report: str) -> tuple[Path, Path]:
    """The reports of one fit: its cells with the held-out predictions (CSV) and its metrics (JSON)."""
    return Path(results_dir) / f"rsm_fit_{report}.csv", Path(results_dir) / f"rsm_fit_{report}.json"


def fit_and_report(
    form: str,
    sweep_path: str | Path,
    output: str | Path,
    report: str,
    results_dir: str | Path,
    seed: int,
    epochs: int,
    holdout: float,
    repeats: int,
) -> None:
    """Fit the form's surrogate from a sweep (fit_from_sweep), save it to output, write its reports to
    results_dir (report_files) and print its description."""
    start = time.perf_counter()
    rsm, fitted_cells = fit_from_sweep(form, sweep_path, seed=seed, epochs=epochs, holdout=holdout, repeats=repeats)
    rsm.metadata["fit_seconds"] = time.perf_counter() - start
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    rsm.save(output)
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    cells_path, metrics_path = report_files(results_dir, report)
    cli.write_text_atomic(cells_path, fitted_cells.to_csv(index=False))
    cli.write_text_atomic(metrics_path, json.dumps({"metadata": rsm.metadata, "metrics": rsm.metrics}, indent=2))
    print(describe(rsm))
    print(f"  -> {output}; cells and predictions in {cells_path} ({rsm.metadata['fit_seconds']:.1f} s)")
