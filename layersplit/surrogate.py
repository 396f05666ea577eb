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
other shapes or not finite, normalisation of the wrong length, not finite or with a std <= 0. The
surrogates are fitted from sweep results (the cells, the held-out measure, the fit command's reports)
in surrogate_fit.py, through `fit` here.

`split` is the 0-based decoder layer after which the link sits (split + 1 layers on the UE), as
in the sweep CSV and the original code. Predictions go through numpy (`predict`), which costs a few
microseconds per point instead of a torch call's framework overhead. torch is imported only where a
network is built, fitted, saved or loaded: the scripts read this module's settings before that.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import UserError, paper

if TYPE_CHECKING:
    import torch

FORMAT = "layersplit-rsm/1"  # tag of files written here; a bare fc.* state_dict is the authors' format
HIDDEN = 128  # the original's width
REFERENCE_SPLIT = paper.FIXED_SPLIT  # 5 layers on the UE; the paper form's reward is relative to it
FORMS = {
    "paper": {"inputs": ("dropout", "split"), "outputs": ("inference_reward",)},
    "wireless": {"inputs": ("snr_db", "split", "withheld"), "outputs": ("log_ppl", "token_accuracy", "latency_s")},
    "protect": {
        "inputs": ("snr_db", "split", "withheld", "protect"),
        "outputs": ("log_ppl", "token_accuracy", "latency_s"),
    },
}
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

    @property
    def fingerprint(self) -> str:
        """SHA-256 of what the predictions depend on (form, weights, scaling), not of the file: a run
        trained on one surrogate is told from one trained on a refit, whatever the files are called."""
        digest = hashlib.sha256(self.form.encode())
        for w, b in self._weights:
            digest.update(np.ascontiguousarray(w).tobytes() + np.ascontiguousarray(b).tobytes())
        for name in ("in_mean", "in_std", "out_mean", "out_std"):
            digest.update(np.ascontiguousarray(getattr(self, name), dtype=np.float64).tobytes())
        return digest.hexdigest()

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


# --- fitting -------------------------------------------------------------------------------------
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
