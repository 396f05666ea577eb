"""Sliding-window perplexity against a direct computation with plain transformers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from layersplit import UserError
from layersplit.link import SplitLink
from layersplit.perplexity import evaluate, sliding_windows

TOKENS = torch.randint(0, 300, (230,), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize(
    "n, context, stride", [(230, 64, 32), (230, 64, 64), (230, 20, 50), (10, 64, 32), (64, 64, 16)]
)
def test_windows_score_each_token_at_most_once(n, context, stride):
    windows = sliding_windows(n, context, stride)
    scored = [t for w in windows for t in range(w.first_target, w.end)]
    assert len(scored) == len(set(scored)) and 0 not in scored
    assert all(w.end - w.begin <= context and w.begin < w.first_target for w in windows)
    if stride < context:  # windows overlap: every token but the very first is scored
        assert sorted(scored) == list(range(1, n))
    else:  # disjoint windows: a window's first token has no context inside it and is not scored
        assert sorted(scored) == [t for t in range(1, n) if 0 < t % stride < context]


def direct_nll_per_window(model, ids, context, stride):
    """The textbook loop: full logits for each window, labels before the new part masked."""
    nlls, correct, prev_end = [], [], 0
    for begin in range(0, len(ids), stride):
        end = min(begin + context, len(ids))
        first = max(prev_end, begin + 1)
        with torch.no_grad():
            logp = F.log_softmax(model(input_ids=ids[None, begin:end]).logits[0].double(), -1)
        positions = torch.arange(first, end)
        nlls.append(-logp[positions - begin - 1, ids[positions]])
        correct.append(logp[positions - begin - 1].argmax(-1) == ids[positions])
        prev_end = end
        if end == len(ids):
            break
    return nlls, correct


@pytest.mark.parametrize("context, stride", [(64, 32), (64, 64), (100, 30)])
def test_perplexity_equals_direct_computation(tiny_llama, context, stride):
    result = evaluate(tiny_llama, TOKENS, context_length=context, stride=stride)
    nlls, correct = direct_nll_per_window(tiny_llama, TOKENS, context, stride)
    all_nll = torch.cat(nlls)
    assert result.tokens == len(all_nll) == len(TOKENS) - 1 - (0 if stride < context else (len(TOKENS) - 1) // stride)
    assert result.nll == pytest.approx(all_nll.mean().item(), rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(all_nll.mean().item()), rel=1e-5)
    assert result.token_accuracy == pytest.approx(torch.cat(correct).double().mean().item())


def test_window_weighting_is_the_mean_over_windows(tiny_llama):
    result = evaluate(tiny_llama, TOKENS, context_length=20, stride=50, weighting="window")
    nlls, _ = direct_nll_per_window(tiny_llama, TOKENS, 20, 50)
    assert result.nll == pytest.approx(torch.stack([n.mean() for n in nlls]).mean().item(), rel=1e-5)


def test_uniform_predictions_give_the_vocabulary_size(tiny_llama):
    torch.nn.init.zeros_(tiny_llama.lm_head.weight)  # every logit 0: each token has probability 1/V
    result = evaluate(tiny_llama, TOKENS, context_length=64, stride=32)
    assert result.ppl == pytest.approx(tiny_llama.config.vocab_size, rel=1e-6)


def test_impaired_link_changes_perplexity_and_is_reproducible(tiny_llama):
    clean = evaluate(tiny_llama, TOKENS, 64, 32)
    link = SplitLink(tiny_llama, split=1, dropout=0.5, seed=0)
    first = evaluate(tiny_llama, TOKENS, 64, 32)
    link.reseed(0)
    again = evaluate(tiny_llama, TOKENS, 64, 32)
    assert first.nll != clean.nll
    assert first.nll == again.nll and first.correct == again.correct


def test_nonfinite_windows_are_counted_not_hidden(tiny_llama):
    calls = {"n": 0}

    def poison_second_window(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 2 else output

    clean = evaluate(tiny_llama, TOKENS, context_length=64, stride=64)
    tiny_llama.model.layers[0].register_forward_hook(poison_second_window)
    result = evaluate(tiny_llama, TOKENS, context_length=64, stride=64)
    assert result.nonfinite_windows == 1 and math.isnan(result.window_nlls[1])
    assert math.isfinite(result.ppl) and result.tokens == clean.tokens - 63  # the second window's 63 scored tokens


def test_bad_protocol_is_a_clear_error(tiny_llama):
    with pytest.raises(UserError, match="context length"):
        evaluate(tiny_llama, TOKENS, context_length=1, stride=1)
    with pytest.raises(UserError, match="weighting"):
        evaluate(tiny_llama, TOKENS, 64, 64, weighting="median")
