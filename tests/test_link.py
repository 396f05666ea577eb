"""The split-layer link on a tiny random Llama: where it cuts, what it zeroes, and that it leaves cleanly."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from conftest import TINY_LAYERS, tiny_config
from layersplit import UserError, channel
from layersplit.link import LlamaForCausalLMWithChannel, SplitLink
from layersplit.models import find_decoder_layers

IDS = torch.randint(0, 300, (1, 48), generator=torch.Generator().manual_seed(1))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def capture_inputs(model):
    """Record the hidden state entering each decoder layer and the final norm."""
    seen = {}
    layers = find_decoder_layers(model)
    targets = list(enumerate(layers)) + [(len(layers), model.model.norm)]
    handles = [
        m.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, args[0].clone())) for i, m in targets
    ]
    return seen, handles


@pytest.mark.parametrize("split", range(TINY_LAYERS))
def test_hook_cuts_after_the_chosen_layer(tiny_llama, split):
    link = SplitLink(tiny_llama, split=split, dropout=1.0)
    seen, handles = capture_inputs(tiny_llama)
    logits(tiny_llama)
    for h in handles:
        h.remove()
    for i in range(split + 1):  # the UE's layers see an untouched hidden state
        assert torch.count_nonzero(seen[i]) == seen[i].numel(), f"layer {i} input was touched"
    assert torch.count_nonzero(seen[split + 1]) == 0  # what the edge receives: everything lost at p = 1
    assert link.transfers[0].tokens == IDS.shape[1]


def test_zeroed_fraction_matches_p_without_rescaling(tiny_llama):
    p = 0.3
    link = SplitLink(tiny_llama, split=1, dropout=p, seed=3)
    hidden = torch.randn(8, 256, 64)
    received = link.transmit(hidden)
    lost = received == 0
    n = hidden.numel()
    assert abs(lost.float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5
    assert torch.equal(received[~lost], hidden[~lost])  # survivors are not rescaled by 1/(1-p)
    assert link.impaired_fraction == pytest.approx(lost.float().mean().item())


def test_p_zero_is_bit_identical(tiny_llama):
    reference = logits(tiny_llama)
    SplitLink(tiny_llama, split=2, dropout=0.0)
    assert torch.equal(logits(tiny_llama), reference)


def test_same_seed_same_result_other_seed_other_result(tiny_llama):
    link = SplitLink(tiny_llama, split=1, dropout=0.2, seed=7)
    first = logits(tiny_llama)
    link.reseed(7)
    assert torch.equal(logits(tiny_llama), first)
    link.reseed(8)
    assert not torch.equal(logits(tiny_llama), first)


def test_masks_are_nested_across_p(tiny_llama):
    """One uniform field per transfer: what p = 0.1 loses, p = 0.3 loses too."""
    link = SplitLink(tiny_llama, split=0, seed=5)
    hidden = torch.randn(1, 64, 64)
    lost = {}
    for p in (0.1, 0.3):
        link.set_dropout(p)
        link.reseed(5)
        lost[p] = link.transmit(hidden) == 0
    assert torch.all(lost[0.3][lost[0.1]])
    assert lost[0.3].sum() > lost[0.1].sum()


def test_detach_removes_the_hook(tiny_llama):
    reference = logits(tiny_llama)
    link = SplitLink(tiny_llama, split=1, dropout=0.5)
    assert not torch.equal(logits(tiny_llama), reference)
    link.detach()
    assert not link.attached
    assert all(len(layer._forward_hooks) == 0 for layer in link.layers)
    assert torch.equal(logits(tiny_llama), reference)


def test_moving_the_split_moves_the_single_hook(tiny_llama):
    link = SplitLink(tiny_llama, split=0, dropout=0.5)
    link.set_split(3)
    assert [len(layer._forward_hooks) for layer in link.layers] == [0, 0, 0, 1]


@pytest.mark.parametrize("split", [-1, TINY_LAYERS, 1.5])
def test_bad_split_is_a_clear_error(tiny_llama, split):
    with pytest.raises(UserError, match=rf"valid 0\.\.{TINY_LAYERS - 1}"):
        SplitLink(tiny_llama, split=split)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_bad_probability_is_a_clear_error(tiny_llama, p):
    with pytest.raises(UserError, match=r"outside \[0, 1\]"):
        SplitLink(tiny_llama, dropout=p)


def test_delay_is_accounted_not_slept(tiny_llama):
    link = SplitLink(tiny_llama, split=0, delay_range_s=(5.0, 10.0))  # would take seconds if slept
    logits(tiny_llama)
    logits(tiny_llama)
    assert len(link.transfers) == 2
    assert all(5.0 <= t.delay_s <= 10.0 for t in link.transfers)
    assert link.total_delay_s >= 10.0
    assert link.transfers[0].bits == IDS.shape[1] * 64 * 32  # tokens x hidden x float32


def test_generation_sends_one_token_per_decoding_step(tiny_llama):
    link = SplitLink(tiny_llama, split=1, dropout=0.1)
    with torch.no_grad():
        tiny_llama.generate(input_ids=IDS[:, :10], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert [t.tokens for t in link.transfers] == [10, 1, 1, 1, 1]


def test_original_subclass_keeps_the_original_methods(tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLMWithChannel(tiny_config()).eval()
    reference = logits(model)  # a fresh model has p = 0
    model.set_specified_layers(2)
    model.set_dropout_prob(1.0)
    seen, handles = capture_inputs(model)
    logits(model)
    assert torch.count_nonzero(seen[3]) == 0 and torch.count_nonzero(seen[2]) == seen[2].numel()
    model.set_dropout_prob(0.0)
    assert torch.equal(logits(model), reference)
    for h in handles:
        h.remove()
    model.save_pretrained(tmp_path)  # and it round-trips through from_pretrained with its link
    reloaded = LlamaForCausalLMWithChannel.from_pretrained(tmp_path).eval()
    assert torch.equal(logits(reloaded), reference)
    reloaded.set_dropout_prob(0.5)
    assert not torch.equal(logits(reloaded), reference)


def tiny_qwen2():
    return Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=300,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()


def tiny_gpt2():
    return GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=64, n_layer=3, n_head=4, n_positions=128)).eval()


@pytest.mark.parametrize("build", [tiny_qwen2, tiny_gpt2])
def test_link_attaches_to_other_decoder_only_models(build):
    torch.manual_seed(0)
    model = build()
    reference = logits(model)
    link = SplitLink(model, split=1, dropout=0.0)
    assert torch.equal(logits(model), reference)
    link.set_dropout(0.5)
    assert not torch.equal(logits(model), reference)
    assert link.transfers[-1].impaired > 0


def test_decoder_layers_are_found_from_the_models_own_declaration(tiny_llama):
    """_no_split_modules names the layer class: found even where no known path or length scan would."""

    class Unusual(torch.nn.Module):
        _no_split_modules = ["LlamaDecoderLayer"]

        def __init__(self, layers):
            super().__init__()
            self.blocks = layers  # no known path, and a second ModuleList of the same length beside it
            self.adapters = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in layers)
            self.config = tiny_llama.config

    model = Unusual(tiny_llama.model.layers)
    assert find_decoder_layers(model) is tiny_llama.model.layers
    model._no_split_modules = []  # without the declaration the scan finds two candidates and gives up
    with pytest.raises(UserError, match="cannot split Unusual"):
        find_decoder_layers(model)


def test_a_model_without_decoder_layers_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(UserError, match="cannot split Sequential"):
        find_decoder_layers(model)


# --- physical link modes (a LinkConfig from layersplit.channel) -------------------------------


def test_erasure_with_single_element_packets_is_the_original_mask(tiny_llama):
    cfg = channel.LinkConfig(snr_db=8.0, modulation="qpsk", fading="rayleigh", elements_per_packet=1, header_bits=0)
    link = SplitLink(tiny_llama, split=1, seed=11)
    link.set_channel(cfg, "erasure")
    per = channel.packet_error_rate(cfg)
    assert link.dropout == per and link.element_loss == per
    hidden = torch.randn(2, 40, 64)
    erased = link.transmit(hidden)
    link.set_dropout(per)
    link.reseed(11)
    assert torch.equal(erased, link.transmit(hidden))


def test_erasure_loses_whole_packets_at_the_packet_error_rate(tiny_llama):
    cfg = channel.LinkConfig(snr_db=15.0, modulation="16qam", fading="rayleigh", elements_per_packet=16)
    link = SplitLink(tiny_llama, split=1, seed=2)
    link.set_channel(cfg, "erasure")
    hidden = torch.randn(4, 250, 64)
    packets = (link.transmit(hidden) == 0).reshape(-1, 16)
    lost = packets.all(1)
    assert torch.equal(packets.any(1), lost)  # a packet is lost whole or not at all
    per, n = link.dropout, len(lost)
    assert abs(lost.float().mean().item() - per) < 4 * (per * (1 - per) / n) ** 0.5


def test_erasure_transfer_records_packets_and_their_air_time(tiny_llama):
    cfg = channel.LinkConfig(snr_db=20.0, elements_per_packet=64, header_bits=32, bits_per_element=16)
    link = SplitLink(tiny_llama, split=0)
    link.set_channel(cfg, "erasure")
    logits(tiny_llama)
    transfer = link.transfers[-1]
    assert transfer.bits == channel.payload_bits(cfg, IDS.shape[1], 64) == 48 * 1056  # 48 tokens x 64 = 48 packets
    assert transfer.delay_s == pytest.approx(transfer.bits / channel.achievable_rate_bps(cfg))


def test_withheld_elements_are_zeroed_and_shorten_the_transmission(tiny_llama):
    cfg = channel.LinkConfig(snr_db=15.0, fading="rayleigh", elements_per_packet=16)
    hidden = torch.randn(4, 250, 64) + 5.0  # no element is zero by chance
    link = SplitLink(tiny_llama, split=1, seed=5)
    link.set_channel(cfg, "erasure")
    full = link.transmit(hidden)
    link.set_withheld(0.3)
    link.reseed(5)
    part = link.transmit(hidden)
    sent = link.transfers[-1]
    n, per = hidden.numel(), link.dropout
    zeroed = (part == 0).float().mean().item()
    expected = 0.3 + 0.7 * per
    assert abs(zeroed - expected) < 0.02 and link.element_loss == pytest.approx(expected)
    assert sent.impaired == int((part == 0).sum())
    # packets carry only the sent elements: air time falls by the withheld share
    assert sent.bits / link.transfers[0].bits == pytest.approx(0.7, abs=0.01)
    assert sent.bits == pytest.approx(channel.payload_bits(cfg, 1000, 64, withheld=0.3), rel=0.01)
    # a packet is lost whole: the elements it carried are zeroed together, wherever they sit
    kept_and_received = part != 0
    assert kept_and_received.sum() > 0.5 * 0.7 * n * (1 - per)
    link.set_withheld(0.0)
    link.reseed(5)
    assert torch.equal(link.transmit(hidden), full)  # nothing withheld: the original masks


def test_withheld_share_is_validated(tiny_llama):
    link = SplitLink(tiny_llama, split=1)
    with pytest.raises(UserError, match="withheld"):
        link.set_withheld(1.5)


def test_awgn_noise_power_follows_the_snr(tiny_llama):
    link = SplitLink(tiny_llama, split=0, seed=4)
    hidden = torch.randn(1, 500, 64) * 3.0
    for snr_db in (0.0, 10.0, 30.0):
        link.set_channel(channel.LinkConfig(snr_db=snr_db, fading="awgn"), "awgn")
        noise = link.transmit(hidden) - hidden
        ratio = (hidden.pow(2).mean() / noise.pow(2).mean()).item()
        assert 10 * math.log10(ratio) == pytest.approx(snr_db, abs=0.1)
    link.set_channel(channel.LinkConfig(snr_db=10.0, fading="rayleigh", elements_per_packet=8), "awgn")
    link.reseed(4)
    first = link.transmit(hidden)
    link.reseed(4)
    assert torch.equal(first, link.transmit(hidden)) and torch.isfinite(first).all()
    noise_per_packet = (first - hidden).reshape(-1, 8).pow(2).mean(1)
    assert noise_per_packet.max() / noise_per_packet.min() > 100  # deep fades enhance the noise of whole packets


def test_bitflip_flips_bits_at_the_ber(tiny_llama):
    cfg = channel.LinkConfig(snr_db=3.0, modulation="bpsk", fading="awgn", bits_per_element=16)
    link = SplitLink(tiny_llama, split=0, seed=9)
    link.set_channel(cfg, "bitflip")
    hidden = torch.randn(1, 2000, 64).to(torch.float16).float()  # exactly representable: no rounding on the wire
    received = link.transmit(hidden)
    flipped = hidden.to(torch.float16).view(torch.int16) ^ received.to(torch.float16).view(torch.int16)
    n_bits = flipped.numel() * 16
    bit_errors = sum(int(((flipped >> b) & 1).sum()) for b in range(16))
    assert abs(bit_errors / n_bits - link.ber) < 4 * (link.ber / n_bits) ** 0.5
    assert link.transfers[-1].impaired == int((flipped != 0).sum())
    assert link.element_loss == pytest.approx(1 - (1 - link.ber) ** 16)


def test_bitflip_non_finite_values_do_not_crash_the_evaluation(tiny_llama):
    from layersplit.perplexity import evaluate

    link = SplitLink(tiny_llama, split=1, seed=0)
    link.set_channel(channel.LinkConfig(snr_db=-5.0, modulation="bpsk", fading="awgn"), "bitflip")
    result = evaluate(tiny_llama, IDS[0], context_length=16, stride=16)
    assert len(result.window_nlls) == 3  # every window evaluated; NaN ones are counted, not lost


def test_bad_channel_mode_is_a_clear_error(tiny_llama):
    link = SplitLink(tiny_llama)
    with pytest.raises(UserError, match="unknown link mode"):
        link.set_channel(channel.LinkConfig(), "smoke")
    with pytest.raises(UserError, match="16 or 32 bits"):
        link.set_channel(channel.LinkConfig(bits_per_element=8), "bitflip")
