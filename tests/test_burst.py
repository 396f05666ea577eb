"""Burst losses (--link burst, uplink.burst_loss): the mean loss is erasure's, losses cluster within a
coherence interval, draws are seeded like every other, and erasure is unchanged."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from layersplit import UserError, channel, links, uplink

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


# --- the NR link's bursts (--link nr_burst, uplink.nr_burst_loss) ------------------------------------------
NR_SNR = 35.0  # a residual TB loss of a few percent on the committed table: enough losses to measure


def test_a_coherence_time_holds_the_tbs_sent_in_it_on_the_frame():
    from layersplit import nr

    for snr in (0.0, 15.0, NR_SNR):
        point = nr.operating_point(snr)
        seconds_per_tb = point.transmissions * nr.SLOT_S / point.frame.uplink_share  # U slots only
        assert point.coherence_tbs * seconds_per_tb <= channel.COHERENCE_S < (point.coherence_tbs + 1) * seconds_per_tb
    # worked by hand at 15 dB on DDDSU: 40 ms x 1/5 / (1.033 transmissions x 0.5 ms) = 15.5 -> 15 TBs
    assert nr.operating_point(15.0).coherence_tbs == 15


def test_nr_bursts_lose_whole_coherence_intervals_from_a_seeded_offset():
    from layersplit import nr

    point = nr.operating_point(-5.0)  # residual 0.31: many intervals lost
    per = point.coherence_tbs
    for seed in range(20):
        gen = uplink.generator(seed)
        offset = int(uplink.uniform(1, gen).item() * per)  # the function's first draw
        lost = uplink.nr_burst_loss(200, point, uplink.generator(seed))
        assert set(lost.tolist()) <= {0.0, 1.0}
        whole = torch.cat([torch.full((offset,), -1.0), lost]).view(-1)  # pad the first interval's head
        whole = torch.cat([whole, torch.full(((-len(whole)) % per,), -1.0)]).view(-1, per)
        for interval in whole:  # each interval's TBs share one fate
            assert len(set(interval[interval >= 0].tolist())) <= 1
        assert torch.equal(lost, uplink.nr_burst_loss(200, point, uplink.generator(seed)))


def test_nr_bursts_keep_nr_s_mean_loss_and_cluster():
    x = torch.randn(1, 512, 64)  # 32,768 elements of 16 bits: 13 TBs of MCS 28 at 35 dB, one or two intervals
    cfg = channel.LinkConfig(snr_db=NR_SNR)
    burst, independent = links.physical(cfg, "nr_burst"), links.physical(cfg, "nr")
    share = {
        imp.mode: [float(uplink.impair(x, imp, uplink.generator(s))[1]) / x.numel() for s in range(3000)]
        for imp in (burst, independent)
    }
    residual = burst.link.point.residual
    assert burst.loss == independent.loss == residual  # the same mean loss, in latency and reports too
    sd = statistics.pstdev(share["nr_burst"]) / 3000**0.5
    assert statistics.mean(share["nr_burst"]) == pytest.approx(residual, abs=4 * sd)
    assert statistics.mean(share["nr"]) == pytest.approx(residual, rel=0.15)
    assert statistics.pstdev(share["nr_burst"]) > 2.5 * statistics.pstdev(share["nr"])
    assert burst.link.tx_s(512, 64) == independent.link.tx_s(512, 64)


def test_nr_bursts_are_seeded_withhold_as_nr_and_are_not_served():
    x = torch.randn(1, 64, 576)
    imp = links.physical(channel.LinkConfig(snr_db=-5.0), "nr_burst", withheld=0.2)
    a, b = (uplink.impair(x, imp, uplink.generator(3))[0] for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a, uplink.impair(x, imp, uplink.generator(4))[0])
    assert 0.19 < float((a == 0).float().mean())  # at least the withheld share
    assert "nr_burst" not in links.SERVED
    with pytest.raises(UserError, match="not modelled on the NR link with burst losses"):
        imp.protecting(4)


def test_the_ldpc_waterfall_is_steep_on_awgn_as_nr_bursts_assume():
    """nr_burst's one fate per fade rests on LDPC's waterfall: on the committed AWGN table every MCS goes from
    every TB lost to none within 2 dB (TDL fades move the SNR by far more)."""
    from conftest import ROOT
    from layersplit import nr

    rows = nr.read_table(ROOT / "results" / "nr_bler_awgn.csv")
    for mcs in sorted({int(r["mcs"]) for r in rows}):
        curve = [(float(r["snr_db"]), int(r["errors"]), int(r["slots"])) for r in rows if int(r["mcs"]) == mcs]
        all_lost = max(s for s, e, n in curve if e == n)
        none_lost = min(s for s, e, n in curve if e == 0)
        assert 0 < none_lost - all_lost <= 2.0, mcs
    # over TDL-C the same span is 12 dB or more at every MCS: the fades, not the code, set the loss
    tdl = nr.read_table(ROOT / "results" / "nr_bler.csv")
    for mcs in sorted({int(r["mcs"]) for r in tdl}):
        curve = [(float(r["snr_db"]), int(r["errors"]), int(r["slots"])) for r in tdl if int(r["mcs"]) == mcs]
        all_lost = max(s for s, e, n in curve if e == n)
        none_lost = min((s for s, e, n in curve if e == 0), default=max(s for s, _, _ in curve))
        assert none_lost - all_lost >= 12.0, mcs
