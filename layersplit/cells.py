"""A sweep cell (one split x one channel condition) pooled over its noise draws, with 95% intervals.

The sweep writes one row per (split, condition, draw): the token-weighted NLL and accuracy over the
cell's windows, and the spread of the per-window values (`windows`, `nll_window_sd`,
`accuracy_window_sd`). The samples of a cell are its (window, draw) pairs: every pair has its own
mask generator (seeded by seed, window, draw), so they are independent draws of the link on
different stretches of text, and the interval covers both the link's randomness and the text's.

Pooled value: total NLL / total scored tokens over all draws (exp of it: the perplexity).
Interval: the t interval of a mean over the N = windows x draws samples, their variance pooled from
each draw's spread over windows and the spread of the draws' means. Windows hold the same number of
tokens (one fewer in the first window, which has no target for its first token), so weighting the
samples equally, as the interval does, differs from the token-weighted mean by a negligible amount.
Pure Python (no numpy, no pandas): figures.py and the surrogate fit both use it.
"""
from __future__ import annotations

import math

from scipy import stats

CONFIDENCE = 0.95  # level of the intervals
WINDOW_COLUMNS = ("windows", "nll_window_sd", "accuracy_window_sd")  # what the sweep writes for them


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _half_width(means: list[float], sds: list[float], counts: list[int], pooled_mean: float,
                confidence: float) -> float:
    n = sum(counts)
    if n < 2:
        return float("nan")
    within = sum((k - 1) * sd * sd for sd, k in zip(sds, counts) if k > 1 and math.isfinite(sd))
    between = sum(k * (m - pooled_mean) ** 2 for m, k in zip(means, counts))
    sd = math.sqrt((within + between) / (n - 1))
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)


def pool(rows: list[dict], confidence: float = CONFIDENCE) -> dict:
    """Pool the draws of one cell (rows: dicts with nll, token_accuracy, scored_tokens and the
    WINDOW_COLUMNS; strings or numbers). Returns draws, samples, nll, nll_ci95 (half-width), ppl,
    ppl_low, ppl_high, token_accuracy, accuracy_ci95; NaN where no finite window was scored."""
    rows = [r for r in rows if _float(r["scored_tokens"]) > 0 and math.isfinite(_float(r["nll"]))]
    if not rows:
        nan = float("nan")
        return {"draws": 0, "samples": 0, "nll": nan, "nll_ci95": nan, "ppl": nan, "ppl_low": nan, "ppl_high": nan,
                "token_accuracy": nan, "accuracy_ci95": nan}
    tokens = [_float(r["scored_tokens"]) for r in rows]
    nlls = [_float(r["nll"]) for r in rows]
    accuracies = [_float(r["token_accuracy"]) for r in rows]
    counts = [int(_float(r.get("windows", 1))) if math.isfinite(_float(r.get("windows", 1))) else 1 for r in rows]
    total = sum(tokens)
    nll = sum(t * x for t, x in zip(tokens, nlls)) / total
    accuracy = sum(t * x for t, x in zip(tokens, accuracies)) / total
    nll_half = _half_width(nlls, [_float(r.get("nll_window_sd")) for r in rows], counts, nll, confidence)
    accuracy_half = _half_width(accuracies, [_float(r.get("accuracy_window_sd")) for r in rows], counts, accuracy,
                                confidence)
    return {"draws": len(rows), "samples": sum(counts), "nll": nll, "nll_ci95": nll_half, "ppl": math.exp(nll),
            "ppl_low": math.exp(nll - nll_half), "ppl_high": math.exp(nll + nll_half),
            "token_accuracy": accuracy, "accuracy_ci95": accuracy_half}
