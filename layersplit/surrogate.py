"""Reward surrogate models (RSM): small MLPs fitted to sweep results that stand in for the LLM.

Two forms, one network family (the original's Linear-ReLU-Linear-ReLU-Linear of width 128):

paper     [p, split] -> inference reward, the original's input and output. The inference reward
          of a cell is its perplexity gain over the paper's fixed split (REFERENCE_SPLIT, 5 layers
          on the UE) under the same p:  r(p, s) = (PPL(p, ref) - PPL(p, s)) / PPL(p, ref).
          The original's reward was relative to the perplexity at the episode's *initial* state,
          which a function of (p, split) alone cannot represent; this reference can, keeps the
          original's scale (zero at the baseline, small near p = 0) and matches the authors'
          released surrogate, whose output crosses zero near split 5. The input normalisation is
          folded into the first layer, so the saved weights take raw [p, split] exactly like the
          authors' file (keys fc.0, fc.2, fc.4) and either loads in place of the other.
wireless  [SNR dB, split, withheld share] -> [log-perplexity, token accuracy, latency s], with
          the input and output normalisation stored beside the weights.
protect   [SNR dB, split, withheld share, K] -> the wireless outputs, K the elements per token sent
          over the protected path (add_noise.py --protects): LayerSplit-Protect-v0's surrogate.

Files: `load` reads with torch.load(weights_only=True), so a file holding anything besides tensors,
numbers and strings is refused rather than unpickled (no code from a .pth runs), and refuses in one line
naming the file what is not a surrogate: unreadable or truncated, another zip, another form, weights of
other shapes or not finite, normalisation of the wrong length, not finite or with a std <= 0. The fit
reads sweep rows through schema.read_rows (an invalid row is refused by file:line, never fitted on).

`split` is the 0-based decoder layer after which the link sits (split + 1 layers on the UE), as
in the sweep CSV and the original code. Predictions go through numpy (`predict`), which costs a few
microseconds per point instead of a torch call's framework overhead. torch is imported only where a
network is built, fitted, saved or loaded: the scripts read this module's settings before that.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import UserError, cells, paper, schema

if TYPE_CHECKING:
    import torch

FORMAT = "layersplit-rsm/1"  # tag of files written here; a bare fc.* state_dict is the authors' format
HIDDEN = 128  # the original's width
REFERENCE_SPLIT = paper.FIXED_SPLIT  # 5 layers on the UE; the paper form's reward is relative to it
PAPER_SPLITS = paper.SPLITS  # the original surrogate environment's split values 1..10
FORMS = {
    "paper": {"inputs": ("dropout", "split"), "outputs": ("inference_reward",)},
    "wireless": {"inputs": ("snr_db", "split", "withheld"), "outputs": ("log_ppl", "token_accuracy", "latency_s")},
    "protect": {
        "inputs": ("snr_db", "split", "withheld", "protect"),
        "outputs": ("log_ppl", "token_accuracy", "latency_s"),
    },
}
HOLDOUT_FRACTION = 0.2  # share of cells kept out of the fit to measure its quality
HOLDOUT_REPEATS = 8  # further held-out draws whose R2 is reported too: one draw of 18 cells is a noisy estimate
EPOCHS = 2000  # full-batch Adam steps (more only fits the draws' noise: held-out R2 stops improving)
LEARNING_RATE = 3e-3
AUTHORS_KEYS = {"fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias", "fc.4.weight", "fc.4.bias"}


def network(n_in: int = 2, n_out: int = 1, hidden: int = HIDDEN) -> torch.nn.Module:
    """The original RSM: Linear(n_in, 128)-ReLU-Linear(128, 128)-ReLU-Linear(128, n_out), named `fc` (the
    authors' state_dict keys fc.0, fc.2, fc.4)."""
    import torch

    nn = torch.nn
    return nn.Sequential(
        OrderedDict(
            fc=nn.Sequential(
                nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_out)
            )
        )
    )


