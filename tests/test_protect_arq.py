"""The protected path in a block fade (layersplit/protect_arq.py): the rounds arithmetic against a case worked
by hand, the fade-held retries against a Monte Carlo, independent fades as PER^k, "counted" as the latency
model's cost, and NR's coded path as the NR link's air time."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layersplit import channel, compute, nr, nr_frame, nr_sim, protect_arq

CFG = channel.LinkConfig(snr_db=10.0)  # QPSK, Nakagami m = 2, 64 x 16-bit elements + 32 header bits a packet


def test_the_rounds_worked_by_hand():
    # two packets, each lost on its first try with probability 1/2 and on both with 1/4 (at most 2 tries);
    # round r ends at r seconds: R = 1 when both get through at once, (1 - 1/2)^2 = 1/4, else R = 2
    out = protect_arq._rounds_summary([1.0, 0.5, 0.25], 2, lambda r: float(r), deadline_s=1.5)
    assert out["mean_s"] == pytest.approx(1 * 0.25 + 2 * 0.75)
    assert out["p95_s"] == 2.0  # P(R <= 1) = 0.25 < 0.95
    assert out["delivered_by_deadline"] == pytest.approx(0.25)  # one round fits in 1.5 s: both at once
    assert out["lost_share"] == 0.25
    late = protect_arq._rounds_summary([1.0, 0.5, 0.25], 2, lambda r: float(r), deadline_s=5.0)
    assert late["delivered_by_deadline"] == pytest.approx((1 - 0.25) ** 2)  # both rounds fit: neither lost twice


def test_retries_in_one_fade_against_a_monte_carlo():
    rng = np.random.default_rng(1)
    gain = rng.gamma(CFG.nakagami_m, 1 / CFG.nakagami_m, 400_000)  # one fade per packet, kept over its tries
    esn0 = 10 ** (CFG.snr_db / 10)
    q = channel.per_independent(channel.ber_awgn(CFG.modulation, esn0 * gain), CFG.bits_per_packet)
    for k in (1, 3, 7):
        assert protect_arq.tries_beyond(CFG, k, block=True) == pytest.approx(np.mean(q**k), rel=0.01)
    # a new fade each try: PER^k; the same fade makes a deep fade's retries fail together (Jensen)
    per = channel.packet_error_rate(CFG)
    assert protect_arq.tries_beyond(CFG, 1, block=True) == pytest.approx(per, rel=1e-6)
    assert protect_arq.tries_beyond(CFG, 3, block=False) == pytest.approx(per**3)
    assert protect_arq.tries_beyond(CFG, 3, block=True) > 2 * per**3  # 0.53 against 0.24 at 10 dB
    # capped tries: E[tries] = sum_{k < N} s_k; more tries help little in a fade
    tries = [sum(protect_arq.tries_beyond(CFG, k, True) for k in range(n)) for n in (1, 7, 50)]
    assert tries[0] == 1.0 and tries[1] > 1 / (1 - per) and tries[2] > 3 * tries[1]
    # on AWGN (no fade) both are PER^k
    awgn = channel.LinkConfig(snr_db=5.0, fading="awgn")
    assert protect_arq.tries_beyond(awgn, 4, True) == protect_arq.tries_beyond(awgn, 4, False)


def test_counted_is_the_latency_models_cost_and_arq_adds_round_trips_and_losses():
    payload = channel.protected_payload_bits(512, 16, 576, 16)
    counted = protect_arq.counted(CFG, payload)
    assert counted["mean_s"] == pytest.approx(channel.protected_tx_s(CFG, 512, 16, 576))
    assert counted["lost_share"] == 0.0
    block = protect_arq.arq(CFG, payload, block=True)
    independent = protect_arq.arq(CFG, payload, block=False)
    assert block["lost_share"] == pytest.approx(protect_arq.tries_beyond(CFG, protect_arq.ARQ_MAX_TRIES, True))
    assert block["lost_share"] > independent["lost_share"] > 0
    assert block["mean_s"] > independent["mean_s"] > counted["mean_s"]
    assert block["delivered_by_deadline"] < independent["delivered_by_deadline"] <= 1


def test_the_coded_path_is_the_nr_links_air_time_at_its_mcs():
    payload = channel.protected_payload_bits(512, 64, 576, 16)
    out = protect_arq.coded(10.0, payload)
    point = nr.point_at(nr.load_table()[protect_arq.NR_MCS], 10.0, nr.HARQ_MAX_RETX, nr_frame.Frame("U"))
    assert out["mcs"] == protect_arq.NR_MCS and out["units"] == math.ceil(payload / point.tb_size)
    assert out["mean_s"] == pytest.approx(point.air_s(out["units"]))  # the rounds' mean is air_s's tail
    assert out["lost_share"] == point.residual
    reliable = protect_arq.coded(20.0, payload, lowest=False)
    assert reliable["mcs"] == nr.operating_point(20.0, rule="reliable", frame_name="FDD").mcs > protect_arq.NR_MCS
    # the default path reads the bound: at every SNR of the protect sweeps the committed tails certify its loss
    for snr in nr_sim.RELIABLE_SNR_DB:
        out = protect_arq.coded(snr, payload, lowest=False)
        assert out["lost_share"] <= out["lost_bound"] <= nr.RESIDUAL_TARGET, snr


def test_the_design_table_has_every_design_and_k():
    rows = protect_arq.design_table([10.0], {"smollm2-135m": compute.SMOLLM2_135M}, [4], 64)
    assert [r["design"] for r in rows] == list(protect_arq.DESIGNS)
    assert all(0 <= r["delivered_by_deadline"] <= 1 and 0 <= r["lost_share"] <= 1 for r in rows)


@pytest.mark.slow
def test_the_arq_table_command(tmp_path):
    from layersplit import channel_cli

    path = tmp_path / "arq.csv"
    assert channel_cli.main(["--arq-table", str(path)]) == 0
    rows = path.read_text().splitlines()
    ks = len(channel_cli.PROTECT_TABLE_KS) - 1  # K = 0 has no protected path
    assert len(rows) == 1 + 2 * len(channel_cli.PROTECT_TABLE_SNR_DB) * ks * len(protect_arq.DESIGNS)
