"""Sliding-window perplexity and top-1 next-token accuracy.

Windows of `context_length` tokens start every `stride` tokens. Each token is scored once, in the
first window that reaches it, so overlapping labels are masked and every scored token sees at
least context_length - stride tokens of context (except near the start). Perplexity is
exp(total NLL / scored tokens): token-weighted, not a mean over windows.

The original code used model.config.max_length (20 on a stock config) as the window and averaged
per-window NLLs, skipping NaN windows; ORIGINAL_PROTOCOL reproduces that for comparison only.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from . import UserError

ORIGINAL_PROTOCOL = {"context_length": 20, "stride": 512, "weighting": "window"}  # the original's defective window


@dataclass(frozen=True)
class Window:
    begin: int  # first token fed to the model
    end: int  # one past the last token fed
    first_target: int  # first token scored; tokens first_target..end-1 are scored


def sliding_windows(n_tokens: int, context_length: int, stride: int) -> list[Window]:
    if context_length < 2 or stride < 1:
        raise UserError(f"context length must be >= 2 and stride >= 1 (got {context_length}, {stride})")
    windows, scored_until = [], 1  # token 0 has no context: it is never scored
    for begin in range(0, n_tokens, stride):
        end = min(begin + context_length, n_tokens)
        first = max(scored_until, begin + 1)
        if first < end:
            windows.append(Window(begin, end, first))
            scored_until = end
        if end == n_tokens:
            break
    return windows


@dataclass
class EvalResult:
    nll_sum: float = 0.0  # summed over scored tokens of finite windows
    tokens: int = 0  # scored tokens of finite windows
    correct: int = 0  # scored tokens whose argmax prediction was right
    window_nlls: list[float] = field(default_factory=list)  # mean NLL per window, NaN/inf kept
    weighting: str = "token"

    @property
    def nonfinite_windows(self) -> int:
        return sum(not math.isfinite(x) for x in self.window_nlls)

    @property
    def nll(self) -> float:
        if self.weighting == "window":
            finite = [x for x in self.window_nlls if math.isfinite(x)]
            return sum(finite) / len(finite) if finite else float("nan")
        return self.nll_sum / self.tokens if self.tokens else float("nan")

    @property
    def ppl(self) -> float:
        return math.exp(self.nll) if math.isfinite(self.nll) else float("nan")

    @property
    def token_accuracy(self) -> float:
        return self.correct / self.tokens if self.tokens else float("nan")


def token_nll_and_correct(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL and top-1 correctness of `targets` under `logits` (..., vocab).

    logsumexp minus the target's logit reads the logits twice and writes nothing of their size,
    about 3x faster than cross_entropy on a large batch (the sweep's scoring is memory-bound).
    """
    logits = logits.float()
    nll = torch.logsumexp(logits, -1) - logits.gather(-1, targets[..., None]).squeeze(-1)
    return nll, logits.argmax(-1) == targets


NLL_CHUNK_ELEMENTS = 1 << 26  # logits made and scored at a time (batch x tokens x vocabulary): 256 MB in float32


def chunked_nll(
    states: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence NLL sum (float64) and correct count of `targets` (tokens,) under head(states)
    (batch x tokens x d), left on the states' device. The LM head runs on a slice of the tokens at a
    time, so no logits of the whole batch (let alone a float32 copy of them) are ever held: on a 7B
    model with a 49k vocabulary a batch of 16 x 2,048 tokens has 3.2 GB of bf16 logits."""
    batch, n = states.shape[:2]
    step = max(1, NLL_CHUNK_ELEMENTS // (batch * head.weight.shape[0]))
    nll = torch.zeros(batch, dtype=torch.float64, device=states.device)
    correct = torch.zeros(batch, dtype=torch.long, device=states.device)
    targets = targets.to(states.device)
    for lo in range(0, n, step):
        token_nll, hit = token_nll_and_correct(
            head(states[:, lo : lo + step]), targets[lo : lo + step].expand(batch, -1)
        )
        nll += token_nll.double().sum(1)
        correct += hit.sum(1)
    return nll, correct


@torch.no_grad()
def score_window(model, input_ids: torch.Tensor, n_targets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL and correctness of the last `n_targets` tokens of `input_ids` (1-D).

    Only the logits that predict those tokens are computed (logits_to_keep), which spares most of
    the LM head when windows overlap.
    """
    device = next(model.parameters()).device
    ids = input_ids.to(device)[None]
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=n_targets + 1).logits[0, :-1]
    else:  # an architecture without logits_to_keep: compute them all, keep the ones needed
        logits = model(input_ids=ids, use_cache=False).logits[0, -n_targets - 1 : -1]
    nll, correct = token_nll_and_correct(logits, ids[0, -n_targets:])
    return nll.cpu(), correct.cpu()


def evaluate(
    model,
    token_ids: torch.Tensor,
    context_length: int,
    stride: int,
    weighting: str = "token",
    progress: bool = False,
    desc: str = "perplexity",
) -> EvalResult:
    """Perplexity and token accuracy of `model` on `token_ids` (1-D LongTensor).

    Windows with a non-finite NLL (a broken link can produce NaN) are kept out of the totals and
    counted in `nonfinite_windows`, never dropped silently.
    """
    if weighting not in ("token", "window"):
        raise UserError(f"unknown weighting {weighting!r}: use token or window")
    result = EvalResult(weighting=weighting)
    windows = sliding_windows(len(token_ids), context_length, stride)
    for w in tqdm(windows, desc=desc, disable=not progress, leave=False):
        nll, correct = score_window(model, token_ids[w.begin : w.end], w.end - w.first_target)
        window_nll = float(nll.mean())
        result.window_nlls.append(window_nll)
        if math.isfinite(window_nll):
            result.nll_sum += float(nll.double().sum())
            result.tokens += len(nll)
            result.correct += int(correct.sum())
    return result
