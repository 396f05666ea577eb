"""The protected path (--protect K, beyond the paper): each token's K largest-magnitude elements also
cross a protected path (protect_arq.py's designs). K = 0 is today's link; in the "counted" design protected
elements always arrive, in the others a lost packet (TB) loses its pairs; the rest are impaired exactly as
without protection, with the same draws; the bits and air time are counted."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch

from conftest import run_script
from layersplit import UserError, channel, channel_cli, compute, links, nr, protect_arq, uplink
from layersplit.link import SplitLink

TOKENS, D = 5, 64


def hidden():
    torch.manual_seed(0)
    return torch.randn(1, TOKENS, D) * torch.logspace(-1, 1, D)  # a few large elements per token


def same(a, b) -> bool:
    """Equal element for element, NaN included (bit flips make some)."""
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))


def impairments():
    cfg = channel.LinkConfig(snr_db=8.0, elements_per_packet=8)
    return {
        "dropout": links.direct(0.4),
        "erasure": links.physical(cfg, "erasure"),
        "withheld": links.physical(cfg, "erasure", 0.3),
        "awgn": links.physical(cfg, "awgn"),
        "bitflip": links.physical(channel.LinkConfig(snr_db=3.0), "bitflip"),
    }


@pytest.mark.parametrize("name", list(impairments()))
@pytest.mark.parametrize("k", [1, 4, 16])
def test_protected_elements_arrive_and_the_rest_is_impaired_as_without(name, k, monkeypatch):
    monkeypatch.setattr(protect_arq, "PROTECT_PATH", "counted")  # nothing lost on the protected path
    x, imp = hidden(), impairments()[name]
    plain, _, sent_plain = uplink.impair(x, imp, uplink.generator(7))
    kept, impaired, sent = uplink.impair(x, imp.protecting(k), uplink.generator(7))
    keep = uplink.protected(x, k)
    assert int(keep.sum()) == TOKENS * k
    assert torch.equal(kept[keep], x[keep])  # the protected elements, intact
    assert same(kept[~keep], plain[~keep])  # everything else: the same draws, the same damage
    assert sent == sent_plain and impaired <= x.numel() - TOKENS * k
    smallest_kept = x.abs().masked_fill(~keep, math.inf).amin(-1)
    largest_other = x.abs().masked_fill(keep, 0.0).amax(-1)
    assert bool((smallest_kept >= largest_other).all())  # they are the k largest of each token


def test_impairing_never_changes_the_activation_it_is_given():
    """The fast sweep impairs many variants of one hidden state: bit flips on fp32 (whose wire bytes
    could be a view of it) must not reach the original."""
    for imp in [
        *impairments().values(),
        links.physical(channel.LinkConfig(snr_db=3.0, bits_per_element=32), "bitflip"),
    ]:
        x = hidden()
        before = x.clone()
        uplink.impair(x, imp.protecting(2), uplink.generator(1))
        assert torch.equal(x, before), imp.mode


def test_protect_zero_is_todays_link_and_everything_lost_keeps_only_the_protected():
    x = hidden()
    for imp in impairments().values():
        a = uplink.impair(x, imp, uplink.generator(3))
        b = uplink.impair(x, imp.protecting(0), uplink.generator(3))
        assert same(a[0], b[0]) and a[1:] == b[1:]
    received, impaired, _ = uplink.impair(x, links.direct(1.0).protecting(4), uplink.generator(0))
    assert torch.equal(received, torch.where(uplink.protected(x, 4), x, torch.zeros_like(x)))
    assert impaired == x.numel() - TOKENS * 4
    with pytest.raises(UserError, match="only 64 elements"):
        uplink.impair(x, links.direct(0.1).protecting(65), uplink.generator(0))


def test_protected_bits_and_air_time_hand_worked(monkeypatch):
    monkeypatch.setattr(protect_arq, "PROTECT_PATH", "counted")
    # d = 576: a 10-bit index + a 16-bit value per pair; 3 tokens x 4 pairs = 312 bits: one packet of 64 x 16
    # payload bits + 32 header bits = 1056 bits. AWGN QPSK at Es/N0 = 15 (linear): Eb/N0 = 7.5,
    # BER = Q(sqrt(15)) = erfc(sqrt(7.5)) / 2, PER = 1 - (1 - BER)^1056, sent 1 / (1 - PER) times on average;
    # rate 20 MHz x log2(16) = 80 Mbit/s.
    cfg = channel.LinkConfig(snr_db=10 * math.log10(15), fading="awgn")
    assert channel.protected_payload_bits(3, 4, 576, 16) == 312
    ber = 0.5 * math.erfc(math.sqrt(7.5))
    per = 1 - (1 - ber) ** 1056
    assert channel.packet_error_rate(cfg) == pytest.approx(per, rel=1e-9)
    assert channel.protected_air_bits(cfg, 3, 4, 576) == pytest.approx(1056 / (1 - per), rel=1e-9)
    assert channel.protected_tx_s(cfg, 3, 4, 576) == pytest.approx(1056 / (1 - per) / 80e6, rel=1e-9)
    assert channel.protected_air_bits(cfg, 3, 0, 576) == 0.0
    dims = compute.SMOLLM2_135M
    with_k = compute.latency_breakdown(cfg, dims, 4, 3, protect=4)
    without = compute.latency_breakdown(cfg, dims, 4, 3)
    assert with_k["tx_s"] - without["tx_s"] == pytest.approx(1056 / (1 - per) / 80e6, rel=1e-9)
    assert with_k["ue_compute_s"] == without["ue_compute_s"]


def test_the_protect_table_counts_whole_packets_hand_worked(monkeypatch):
    monkeypatch.setattr(protect_arq, "PROTECT_PATH", "counted")
    # SmolLM2, 512 tokens, K = 4: 512 x 4 x (10 + 16) = 53,248 bits in ceil(53,248 / 1,024) = 52 packets of
    # 1,056 bits, each sent 1 / (1 - PER) times; the ordinary path: 512 x 576 / 64 = 4,608 packets of 1,056 bits
    link = channel.LinkConfig(snr_db=20.0, fading="awgn")
    rows = compute.protect_table([20.0], {"smollm2-135m": compute.SMOLLM2_135M}, (0, 4), 512, link)
    prefill = [r for r in rows if r["phase"] == "prefill"]
    per = channel.packet_error_rate(link)
    assert [r["protect"] for r in prefill] == [0, 4] and prefill[0]["protected_air_bits"] == 0.0
    row = prefill[1]
    assert row["pair_bits"] == 26 and row["protected_payload_bits"] == 53_248
    assert row["protected_air_bits"] == pytest.approx(52 * 1056 / (1 - per), rel=1e-12)
    assert row["ordinary_air_bits"] == 4_608 * 1056
    assert row["extra_time_share"] == pytest.approx(52 / (1 - per) / 4_608, rel=1e-12)
    decode = [r for r in rows if r["phase"] == "decode" and r["protect"] == 4][0]
    assert decode["protected_payload_bits"] == 104 and decode["protected_air_bits"] == pytest.approx(1056 / (1 - per))


@pytest.mark.parametrize("path", list(protect_arq.PROTECT_PATHS))
def test_the_split_hook_counts_the_protected_bits(tiny_llama, path, monkeypatch):
    monkeypatch.setattr(protect_arq, "PROTECT_PATH", path)
    cfg = channel.LinkConfig(snr_db=10.0, elements_per_packet=16)
    ids = torch.arange(3, 9)[None]
    counts = {}
    for k in (0, 4):
        link = SplitLink(tiny_llama, split=1, seed=0)
        link.set_channel(cfg, "erasure")
        link.set_protect(k)
        with torch.no_grad():
            tiny_llama(input_ids=ids)
        counts[k] = link.transfers[-1]
        link.detach()
    cost = protect_arq.protected_path(cfg, 6, 4, 64, path)
    assert counts[4].bits == pytest.approx(counts[0].bits + cost.air_bits)
    assert counts[4].delay_s == pytest.approx(counts[0].delay_s + cost.air_s)
    assert counts[4].impaired < counts[0].impaired


def test_add_noise_protect_on_the_cli(tiny_model_dir, sample_txt):
    base = [
        "add_noise.py",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(sample_txt),
        "--split",
        "1",
        "--max-tokens",
        "200",
        "--context-length",
        "64",
        "--stride",
        "64",
        "--snr-db",
        "5",
        "--no-progress",
    ]
    reports = {}
    for k in ("0", "8"):
        done = run_script(*base, "--protect", k, "--json")
        assert done.returncode == 0, done.stderr[-1500:]
        reports[k] = json.loads(done.stdout)
    assert reports["8"]["protect"] == 8 and reports["8"]["link_bits"] > reports["0"]["link_bits"]
    assert reports["8"]["elements_impaired_fraction"] < reports["0"]["elements_impaired_fraction"]
    assert reports["8"]["tx_latency_prefill_s"] > reports["0"]["tx_latency_prefill_s"]
    for path in ("arq", "counted"):  # at 5 dB (PER 0.98) ARQ in a block fade loses most protected packets
        done = run_script(*base, "--protect", "8", "--protect-path", path, "--json")
        assert done.returncode == 0, done.stderr[-1500:]
        reports[path] = json.loads(done.stdout)
    assert reports["8"]["elements_impaired_fraction"] == reports["counted"]["elements_impaired_fraction"]
    assert reports["arq"]["elements_impaired_fraction"] > reports["8"]["elements_impaired_fraction"]
    assert len({reports[k]["tx_latency_prefill_s"] for k in ("8", "arq", "counted")}) == 3
    done = run_script(*base, "--protect", "8")
    assert "8 elements per token protected" in done.stdout
    refused = run_script("add_noise.py", "--sweep", "--protect", "4", "--model", str(tiny_model_dir))
    assert refused.returncode == 2 and "--sweep takes its K from --protects" in refused.stderr


def test_the_sweep_crosses_every_condition_with_k(tiny_model_dir, sample_txt, tmp_path):
    """--protects: K = 0 rows are those of a sweep without it, and the fast path equals the naive one."""
    import csv

    base = [
        "add_noise.py",
        "--sweep",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(sample_txt),
        "--max-tokens",
        "200",
        "--context-length",
        "64",
        "--splits",
        "0,2",
        "--draws",
        "2",
        "--dropouts",
        "0.3",
        "--snrs",
        "8",
        "--no-progress",
    ]
    runs = {"plain": [], "fast": ["--protects", "4,16"], "naive": ["--protects", "4,16", "--naive"]}
    rows = {}
    for name, extra in runs.items():
        done = run_script(*base, *extra, "--output", str(tmp_path / f"{name}.csv"))
        assert done.returncode == 0, done.stderr[-1500:]
        with (tmp_path / f"{name}.csv").open(newline="") as f:
            rows[name] = list(csv.DictReader(f))
    assert {r["protect"] for r in rows["fast"]} == {"0", "4", "16"} and {r["protect"] for r in rows["plain"]} == {"0"}
    assert [r for r in rows["fast"] if r["protect"] == "0"] == rows["plain"]
    assert len(rows["fast"]) == len(rows["naive"])
    for a, b in zip(rows["fast"], rows["naive"]):
        assert (a["split"], a["link"], a["protect"], a["draw"]) == (b["split"], b["link"], b["protect"], b["draw"])
        assert float(a["nll"]) == pytest.approx(float(b["nll"]), rel=1e-4)
    by = {(r["split"], r["link"], r["protect"], r["draw"]): float(r["nll"]) for r in rows["fast"]}
    # protection changes what the edge gets (whether it helps is the real model's question, not the tiny one's)
    assert all(by[(s, "dropout", "16", d)] != by[(s, "dropout", "0", d)] for s in ("0", "2") for d in ("0", "1"))


def test_the_protect_table_command(tmp_path):
    from conftest import run_script

    done = run_script("-m", "layersplit.channel", "--protect-table", str(tmp_path / "cost.csv"))
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "cost.csv").read_text().splitlines()
    # models x phases x SNRs x K
    expected = 2 * 2 * len(channel_cli.PROTECT_TABLE_SNR_DB) * len(channel_cli.PROTECT_TABLE_KS)
    assert len(lines) == 1 + expected and "extra_time_share" in lines[0]


@dataclass(frozen=True)
class FixedLossLink(links.ErasureLink):
    """The erasure link with a protected path whose packets carry `unit_bits` and are lost with `unit_loss`."""

    unit_bits: int = 44
    unit_loss: float = 0.0

    def protected_cost(self, tokens, protect, hidden_size):
        return protect_arq.PathCost(0.0, 0.0, self.unit_bits, self.unit_loss, self.unit_loss)


def test_a_lost_protected_packet_loses_the_pairs_it_carries_hand_worked():
    """d = 64, 16-bit values: 22 bits a pair. Packets of 44 bits hold pairs 0-1, 2-3, ...; packets of 33 bits:
    pair 0 in packet 0, pair 1 in packets 0 and 1, pair 2 in packet 1 and 2 (bits 44-65), pair 3 in packet 2."""
    x = hidden()
    keep = uplink.protected(x, 4)
    gen = uplink.generator(11)
    for unit_bits in (44, 33):
        link = FixedLossLink(channel.LinkConfig(snr_db=8.0), unit_bits=unit_bits, unit_loss=0.3)
        lost_units = uplink.uniform(math.ceil(TOKENS * 4 * 22 / unit_bits), uplink.side_stream(gen)) < 0.3
        expected = []
        for pair in range(TOKENS * 4):
            first, last = pair * 22 // unit_bits, (pair * 22 + 21) // unit_bits
            expected.append(bool(lost_units[first] or lost_units[last]))
        assert 0 < sum(expected) < TOKENS * 4
        arrived = uplink.protected_arrived(keep, link, 4, gen)
        lost_pairs = (keep & ~arrived).flatten()[keep.flatten()]  # in packing order: token-major, by index
        assert lost_pairs.tolist() == expected
    everything = FixedLossLink(channel.LinkConfig(snr_db=8.0), unit_loss=1.0)
    assert not uplink.protected_arrived(keep, everything, 4, gen).any()
    assert torch.equal(uplink.protected_arrived(keep, FixedLossLink(channel.LinkConfig(snr_db=8.0)), 4, gen), keep)


def test_lost_protected_pairs_take_what_the_ordinary_path_delivered_and_draw_nothing_from_it():
    """A protected path that loses every packet gives the unprotected result, and the transfer's stream ends
    where it ends without protection: the next transfer's losses do not depend on K."""
    x = hidden()
    cfg = channel.LinkConfig(snr_db=8.0, elements_per_packet=8)
    plain_gen, lossy_gen = uplink.generator(5), uplink.generator(5)
    plain = uplink.impair(x, links.impairment(links.ErasureLink(cfg)), plain_gen)
    lossy = links.impairment(FixedLossLink(cfg, unit_loss=1.0)).protecting(4)
    assert same(uplink.impair(x, lossy, lossy_gen)[0], plain[0])
    assert torch.equal(plain_gen.get_state(), lossy_gen.get_state())
    half = FixedLossLink(cfg, unit_loss=0.5)
    received, impaired, _ = uplink.impair(x, links.impairment(half).protecting(4), uplink.generator(5))
    keep = uplink.protected(x, 4)
    arrived = uplink.protected_arrived(keep, half, 4, plain_gen)  # plain_gen: where the ordinary draws end
    assert 0 < int((keep & ~arrived).sum()) < TOKENS * 4
    assert torch.equal(received, torch.where(arrived, x, plain[0])) and impaired == int((received != x).sum())


def test_the_default_coded_path_loses_its_residual():
    """The default design (coded: NR at the reliable MCS) loses TBs with the operating point's residual."""
    cfg = channel.LinkConfig(snr_db=10.0)
    cost = protect_arq.protected_path(cfg, 512, 16, 576)
    point = nr.operating_point(10.0, rule="reliable", frame_name="FDD")
    assert protect_arq.PROTECT_PATH == "coded" and cost.unit_loss == point.residual > 0
    assert cost.unit_bits == point.tb_size
    assert cost.unit_loss_bound == nr.residual_bound(nr.load_table()[point.mcs], 10.0) > cost.unit_loss
    assert links.ErasureLink(cfg).protected_cost(512, 16, 576) == cost
