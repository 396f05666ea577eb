"""Burst losses (--link burst, uplink.burst_loss): the mean loss is erasure's, losses cluster within a
coherence interval, draws are seeded like every other, and erasure is unchanged."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from layersplit import channel, links, uplink

CFG = channel.LinkConfig(snr_db=15.0)


def test_a_fade_held_for_a_coherence_time_spans_the_packets_sent_in_it():
    packets = channel.coherence_packets(CFG)
    seconds = packets * CFG.bits_per_packet / channel.achievable_rate_bps(CFG)
    assert seconds <= channel.COHERENCE_S < seconds + CFG.bits_per_packet / channel.achievable_rate_bps(CFG)
    # the loss in a fade averages to the packet error rate over the fade's distribution
    rng = np.random.default_rng(0)
    gain = rng.gamma(CFG.nakagami_m, 1 / CFG.nakagami_m, 200_000)
    assert np.mean(channel.packet_loss_in_fade(CFG, gain)) == pytest.approx(channel.packet_error_rate(CFG), rel=0.01)


def test_burst_losses_keep_the_mean_and_cluster():
    x = torch.randn(1, 64, 576)  # 576 packets, within one or two coherence intervals
    burst, erasure = links.physical(CFG, "burst"), links.physical(CFG, "erasure")
    share = {
        imp.mode: [uplink.impair(x, imp, uplink.generator(s))[1] / x.numel() for s in range(400)]
        for imp in (burst, erasure)
    }
    per = channel.packet_error_rate(CFG)
    assert statistics.mean(share["burst"]) == pytest.approx(per, abs=0.03)
    assert statistics.mean(share["erasure"]) == pytest.approx(per, abs=0.005)
    assert statistics.pstdev(share["burst"]) > 10 * statistics.pstdev(share["erasure"])
    assert burst.loss == erasure.loss == per  # the link's mean loss, in its latency and reports


def test_burst_draws_are_seeded_and_withholding_fills_packets_as_erasure():
    x = torch.randn(1, 16, 576)
    imp = links.physical(CFG, "burst", withheld=0.2)
    a, b = (uplink.impair(x, imp, uplink.generator(7))[0] for _ in range(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, uplink.impair(x, imp, uplink.generator(8))[0])
    lost = (a == 0).flatten()
    assert 0.19 < lost.float().mean()  # at least the withheld share


def test_without_a_fade_to_hold_bursts_are_erasure_at_its_loss():
    for cfg in (channel.LinkConfig(snr_db=4.0, fading="awgn"), channel.LinkConfig(snr_db=15.0, block_fading=False)):
        loss = uplink.burst_loss(100, cfg, uplink.generator(1))
        assert torch.allclose(loss, torch.full((100,), channel.packet_error_rate(cfg)))


def test_the_burst_table_pairs_on_windows_worked_by_hand():
    import importlib.util

    from conftest import ROOT
    from layersplit import schema

    spec = importlib.util.spec_from_file_location("burst_bench", ROOT / "bench" / "burst.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def rows(nlls):  # {draw: [window NLLs]}, 10 tokens a window
        return [
            {
                "split": "4",
                "snr_db": "15",
                "draw": str(d),
                "nll": str(sum(w) / len(w)),
                "scored_tokens": str(10 * len(w)),
                "token_accuracy": "0.5",
                "windows": str(len(w)),
                schema.WINDOW_SCORES: [(i, x, 0.5) for i, x in enumerate(w)],
            }
            for d, w in nlls.items()
        ]

    burst = rows({0: [3.0, 2.0, 4.0], 1: [5.0, 2.0, 2.0]})  # per window, mean over draws: 4, 2, 3
    erasure = rows({0: [2.0, 2.0, 2.5], 1: [2.0, 2.0, 2.5]})  # 2, 2, 2.5
    [cell] = bench.pairs(burst, erasure)
    # differences per window 2, 0, 0.5: mean 2.5 / 3, t interval over 3 windows
    assert cell["nll_difference"] == pytest.approx(2.5 / 3) and cell["windows"] == 3 and cell["draws"] == 2
    sd = statistics.stdev([2.0, 0.0, 0.5])
    assert cell["ci95"] == pytest.approx(4.302652729911275 * sd / 3**0.5)
    assert cell["ppl_burst"] == pytest.approx(np.exp((3 + 2 + 4 + 5 + 2 + 2) / 6))