@dataclass
class Surrogate:
    """A fitted RSM with what it needs to be used and trusted: its form, scaling and provenance."""

    form: str
    net: torch.nn.Module  # network()
    in_mean: np.ndarray
    in_std: np.ndarray
    out_mean: np.ndarray
    out_std: np.ndarray
    metadata: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def __post_init__(self):
        import torch

        self._weights = [
            (m.weight.detach().double().numpy().T.copy(), m.bias.detach().double().numpy().copy())
            for m in self.net.fc
            if isinstance(m, torch.nn.Linear)
        ]

    @property
    def inputs(self) -> tuple[str, ...]:
        return FORMS[self.form]["inputs"]

    @property
    def outputs(self) -> tuple[str, ...]:
        return FORMS[self.form]["outputs"]

    def predict(self, x) -> np.ndarray:
        """Outputs (n x outputs) for inputs (n x inputs) in natural units; numpy, no autograd."""
        h = (np.atleast_2d(np.asarray(x, dtype=np.float64)) - self.in_mean) / self.in_std
        for i, (w, b) in enumerate(self._weights):
            h = h @ w + b
            if i < len(self._weights) - 1:
                np.maximum(h, 0.0, out=h)
        return h * self.out_std + self.out_mean

    def save(self, path: str | Path) -> None:
        """Written to a temporary sibling, then renamed: a kill mid-write never leaves half a file in
        place of a good surrogate (the shipped reward_predictor.pth among them)."""
        import torch

        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            torch.save(
                {
                    "format": FORMAT,
                    "form": self.form,
                    "inputs": list(self.inputs),
                    "outputs": list(self.outputs),
                    "state_dict": self.net.state_dict(),
                    "normalisation": {
                        k: getattr(self, k).tolist() for k in ("in_mean", "in_std", "out_mean", "out_std")
                    },
                    "metadata": self.metadata,
                    "metrics": self.metrics,
                },
                tmp,
            )
            os.replace(tmp, path)
        except OSError as e:
            raise UserError(f"cannot write the surrogate to {path} ({e.strerror or type(e).__name__})") from None
        finally:
            tmp.unlink(missing_ok=True)


def _one_line(error: Exception, limit: int = 240) -> str:
    """An exception's message as one short line (torch's span several)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load(path: str | Path, form: str | None = None) -> Surrogate:
    """A surrogate written by `Surrogate.save`, or a bare state_dict in the authors' format (keys
    fc.0/fc.2/fc.4, raw [p, split] in, inference reward out). `form`: the form the caller needs."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no reward surrogate at {path} (fit one with: python train_rsm.py fit)")
    try:  # weights_only: tensors and plain containers, never code (a surrogate file may come from anyone)
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors alike: the file is not a readable checkpoint
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):  # an object refused
            raise UserError(
                f"{path} holds Python objects besides tensors; refused, since loading them could run "
                "code (a surrogate holds tensors, numbers and strings only)"
            ) from None
        raise UserError(f"{path} is not a readable PyTorch file ({type(e).__name__}: {_one_line(e)})") from None
    if isinstance(blob, dict) and blob.get("format") == FORMAT:
        found, state, norm = blob.get("form"), blob.get("state_dict"), blob.get("normalisation")
        metadata, metrics = blob.get("metadata", {}), blob.get("metrics", {})
        if found not in FORMS or not isinstance(state, dict) or not isinstance(norm, dict):
            raise UserError(
                f"{path} is a damaged {FORMAT} file: its form ({found!r}), state_dict or normalisation "
                "is missing or of another kind"
            )
    elif isinstance(blob, dict) and set(blob) == AUTHORS_KEYS:
        found, state = "paper", blob
        norm = {"in_mean": [0.0, 0.0], "in_std": [1.0, 1.0], "out_mean": [0.0], "out_std": [1.0]}
        metadata, metrics = {"source": "a bare state_dict in the authors' format", "file": str(path)}, {}
    else:
        keys = sorted(map(str, blob))[:8] if isinstance(blob, dict) else type(blob).__name__
        raise UserError(
            f"{path} is not a reward surrogate: neither a {FORMAT} file nor the authors' state_dict "
            f"(keys fc.0/fc.2/fc.4); found {keys}"
        )
    if form is not None and found != form:
        raise UserError(
            f"{path} is a '{found}' surrogate ({', '.join(FORMS[found]['inputs'])} in), but this needs a "
            f"'{form}' one ({', '.join(FORMS[form]['inputs'])} in)"
        )
    spec = FORMS[found]
    net = network(len(spec["inputs"]), len(spec["outputs"]))
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: weights do not fit the {found} surrogate's network: {_one_line(e)}") from None
    if not all(bool(torch.isfinite(t).all()) for t in net.state_dict().values()):
        raise UserError(f"{path}: the {found} surrogate's weights hold NaN or infinite values")
    scaling = []
    for name, size in (
        ("in_mean", len(spec["inputs"])),
        ("in_std", len(spec["inputs"])),
        ("out_mean", len(spec["outputs"])),
        ("out_std", len(spec["outputs"])),
    ):
        try:
            values = np.asarray(norm[name], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            values = None
        if (
            values is None
            or values.shape != (size,)
            or not np.isfinite(values).all()
            or (name.endswith("std") and not (values > 0).all())
        ):
            raise UserError(
                f"{path}: normalisation {name} must be {size} finite number(s){' > 0' if name.endswith('std') else ''}"
            )
        scaling.append(values)
    return Surrogate(
        found,
        net.eval(),
        *scaling,
        metadata=metadata if isinstance(metadata, dict) else {},
        metrics=metrics if isinstance(metrics, dict) else {},
    )


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


# --- fitting -------------------------------------------------------------------------------------
def holdout_mask(n: int, fraction: float = HOLDOUT_FRACTION, seed: int = 0) -> np.ndarray:
    """True for the cells kept out of the fit (a seeded random share, at least one)."""
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).permutation(n)[: max(1, round(fraction * n))]] = True
    return held


