"""Tests of layersplit.channel: closed forms against Monte Carlo and the reference values of
/work/shared/notes/wireless-channel.md, latency arithmetic, the SNR process, validation, CLIs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from layersplit import channel as ch
from layersplit import channel_cli, compute

REPO = Path(__file__).resolve().parents[1]
Z_TOL = 3.5  # Monte Carlo tolerance in standard errors (about 3; a little more for ~30 comparisons)
MC_BITS = 400_000  # bits per Monte Carlo check: ~800 errors at BER 2e-3, 3.5 % standard error
MC_EBN0_DB = {  # Eb/N0 (dB) with BER about 2e-3 and PER (128-bit packets) between 0.03 and 0.3
    "awgn": {"bpsk": 6, "qpsk": 6, "16qam": 10, "64qam": 14},
    "rayleigh": {"bpsk": 21, "qpsk": 21, "16qam": 24, "64qam": 27},
    "nakagami": {"bpsk": 14, "qpsk": 14, "16qam": 17, "64qam": 21},
}
MC_NAKAGAMI_M = 1.7  # a non-integer shape, so no closed-form special case is exercised


def esn0_db(modulation: str, ebn0_db: float) -> float:
    return ebn0_db + 10 * math.log10(ch.bits_per_symbol(modulation))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=60)


# ---- BER -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "modulation, fading, ebn0_db, expected, rtol",
    [
        ("bpsk", "rayleigh", 10.0, 2.327e-2, 1e-3),
        ("16qam", "awgn", 10.0, 1.754e-3, 1e-3),
        ("16qam", "rayleigh", 10.0, 4.24e-2, 2e-3),
        ("bpsk", "awgn", 10.0, 3.87e-6, 1e-3),
        ("qpsk", "awgn", 10.0, 3.87e-6, 1e-3),  # QPSK per bit = BPSK at the same Eb/N0
    ],
)
def test_ber_reference_values(modulation, fading, ebn0_db, expected, rtol):
    assert ch.average_ber_ebn0(modulation, ebn0_db, fading) == pytest.approx(expected, rel=rtol)
    assert ch.average_ber(modulation, esn0_db(modulation, ebn0_db), fading) == pytest.approx(expected, rel=rtol)


def test_qam_terms_match_textbook_forms():
    g_b = 10**0.8  # Eb/N0 = 8 dB
    a16 = math.sqrt(0.8 * g_b)
    q = ch.qfunc
    assert ch.ber_awgn("16qam", 4 * g_b) == pytest.approx((3 * q(a16) + 2 * q(3 * a16) - q(5 * a16)) / 4, rel=1e-12)
    a64 = math.sqrt(3 * 6 * g_b / 63)  # 64-QAM, Cho & Yoon: 1/12 [7Q(a) + 6Q(3a) - Q(5a) + Q(9a) - Q(13a)]
    expected = (7 * q(a64) + 6 * q(3 * a64) - q(5 * a64) + q(9 * a64) - q(13 * a64)) / 12
    assert ch.ber_awgn("64qam", 6 * g_b) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("m", [2, 3])
def test_nakagami_quad_matches_bpsk_closed_form(m):
    g = 10.0  # average Eb/N0, linear; Proakis eq. (14.4-15) for integer m
    mu = math.sqrt(g / (m + g))
    expected = ((1 - mu) / 2) ** m * sum(math.comb(m - 1 + k, k) * ((1 + mu) / 2) ** k for k in range(m))
    assert ch.average_ber_ebn0("bpsk", 10.0, "nakagami", m) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("modulation", list(ch.MODULATIONS))
def test_nakagami_m1_is_rayleigh_and_large_m_is_awgn(modulation):
    snr = esn0_db(modulation, 12.0)
    rayleigh = ch.LinkConfig(snr_db=snr, modulation=modulation, fading="rayleigh")
    nakagami1 = ch.LinkConfig(snr_db=snr, modulation=modulation, fading="nakagami", nakagami_m=1.0)
    assert ch.average_ber(modulation, snr, "nakagami", 1.0) == pytest.approx(
        ch.average_ber(modulation, snr, "rayleigh"), rel=1e-6
    )
    assert ch.packet_error_rate(nakagami1) == pytest.approx(ch.packet_error_rate(rayleigh), rel=1e-6)
    snr = esn0_db(modulation, 7.0)  # BER ~ 1e-3 in AWGN
    assert ch.average_ber(modulation, snr, "nakagami", 1e4) == pytest.approx(
        ch.average_ber(modulation, snr, "awgn"), rel=1e-2
    )


@pytest.mark.parametrize("fading", ch.FADINGS)
@pytest.mark.parametrize("modulation", list(ch.MODULATIONS))
def test_closed_forms_match_monte_carlo(modulation, fading):
    """BER and PER (independent bit errors; one fade per packet) within Z_TOL standard errors."""
    rng = np.random.default_rng(1234)
    base = dict(
        snr_db=esn0_db(modulation, MC_EBN0_DB[fading][modulation]),
        modulation=modulation,
        fading=fading,
        nakagami_m=MC_NAKAGAMI_M,
        elements_per_packet=8,
        bits_per_element=16,
        header_bits=0,
    )
    fast = ch.LinkConfig(**base, block_fading=False)
    mc = channel_cli.monte_carlo_link(fast, MC_BITS // fast.bits_per_packet, rng)
    ber = ch.average_ber(modulation, fast.snr_db, fading, MC_NAKAGAMI_M)
    assert abs(mc["ber"] - ber) < Z_TOL * mc["ber_se"], (mc, ber)
    assert abs(mc["per"] - ch.packet_error_rate(fast)) < Z_TOL * mc["per_se"], (mc, ch.packet_error_rate(fast))
    block = ch.LinkConfig(**base, block_fading=True)
    mc = channel_cli.monte_carlo_link(block, MC_BITS // block.bits_per_packet, rng)
    assert abs(mc["per"] - ch.packet_error_rate(block)) < Z_TOL * mc["per_se"], (mc, ch.packet_error_rate(block))


# ---- packets ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ber, n_bits, expected", [(1e-4, 16, 1.6e-3), (1e-4, 12_000, 0.70), (1e-5, 12_000, 0.113)])
def test_per_examples_from_notes(ber, n_bits, expected):
    assert ch.per_independent(ber, n_bits) == pytest.approx(expected, rel=5e-3)


def test_block_fading_per_is_not_mean_ber_plugged_in():
    cfg = ch.LinkConfig(snr_db=20.0, modulation="qpsk", fading="rayleigh", block_fading=True)
    plugged = ch.per_independent(ch.average_ber("qpsk", 20.0, "rayleigh"), cfg.bits_per_packet)
    assert ch.packet_error_rate(cfg) == pytest.approx(0.1015, rel=1e-3)  # one fade per packet
    assert plugged > 0.9  # the mean BER spread over 1056 independent bits loses nearly every packet
    assert ch.packet_error_rate(ch.LinkConfig(**{**cfg.__dict__, "block_fading": False})) == pytest.approx(plugged)


def test_k1_erasure_statistic_equals_per():
    """k = 1, h = 0: each element is its own packet, so the zeroed fraction estimates PER."""
    cfg = ch.LinkConfig(
        snr_db=12.0,
        modulation="16qam",
        fading="nakagami",
        nakagami_m=2.0,
        elements_per_packet=1,
        header_bits=0,
        bits_per_element=16,
    )
    assert cfg.bits_per_packet == 16
    assert ch.element_loss(cfg) == ch.packet_error_rate(cfg)
    mc = channel_cli.monte_carlo_link(cfg, 20_000, np.random.default_rng(7))
    assert abs(mc["per"] - ch.element_loss(cfg)) < Z_TOL * mc["per_se"]


# ---- rate and latency ------------------------------------------------------------------------
def test_capacity_reference_values():
    assert ch.spectral_efficiency(10.0, "awgn") == pytest.approx(3.459, abs=5e-4)
    assert ch.spectral_efficiency(10.0, "rayleigh") == pytest.approx(2.907, abs=5e-4)
    rayleigh = ch.spectral_efficiency(10.0, "rayleigh")
    assert ch.spectral_efficiency(10.0, "nakagami", 1.0) == pytest.approx(rayleigh, rel=1e-7)
    assert ch.spectral_efficiency(10.0, "nakagami", 1e4) == pytest.approx(3.459, abs=1e-3)


def test_llama2_payload_and_tx_time():
    cfg = ch.LinkConfig(
        snr_db=10.0, fading="awgn", bits_per_element=16, elements_per_packet=1, header_bits=0, bandwidth_hz=20e6
    )
    assert ch.payload_bits(cfg, 512, 4096) == 33_554_432  # 33.55 Mbit
    assert ch.tx_latency_s(cfg, 512, 4096) == pytest.approx(0.485, abs=5e-4)
    assert ch.payload_bits(cfg, 1, 4096) == 65_536  # one decoding step: 65.5 kbit


def test_packet_overhead():
    cfg = ch.LinkConfig(elements_per_packet=64, header_bits=32, bits_per_element=16)
    assert ch.payload_bits(cfg, 512, 576) == 512 * 576 // 64 * 1056
    assert ch.payload_bits(cfg, 1, 100) == 2 * 1056  # a partial packet is sent whole


def test_decoder_layer_flops():
    # hidden 4, intermediate 8, 2 heads, 1 kv head, head_dim 2, 3 tokens, context 5:
    # q, o: 2*3*4*4 each = 96 + 96; k, v: 2*3*4*2 each = 48 + 48; mlp: 3 * 2*3*4*8 = 576;
    # scores and values: 2 * 2*3*5*4 = 240; total 1104.
    assert compute.decoder_layer_flops(4, 8, 2, 1, 2, tokens=3, context_len=5) == 1104
    # Llama-2-7B, one token, no cache: 2 x 202,375,168 parameters + 4 * 4096 attention.
    assert compute.decoder_layer_flops(4096, 11008, 32, 32, 128, tokens=1, context_len=1) == 404_766_720


def test_latency_breakdown_hand_worked():
    model = compute.ModelDims(
        n_layers=4, hidden_size=4, intermediate_size=8, num_heads=2, num_kv_heads=1, head_dim=2, vocab_size=10
    )
    # AWGN at SNR 3 (linear): log2(1 + 3) = 2 bit/s/Hz, at 1 kHz: 2000 bit/s. L = 4*16 + 8 = 72 bits.
    cfg = ch.LinkConfig(
        snr_db=10 * math.log10(3),
        fading="awgn",
        elements_per_packet=4,
        header_bits=8,
        bits_per_element=16,
        bandwidth_hz=1000.0,
    )
    pre = compute.latency_breakdown(cfg, model, split=0, tokens=3, ue_flops=1000.0, edge_flops=1e4)  # 1 layer on the UE
    # layer: projections 2*3*4*12 = 288, mlp 576, attention 4*3*3*4 = 144 -> 1008; lm head 2*3*4*10 = 240.
    # 12 elements -> 3 packets -> 216 bits -> 0.108 s.
    assert pre["ue_compute_s"] == pytest.approx(1.008)
    assert pre["tx_s"] == pytest.approx(0.108)
    assert pre["edge_compute_s"] == pytest.approx((3 * 1008 + 240) / 1e4)
    assert pre["total_s"] == pytest.approx(1.008 + 0.108 + 0.3264)
    dec = compute.latency_breakdown(cfg, model, split=0, tokens=3, phase="decode", ue_flops=1000.0, edge_flops=1e4)
    # one token, context 4: projections 96, mlp 192, attention 64 -> 352; lm head 80; 1 packet = 72 bits.
    assert dec == pytest.approx(
        {"ue_compute_s": 0.352, "tx_s": 0.036, "edge_compute_s": 0.1136, "total_s": 0.352 + 0.036 + 0.1136}
    )
    every = compute.latency_breakdown(cfg, model, split=3, tokens=3, ue_flops=1000.0, edge_flops=1e4)
    assert every["ue_compute_s"] == pytest.approx(4 * 1.008) and every["edge_compute_s"] == pytest.approx(240 / 1e4)
    with pytest.raises(ValueError, match="split must be between 0 and n_layers - 1 = 3"):
        compute.latency_breakdown(cfg, model, split=4, tokens=3)


# ---- SNR process -----------------------------------------------------------------------------
def test_ar1_stationary_statistics():
    mean, std, rho, n = 15.0, 4.0, 0.9, 200_000
    x = ch.snr_path(mean, std, rho, n, seed=0)
    se_mean = std * math.sqrt((1 + rho) / ((1 - rho) * n))  # effective sample size of an AR(1)
    assert abs(x.mean() - mean) < 4 * se_mean
    assert x.std() == pytest.approx(std, rel=0.02)
    assert np.corrcoef(x[:-1], x[1:])[0, 1] == pytest.approx(rho, abs=0.005)


def test_snr_process_reset_is_reproducible():
    process = ch.SnrProcess(10.0, 3.0, 0.5, seed=1)
    first = [process.snr_db] + [process.step() for _ in range(9)]
    process.reset(seed=1)
    assert [process.snr_db] + [process.step() for _ in range(9)] == first
    assert np.array_equal(ch.snr_path(10.0, 3.0, 0.5, 10, seed=1), first)


# ---- validation and CLI ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bandwidth_hz": -1.0}, "bandwidth_hz must be a positive number of Hz, got -1.0"),
        ({"modulation": "8psk"}, "modulation must be one of bpsk, qpsk, 16qam, 64qam, got '8psk'"),
        ({"fading": "rician"}, "fading must be one of awgn, rayleigh, nakagami, got 'rician'"),
        ({"nakagami_m": 0.3}, "nakagami_m must be >= 0.5, got 0.3"),
        ({"elements_per_packet": 0}, "elements_per_packet must be an integer >= 1, got 0"),
        ({"header_bits": -8}, "header_bits must be an integer >= 0, got -8"),
        ({"bits_per_element": 2.5}, "bits_per_element must be an integer >= 1, got 2.5"),
    ],
)
def test_bad_config_raises_clear_value_error(kwargs, message):
    with pytest.raises(ValueError) as excinfo:
        ch.LinkConfig(**kwargs)
    assert str(excinfo.value) == message


def test_cli_json():
    result = run_cli(
        "-m",
        "layersplit.channel",
        "--snr-db",
        "10",
        "--modulation",
        "16qam",
        "--fading",
        "nakagami",
        "--nakagami-m",
        "2",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    for key in (
        "ber",
        "per",
        "element_loss",
        "rate_bps",
        "tx_latency_prefill_s",
        "tx_latency_decode_s",
        "snr_db",
        "modulation",
        "fading",
        "nakagami_m",
        "bits_per_element",
        "elements_per_packet",
        "header_bits",
        "bandwidth_hz",
        "tokens",
        "hidden_size",
    ):
        assert key in out
    assert out["per"] == out["element_loss"] and 0 < out["ber"] < out["per"] < 1
    assert out["tx_latency_decode_s"] < out["tx_latency_prefill_s"]


def test_cli_help_states_snr_convention():
    result = run_cli("-m", "layersplit.channel", "--help")
    assert result.returncode == 0 and "per symbol, Es/N0" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bandwidth-hz", "-5"], "bandwidth_hz must be a positive"),
        (["--nakagami-m", "0.2"], "is not a Nakagami m here: use 0.5"),
        (["--modulation", "8psk"], "invalid choice: '8psk'"),
    ],
)
def test_cli_bad_input(args, message):
    result = run_cli("-m", "layersplit.channel", *args, "--json")
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]


# ---- table and figures -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_table(tmp_path_factory) -> Path:
    rows = channel_cli.ber_per_table([0.0, 10.0, 20.0], list(ch.MODULATIONS), list(ch.FADINGS), mc_symbols=2000, seed=0)
    assert len(rows) == 3 * 4 * 3 and {"ber", "ber_mc", "per_block", "per_block_mc"} <= set(rows[0])
    path = tmp_path_factory.mktemp("results") / "channel_ber_per.csv"
    channel_cli.write_table(rows, path)
    return path


def test_figures_ber_per_from_synthetic_csv(small_table, tmp_path):
    result = run_cli(
        "figures.py", "--only", "ber_per", "--results-dir", str(small_table.parent), "--figures-dir", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ber_per.png").stat().st_size > 10_000


def test_figures_missing_and_malformed_files(tmp_path):
    result = run_cli("figures.py", "--results-dir", str(tmp_path), "--figures-dir", str(tmp_path))
    assert result.returncode != 0
    assert f"missing {tmp_path / 'channel_ber_per.csv'}" in result.stderr
    (tmp_path / "channel_ber_per.csv").write_text("snr_db,ber\n1,0.1\n")
    result = run_cli("figures.py", "--results-dir", str(tmp_path), "--figures-dir", str(tmp_path))
    assert result.returncode != 0
    assert f"malformed {tmp_path / 'channel_ber_per.csv'}: no column(s) modulation" in result.stderr


def test_rayleigh_capacity_at_very_low_snr_is_finite_and_continuous():
    """exp(1/g) overflows below about -28.5 dB: the asymptotic branch must take over seamlessly, and
    agree with the low-SNR limit log2(e) g (capacity ~ g / ln 2 when g -> 0)."""
    edge_db = -10 * math.log10(700.0)
    below, above = (
        ch.spectral_efficiency(edge_db - 1e-9, "rayleigh"),
        ch.spectral_efficiency(edge_db + 1e-9, "rayleigh"),
    )
    assert below == pytest.approx(above, rel=1e-9)
    for snr_db in (-30.0, -60.0, -200.0):
        g = 10 ** (snr_db / 10)
        assert ch.spectral_efficiency(snr_db, "rayleigh") == pytest.approx(g / math.log(2.0), rel=2e-3)


def test_bicm_capacity_against_closed_forms_and_a_monte_carlo():
    # QPSK with Gray labels is two BPSK rails at Es/N0 each: at 0 dB a BPSK rail carries 0.4859 bits
    # (the binary-input AWGN capacity at SNR 1, a textbook value)
    assert ch.bicm_capacity(2, 0.0) == pytest.approx(2 * 0.4859, abs=2e-4)
    # bounded by Shannon and by the bits a symbol has; full at high SNR
    for q in (2, 4, 6):
        for snr in (-5.0, 5.0, 15.0):
            assert ch.bicm_capacity(q, snr) < min(q, math.log2(1 + 10 ** (snr / 10)))
        assert ch.bicm_capacity(q, 45.0) == pytest.approx(q, abs=1e-6)
    # 16QAM at 8 dB by Monte Carlo: I(bit; y) = 1 - E[log2(sum over all points / sum over the sent bit's)]
    rng = np.random.default_rng(0)
    levels = np.array([-3, -1, 1, 3]) / math.sqrt(10)  # unit symbol energy over two rails
    gray = np.array([0, 1, 3, 2])
    sigma = math.sqrt(0.5 / 10**0.8)
    sent = rng.integers(0, 4, 400_000)
    y = levels[sent] + sigma * rng.standard_normal(sent.size)
    like = np.exp(-((y[:, None] - levels[None, :]) ** 2) / (2 * sigma**2))
    info = 0.0
    for bit in (0, 1):
        same = ((gray[None, :] >> bit) & 1) == ((gray[sent][:, None] >> bit) & 1)
        info += 1 - np.mean(np.log2(like.sum(1) / (like * same).sum(1)))
    assert ch.bicm_capacity(4, 8.0) == pytest.approx(2 * info, abs=0.01)
    with pytest.raises(ValueError):
        ch.bicm_capacity(3, 0.0)


def test_the_uncoded_pages_numbers_at_the_defaults_are_the_formulas():
    """docs/uncoded-link.md quotes the defaults' PER at 10 dB (and under Rayleigh) and the prefill's air time."""
    doc = " ".join((REPO / "docs" / "uncoded-link.md").read_text().split())
    cfg = ch.LinkConfig(snr_db=10.0)
    rayleigh = ch.LinkConfig(snr_db=10.0, fading="rayleigh")
    air_ms = 1e3 * ch.tx_latency_s(cfg, 512, 576)
    assert (
        f"At these defaults and 10 dB, PER = {ch.packet_error_rate(cfg):.3f} "
        f"({ch.packet_error_rate(rayleigh):.3f} under Rayleigh) and prefill of 512 SmolLM2 tokens takes "
        f"{air_ms:.0f} ms on air" in doc
    )
