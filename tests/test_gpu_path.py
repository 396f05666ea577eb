"""The sweep's accelerator path, tested on the CPU where it has an equivalent and on CUDA (gpu marker):
mask fields drawn by a device generator keep their Bernoulli marginals and nesting, the CPU keeps its
numbers, the LM head scored a slice of tokens at a time equals whole logits, the automatic batch size
changes no number, the edge's layers compiled give the eager numbers, and the host waits on the
device once per window, not once per variant."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from transformers import LlamaForCausalLM

from conftest import tiny_config
from layersplit import grid, links, perplexity, sweep, sweep_store, uplink
from layersplit.models import find_decoder_layers
from layersplit.segments import SplitModel
from test_sweep import RUN, TOKENS, assert_same_numbers, config, rows_by_key

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 8])
def test_device_masks_have_bernoulli_marginals_and_are_nested(device, k):
    n, probabilities = 400_000, (0.02, 0.1, 0.3)
    masks = [uplink.lost_elements(n, k, p, 0.0, uplink.generator(11, device))[0] for p in probabilities]
    packets = n // k
    for p, mask in zip(probabilities, masks):
        assert mask.device.type == device
        share = float(mask.view(packets, k)[:, 0].float().mean())
        assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / packets), (p, share)  # a packet's elements share its fate
        assert torch.equal(mask.view(packets, k), mask.view(packets, k)[:, :1].expand(-1, k))
    for smaller, larger in zip(masks, masks[1:]):
        assert not (smaller & ~larger).any(), "a mask at a lower p must lie inside the mask at a higher one"
    again = uplink.lost_elements(n, k, 0.1, 0.0, uplink.generator(11, device))[0]
    other = uplink.lost_elements(n, k, 0.1, 0.0, uplink.generator(12, device))[0]
    assert torch.equal(again, masks[1]) and not torch.equal(other, masks[1])


@pytest.mark.parametrize("device", DEVICES)
def test_device_masks_with_withholding_lose_the_expected_share(device):
    n, loss, withheld = 400_000, 0.1, 0.25
    lost, sent = uplink.lost_elements(n, 4, loss, withheld, uplink.generator(5, device))
    expected = withheld + (1 - withheld) * loss
    assert abs(float(lost.float().mean()) - expected) < 5 * math.sqrt(expected * (1 - expected) / (n / 4))
    assert abs(int(sent) / n - (1 - withheld)) < 0.01


def test_the_cpu_stream_is_todays():
    """The default generator draws exactly what a CPU torch.Generator seeded alike draws (today's numbers)."""
    seed = uplink.stream_seed(0, 3, 1)
    today = torch.rand(1000, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(uplink.uniform(1000, uplink.generator(seed)), today)
    assert torch.equal(uplink.uniform(1000, uplink.generator(seed, "cpu")), today)


def test_received_equals_impair_without_the_counts():
    x = torch.randn(1, 12, 64)
    for imp in (links.direct(0.3), links.direct(0.2, withheld=0.3), links.direct(0.1).protecting(3)):
        full, impaired, sent = uplink.impair(x, imp, uplink.generator(9))
        assert torch.equal(uplink.received(x, imp, uplink.generator(9)), full)
        assert isinstance(impaired, int) and isinstance(sent, int)


def test_chunked_nll_equals_the_whole_logits(monkeypatch):
    torch.manual_seed(0)
    states, head = torch.randn(3, 37, 16), torch.nn.Linear(16, 50, bias=False)
    targets = torch.randint(0, 50, (37,))
    nll, correct = perplexity.token_nll_and_correct(head(states), targets.expand(3, -1))
    monkeypatch.setattr(perplexity, "NLL_CHUNK_ELEMENTS", 3 * 50 * 5)  # 5 tokens a slice: 8 slices, the last short
    got_nll, got_correct = perplexity.chunked_nll(states, head, targets)
    assert got_nll.dtype == torch.float64
    assert torch.allclose(got_nll, nll.double().sum(1), rtol=1e-6)
    assert torch.equal(got_correct, correct.sum(1))


class ScaledLogits(LlamaForCausalLM):
    """A causal LM that does something after its head (as logit soft-capping or scaling does)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2.0
        return out


def test_a_head_with_work_after_it_is_scored_through_the_whole_forward(tiny_llama, tmp_path):
    assert SplitModel(tiny_llama).head_separable()
    torch.manual_seed(0)
    scaled = ScaledLogits(tiny_config()).eval()
    assert not SplitModel(scaled).head_separable()
    cfg = config(splits=(1, 2), draws=1)
    results = {}
    for name, runner in (("fast", sweep.run_fast), ("naive", sweep.run_naive)):
        store = sweep_store.ResultsStore(tmp_path / f"{name}.csv", RUN, sweep_store.link_columns(cfg.link_template))
        runner(scaled, TOKENS, cfg, store, progress=False)
        results[name] = rows_by_key(tmp_path / f"{name}.csv")
    assert_same_numbers(results["fast"], results["naive"])


def test_auto_batch_and_small_slices_change_no_number(tiny_llama, tmp_path, monkeypatch):
    reference = run_sweep(tiny_llama, tmp_path / "fixed.csv", batch_size=16)
    auto = run_sweep(tiny_llama, tmp_path / "auto.csv", batch_size=None)  # on a CPU: grid.CPU_BATCH
    assert numbers(reference) == numbers(auto)  # the same strings: the same numbers to the last digit
    monkeypatch.setattr(perplexity, "NLL_CHUNK_ELEMENTS", 1000)  # a few tokens of the head at a time
    # other matmul shapes round differently: ~1e-7 in a window's NLL, ~1e-5 in the spread over windows
    assert_same_numbers(run_sweep(tiny_llama, tmp_path / "sliced.csv", batch_size=3), reference, rel=1e-4)


def test_cpu_mask_device_is_the_auto_one_on_a_cpu(tiny_llama, tmp_path):
    assert numbers(run_sweep(tiny_llama, tmp_path / "a.csv", mask_device="auto")) == numbers(
        run_sweep(tiny_llama, tmp_path / "c.csv", mask_device="cpu")
    )
    with pytest.raises(Exception, match="mask device 'gpu'"):
        run_sweep(tiny_llama, tmp_path / "bad.csv", mask_device="gpu")


def test_compiled_layers_give_the_eager_numbers_and_leave_the_model_eager(tiny_llama, tmp_path):
    """The edge's layers through torch.compile: the same rows up to float rounding, over two batch
    shapes (3 variants, then the remainder: one recompile, with a symbolic batch); the model's own
    layers stay eager and the compiled ones share their parameters."""
    eager = run_sweep(tiny_llama, tmp_path / "eager.csv", batch_size=3)
    torch._dynamo.reset()  # compiled afresh here, whatever ran before
    frames = torch._dynamo.utils.counters["frames"]["ok"]
    compiled = run_sweep(tiny_llama, tmp_path / "compiled.csv", batch_size=3, compile=True)
    assert torch._dynamo.utils.counters["frames"]["ok"] > frames  # the sweep did run compiled code
    assert_same_numbers(compiled, eager, rel=1e-4)
    segments = SplitModel(tiny_llama)
    view, _ = segments.view(2, segments.n_layers, True, compiled=True)
    layers, own = view.get_decoder().layers, find_decoder_layers(tiny_llama)
    assert all(isinstance(layer, torch._dynamo.eval_frame.OptimizedModule) for layer in layers)
    assert [layer._orig_mod for layer in layers] == list(own[2:])
    assert not any(isinstance(layer, torch._dynamo.eval_frame.OptimizedModule) for layer in own)
    assert segments.view(2, segments.n_layers, True)[0].get_decoder().layers[0] is own[2]  # the eager view


def run_sweep(model, path, runner=sweep.run_fast, **overrides) -> dict:
    cfg = config(splits=(0, 2), draws=2)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    store = sweep_store.ResultsStore(path, RUN, sweep_store.link_columns(cfg.link_template))
    runner(model, TOKENS, cfg, store, progress=False)
    return rows_by_key(path)


def numbers(rows: dict) -> dict:
    return {key: {c: row[c] for c in ("nll", "token_accuracy", "scored_tokens")} for key, row in rows.items()}


# --- on CUDA ----------------------------------------------------------------------------------------
@pytest.fixture
def cuda_llama(tiny_llama):
    return tiny_llama.to("cuda")


def assert_close_numbers(got: dict, expected: dict) -> None:
    """The same cells, their NLL, accuracy and token counts equal up to float rounding across devices."""
    assert got.keys() == expected.keys()
    for key in got:
        for column in got[key]:
            assert float(got[key][column]) == pytest.approx(float(expected[key][column]), rel=1e-4), (key, column)


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_on_cuda_the_fast_path_equals_the_naive_path_with_device_masks(cuda_llama, tmp_path, compile):
    """Also with the edge's layers compiled (--compile)."""
    fast = numbers(run_sweep(cuda_llama, tmp_path / "fast.csv", batch_size=None, compile=compile))
    naive = numbers(run_sweep(cuda_llama, tmp_path / "naive.csv", runner=sweep.run_naive))
    assert_close_numbers(fast, naive)


@pytest.mark.gpu
def test_on_cuda_cpu_masks_give_the_cpu_numbers(tiny_llama, tmp_path):
    on_cpu = numbers(run_sweep(tiny_llama, tmp_path / "cpu.csv"))
    on_cuda = numbers(run_sweep(tiny_llama.to("cuda"), tmp_path / "cuda.csv", mask_device="cpu"))
    assert_close_numbers(on_cuda, on_cpu)


@pytest.mark.gpu
def test_on_cuda_the_auto_batch_fills_free_memory(cuda_llama):
    segments = SplitModel(cuda_llama)
    hidden = segments.hidden_after(TOKENS[None, :64], 0, 2)
    batch = sweep.auto_batch_size(segments, hidden, 2, TOKENS[1:64])
    assert batch > grid.CPU_BATCH  # a tiny model on a large GPU holds far more than a CPU batch


@pytest.mark.gpu
def test_on_cuda_the_host_waits_once_per_window_not_per_variant(cuda_llama):
    """Synchronising calls during a walk do not grow with the number of variants (one batch each). A
    first walk, not counted, takes the one-off syncs of a first call (on an H200 they made the 1-variant
    walk count 22 and the 8-variant one 18)."""
    segments = SplitModel(cuda_llama)
    counts = []
    for probabilities in ([0.1], [0.1], [0.02, 0.06, 0.1, 0.14, 0.18, 0.22, 0.26, 0.3]):
        cfg = sweep.SweepConfig(
            [1], grid.make_conditions(probabilities, [], "erasure"), 2, 0, 64, 64, config().link_template, batch_size=64
        )
        work = [(1, [(c, d) for c in range(len(cfg.conditions)) for d in range(grid.draws_of(cfg.conditions[c], 2))])]
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                list(sweep.walk(segments, TOKENS, cfg, work, 1))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    counts = counts[1:]  # the warm-up walk's count left out
    assert counts[0] > 0, "the walk reads its scores, a synchronising call the counter must see"
    assert counts[1] <= counts[0], counts