def fit(
    form: str,
    x: np.ndarray,
    y: np.ndarray,
    seed: int = 0,
    epochs: int = EPOCHS,
    lr: float = LEARNING_RATE,
    metadata: dict | None = None,
) -> Surrogate:
    """Fit the form's network to inputs x (n x inputs) and targets y (n x outputs) by full-batch Adam
    on standardised data (mean squared error)."""
    import torch

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64).reshape(len(x), -1)
    spec = FORMS[form]
    if x.shape[1] != len(spec["inputs"]) or y.shape[1] != len(spec["outputs"]):
        raise ValueError(f"{form} surrogate: expected {len(spec['inputs'])} inputs and {len(spec['outputs'])} outputs")
    in_mean, in_std = x.mean(0), np.where(x.std(0) > 0, x.std(0), 1.0)
    out_mean, out_std = y.mean(0), np.where(y.std(0) > 0, y.std(0), 1.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 128-wide MLP on a few hundred points: threads only add overhead
    try:
        net = _train(x, y, in_mean, in_std, out_mean, out_std, seed, epochs, lr)
    finally:
        torch.set_num_threads(threads)
    if form == "paper":  # fold the scaling into the weights: raw [p, split] in, reward out, like the original
        with torch.no_grad():
            first, last = net.fc[0], net.fc[4]
            w = first.weight / torch.tensor(in_std, dtype=torch.float32)
            first.bias -= (w * torch.tensor(in_mean, dtype=torch.float32)).sum(1)
            first.weight.copy_(w)
            last.weight *= float(out_std[0])
            last.bias.mul_(float(out_std[0])).add_(float(out_mean[0]))
        in_mean, in_std, out_mean, out_std = np.zeros(2), np.ones(2), np.zeros(1), np.ones(1)
    return Surrogate(form, net, in_mean, in_std, out_mean, out_std, metadata=dict(metadata or {}))


def _train(x, y, in_mean, in_std, out_mean, out_std, seed, epochs, lr) -> torch.nn.Module:
    import torch

    torch.manual_seed(seed)
    net = network(x.shape[1], y.shape[1])
    xt = torch.tensor((x - in_mean) / in_std, dtype=torch.float32)
    yt = torch.tensor((y - out_mean) / out_std, dtype=torch.float32)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs)
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(net(xt), yt)
        loss.backward()
        optimiser.step()
        schedule.step()
    return net.eval()


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
