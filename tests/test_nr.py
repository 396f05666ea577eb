"""The 5G NR coded link (--link nr, layersplit/nr.py): TB sizes against TS 38.214 worked by hand, the
MCS choice, the HARQ arithmetic, the table lookup, a seconds-long Sionna Monte Carlo, and the link in
the impairment engine, the latency model, the sweep, add_noise.py and serve.py."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from conftest import run_script
from layersplit import (
    UserError,
    channel,
    claims_radio,
    compute,
    links,
    nr,
    nr_frame,
    nr_sim,
    schema,
    sweep,
    sweep_store,
    uplink,
)
from layersplit.grid import Condition


# ---- TB sizes: TS 38.214 5.1.3.2 worked by hand -------------------------------------------------
# PUSCH on 14 symbols with two DMRS symbols of type 1 (12 REs per PRB each): N'_RE = 12 x 14 - 24 = 144.
# MCS 3 (Qm 2, R 251/1024), 51 PRBs: N_info = 7344 x 0.2451 x 2 = 3600.3 <= 3824, n = max(3, 11 - 6) = 5,
#   N'_info = 32 floor(3600.3 / 32) = 3584, the smallest Table 5.1.3.2-1 entry >= 3584 is 3624.
# MCS 5 (Qm 2, R 379/1024): N_info = 5436.3 > 3824, n = floor(log2(5412.3)) - 5 = 7,
#   N'_info = 128 round(42.28) = 5376 <= 8424 with R > 1/4: TBS = 8 ceil(5400 / 8) - 24 = 5376.
# MCS 15 (Qm 4, R 616/1024): N_info = 17671.5, n = 9, N'_info = 512 round(34.47) = 17408 > 8424:
#   C = ceil(17432 / 8424) = 3, TBS = 24 ceil(17432 / 24) - 24 = 17424.
# MCS 28 (Qm 6, R 948/1024): N_info = 40793.6, n = 10, N'_info = 1024 round(39.81) = 40960:
#   C = ceil(40984 / 8424) = 5, TBS = 40 ceil(40984 / 40) - 24 = 40976.
# MCS 3 on 1 PRB: N_info = 70.6, n = 3, N'_info = 8 floor(8.82) = 64: the table entry 64.
WORKED = [
    (2, 251 / 1024, 51, 3624, 1),
    (2, 379 / 1024, 51, 5376, 1),
    (4, 616 / 1024, 51, 17424, 3),
    (6, 948 / 1024, 51, 40976, 5),
    (2, 251 / 1024, 1, 64, 1),
]


@pytest.mark.parametrize("qm,rate,prbs,tbs,cbs", WORKED)
def test_tb_sizes_are_the_worked_cases_of_ts_38_214(qm, rate, prbs, tbs, cbs):
    assert nr.tb_size(qm, rate, prbs, 14, 24) == (tbs, cbs)


def test_the_simulated_pusch_carries_the_worked_tb_sizes():
    for mcs, tbs in ((3, 3624), (5, 5376), (15, 17424), (28, 40976)):
        assert int(nr_sim._pusch_config(mcs).tb_size) == tbs


def test_the_simulated_pusch_spans_the_grids_ofdm_symbols(monkeypatch):
    """nr.OFDM_SYMBOLS is what the simulated slot carries: 12 symbols of MCS 3 are TS 38.214's 2,976 bits."""
    monkeypatch.setattr(nr_sim, "OFDM_SYMBOLS", 12)
    cfg = nr_sim._pusch_config(3)
    assert cfg.symbol_allocation == [0, 12] and int(cfg.tb_size) == nr.tb_size(2, 251 / 1024, 51, 12, 24)[0] == 2976


# ---- the table, the MCS choice, HARQ ------------------------------------------------------------
def write_table(path, curves: dict[int, tuple[int, list[tuple[float, float]]]], channel="tdl", receiver="ls"):
    """A BLER table in write_table's format: {mcs: (tb_size, [(snr, bler[, upper end of its interval])])},
    100 slots a point."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=nr.TABLE_COLUMNS)
        w.writeheader()
        for mcs, (tbs, points) in curves.items():
            for snr, bler, *high in points:
                w.writerow(
                    {
                        "mcs": mcs,
                        "modulation_order": 2,
                        "code_rate": 0.5,
                        "tb_size": tbs,
                        "num_cb": 1,
                        "snr_db": snr,
                        "slots": 100,
                        "errors": round(100 * bler),
                        "bler": bler,
                        "bler_low": 0,
                        "bler_high": high[0] if high else 1,
                        "channel": channel,
                        "tdl_profile": "C",
                        "delay_spread_s": 1e-7,
                        "ue_speed_mps": 0.83,
                        "receiver": receiver,
                        "num_prbs": 51,
                        "subcarrier_spacing_khz": 30,
                        "seed": 0,
                    }
                )
    return str(path)


@pytest.fixture
def table(tmp_path):
    return write_table(
        tmp_path / "bler.csv",
        {
            3: (1000, [(-4.0, 1.0), (0.0, 0.5), (4.0, 0.05), (8.0, 0.0)]),
            9: (3000, [(0.0, 1.0), (4.0, 0.8), (8.0, 0.2), (12.0, 0.01), (16.0, 0.0)]),
        },
    )


def test_the_lookup_is_log_linear_between_points_and_keeps_the_tail_slope(table):
    low = nr.load_table(table)[3]
    assert low(0.0) == 0.5 and low(-10.0) == 1.0
    assert low(2.0) == pytest.approx(math.sqrt(0.5 * 0.05))  # the geometric mean halfway
    # past the last lost TB (4 dB) the line through (0, 0.5) and (4, 0.05) goes on: a decade per 4 dB
    assert low(8.0) == pytest.approx(0.005) and low(12.0) == pytest.approx(0.0005)


def test_a_steep_waterfall_passes_under_the_interval_of_its_loss_free_point(tmp_path):
    """Past its last lost TB a curve falls at least as fast as it must to pass under the upper end of the
    interval of the point with none lost (AWGN: all lost at -3 dB, none of 100 at -2 dB)."""
    curve = nr.load_table(
        write_table(tmp_path / "steep.csv", {3: (1000, [(-4.0, 1.0), (-3.0, 0.9), (-2.0, 0.0, 0.03)])})
    )[3]
    assert curve(-3.0) == pytest.approx(0.9)
    assert curve(-2.0) == pytest.approx(0.03)  # not the 0.81 the last two lossy points' shallow line gives
    assert curve(-2.5) == pytest.approx(math.sqrt(0.9 * 0.03))


def test_link_adaptation_picks_the_highest_mcs_within_the_target_or_the_best_goodput(table):
    curves = nr.load_table(table)
    assert nr.choose_mcs(curves, 12.0).mcs == 9  # BLER 0.01 <= 0.1 with the larger TB
    assert nr.choose_mcs(curves, 8.0).mcs == 3  # MCS 9 loses 20% there
    assert nr.choose_mcs(curves, -4.0).mcs == 3  # outage: the most robust MCS
    # goodput at 8 dB: 3000 x (1 - 0.2) = 2400 bits a slot against 1000 x (1 - 0.005) = 995
    assert nr.choose_mcs(curves, 8.0, rule="goodput").mcs == 9
    with pytest.raises(UserError):
        nr.choose_mcs(curves, 8.0, target_bler=1.5)


def test_the_reliable_rule_also_bounds_the_residual_loss(table, monkeypatch):
    curves = nr.load_table(table)
    # the default reads the bound, which this table's points (upper ends of 1) never certify: MCS 3 at any target
    monkeypatch.setattr(nr, "RESIDUAL_TARGET", 1e-3)
    assert nr.RESIDUAL_READ == "bound" and nr.choose_mcs(curves, 12.0, rule="reliable").mcs == 3
    monkeypatch.setattr(nr, "RESIDUAL_TARGET", 1e-4)
    monkeypatch.setattr(nr, "RESIDUAL_READ", "extrapolated")  # the extrapolation's arithmetic, below
    # at 12 dB MCS 9 meets the 10% target (0.01), but after 4 transmissions (+6 dB) it still loses
    # 0.01 x (0.01 / 0.2)^(1.5) = 1.1e-4 > 1e-4 of its TBs: reliable keeps MCS 3
    residual = nr.failed_all(curves[9], 12.0, nr.HARQ_MAX_RETX + 1)
    assert residual > nr.RESIDUAL_TARGET
    assert nr.choose_mcs(curves, 12.0, rule="target").mcs == 9
    assert nr.choose_mcs(curves, 12.0, rule="reliable").mcs == 3
    monkeypatch.setattr(nr, "RESIDUAL_TARGET", 1e-3)
    assert nr.choose_mcs(curves, 12.0, rule="reliable").mcs == 9
    # a script's --mcs-rule sets the constant that operating_point reads at each call
    monkeypatch.setattr(nr, "MCS_RULE", "reliable")
    monkeypatch.setattr(nr, "RESIDUAL_TARGET", 1e-4)
    assert nr.operating_point(12.0, table=table).mcs == 3


def test_harq_arithmetic_on_fdd(table):
    point = nr.operating_point(4.0, max_retx=2, table=table, frame_name="FDD")
    curve = nr.load_table(table)[3]
    q1, q2, q3 = curve(4.0), curve(4.0 + 10 * math.log10(2)), curve(4.0 + 10 * math.log10(3))
    assert point.mcs == 3 and point.bler == q1 == pytest.approx(0.05)
    assert point.retx_needed == (q1, q2)
    assert point.residual == q3  # all three transmissions fail: one at 3x the SNR in the same fade
    assert point.transmissions == pytest.approx(1 + q1 + q2)
    # the goodput the air time implies: delivered bits per transmission, every slot uplink
    assert point.goodput_bps == pytest.approx(1000 * (1 - q3) / ((1 + q1 + q2) * nr.SLOT_S))
    # one TB: its slot, then a round trip per retransmission it needs
    assert point.air_s(1) == pytest.approx(nr.SLOT_S * (1 + nr_frame.HARQ_RTT_SLOTS * (q1 + q2)))
    # many TBs: a slot per transmission, plus the round trips of the last ones
    n = 50
    tail = (1 - (1 - q1) ** n) + (1 - (1 - q2) ** n)
    assert point.air_s(n) == pytest.approx(nr.SLOT_S * (n * (1 + q1 + q2) + (nr_frame.HARQ_RTT_SLOTS - 1) * tail))
    assert nr.operating_point(4.0, max_retx=0, table=table).residual == q1


def test_an_interrupted_table_is_refused(tmp_path):
    path = write_table(
        tmp_path / "cut.csv", {3: (1000, [(-4.0, 1.0), (0.0, 0.5), (4.0, 0.05), (8.0, 0.0)]), 9: (3000, [(0.0, 1.0)])}
    )
    with pytest.raises(UserError, match="MCS 9 stops at"):
        nr.load_table(path)


def test_the_committed_table_is_complete_and_its_tails_stay_within_the_measured_intervals():
    curves = nr.load_table()
    assert set(curves) == set(nr.MCS_INDICES)
    sizes = [curves[m].tb_size for m in nr.MCS_INDICES]
    assert sizes == sorted(sizes)
    with open(nr.BLER_TABLE) as f:
        for row in csv.DictReader(f):
            curve, snr = curves[int(row["mcs"])], float(row["snr_db"])
            assert float(row["bler_low"]) - 1e-9 <= curve(snr) <= float(row["bler_high"]) + 1e-9
    # with one modulation, a higher code rate needs more SNR for the 10% target (across modulations not
    # always: in fading 16QAM at rate 0.37, MCS 11, reaches it before QPSK at rate 0.66, MCS 9)
    for order in {c.modulation_order for c in curves.values()}:
        at_target = [
            min((s for s in range(-10, 60) if curves[m](s) <= 0.1), default=99)
            for m in nr.MCS_INDICES
            if curves[m].modulation_order == order
        ]
        assert at_target == sorted(at_target), order


# ---- a seconds-long Sionna Monte Carlo -----------------------------------------------------------
def test_sionna_monte_carlo_is_seeded_and_follows_the_snr():
    sim = nr_sim.Simulator(3, channel="awgn", receiver="perfect")
    assert sim.tb_size == 3624
    assert sim.errors(-8.0, 4, seed=1) == 4  # far below the code's threshold: every TB lost
    assert sim.errors(6.0, 4, seed=1) == 0  # far above it (rate 0.24 QPSK needs about -3 dB on AWGN)
    tdl = nr_sim.Simulator(3)
    assert tdl.errors(0.0, 8, seed=5) == tdl.errors(0.0, 8, seed=5)  # the same seed, the same losses
    # --device: every block of the link on the device asked for (the CPU's here; a GPU's where one is)
    on = nr_sim.Simulator(3, device="cpu")
    assert on.device == "cpu" and on.errors(0.0, 8, seed=5) == tdl.errors(0.0, 8, seed=5)


def test_early_stopping_loses_the_same_tbs_slot_by_slot_in_fewer_iterations():
    """nr_sim.EARLY_STOP against Sionna's decoder run to its 20 iterations: the same seeds lose the same TBs on
    the waterfall (some lost, some not), and where none is lost each code block stops early."""
    assert nr_sim.EARLY_STOP
    full, early = nr_sim.Simulator(3, early_stop=False), nr_sim.Simulator(3, early_stop=True)
    mixed = 0
    for snr in (-2.0, 0.0):
        lost_full, lost_early = full.lost(snr, 16, seed=7), early.lost(snr, 16, seed=7)
        assert torch.equal(lost_full, lost_early), snr
        mixed += 0 < int(lost_full.sum()) < 16
    assert mixed == 2  # the comparison covers slots decoded and slots lost at the same SNR
    assert full.iterations == 2 * 16 * 20  # 2 SNRs' 16 slots of one code block, 20 iterations each
    before = early.iterations
    assert early.lost(11.0, 16, seed=7).sum() == 0 and early.iterations - before < 16 * 20 / 4


@pytest.mark.slow
@pytest.mark.parametrize("mcs, snr", [(3, 2.0), (14, 14.0)])
def test_early_stopping_measures_the_committed_tables_points_again(mcs, snr):
    """The committed BLER table was measured with Sionna's decoder run to all 20 iterations; its waterfall points
    measured again from the same seeds with early stopping lose the same number of TBs in the same slots."""
    (row,) = [r for r in csv.DictReader(open(nr.BLER_TABLE)) if int(r["mcs"]) == mcs and float(r["snr_db"]) == snr]
    sim = nr_sim.Simulator(mcs, early_stop=True)
    assert 0 < int(row["errors"]) < int(row["slots"])
    assert nr_sim.simulate_point(sim, snr, nr_sim.TABLE_SEED) == (int(row["slots"]), int(row["errors"]))


def test_the_table_writer_resumes_and_stops_a_curve_at_its_first_loss_free_point(tmp_path):
    path = tmp_path / "t.csv"
    n = nr_sim.measure_table(
        path, [3], [-8.0, 6.0, 8.0], channel="awgn", receiver="perfect", max_slots=4, batch=4, progress=False
    )
    rows = list(csv.DictReader(open(path)))
    assert n == 2 and [r["snr_db"] for r in rows] == ["-8", "6"]  # 6 dB lost none: 8 dB is not simulated
    assert rows[0]["bler"] == "1" and float(rows[0]["bler_low"]) > 0.3
    assert (
        nr_sim.measure_table(
            path, [3], [-8.0, 6.0, 8.0], channel="awgn", receiver="perfect", max_slots=4, batch=4, progress=False
        )
        == 0
    )  # complete: nothing redone
    with pytest.raises(UserError, match="another set-up"):
        nr_sim.measure_table(path, [3], [0.0], channel="tdl", max_slots=4, batch=4, progress=False)


def test_the_tails_measure_each_point_once_from_their_own_seeds_and_resume(tmp_path):
    path = tmp_path / "tails.csv"
    kw = dict(channel="awgn", receiver="perfect", max_slots=8, batch=4, progress=False)
    assert nr_sim.measure_points(path, [(3, -8.0), (3, 6.0)], **kw) == 2
    rows = nr.read_table(path)  # the table's format: its reader takes it
    assert [(r["snr_db"], r["slots"], r["errors"]) for r in rows] == [("-8", "4", "4"), ("6", "8", "0")]
    assert {r["seed"] for r in rows} == {str(nr_sim.TABLE_SEED + nr_sim.TAIL_SEED_OFFSET)}  # not the table's seed
    assert nr_sim.measure_points(path, [(3, 6.0), (3, -6.0)], **kw) == 1  # only the new point
    assert len(nr.read_table(path)) == 3
    with pytest.raises(UserError, match="another set-up"):
        nr_sim.measure_points(path, [(3, 0.0)], seed=9, **kw)


def test_a_deep_point_is_written_in_chunks_and_resumes_to_the_counts_of_a_straight_run(tmp_path):
    """MCS 3 on AWGN at -2.8 dB loses 2, 2, 1, 0 of its first four batches of 4 (seed 2): a chunked run, a run
    cut at 8 slots and resumed, and a straight one draw the same seeds and pool to the same 5 of 16."""
    kw = dict(channel="awgn", receiver="perfect", batch=4, progress=False)
    point = [(3, -2.8)]

    def counts(path):
        return [(int(r["slots"]), int(r["errors"])) for r in nr.read_table(path, repeats=True)]

    assert nr_sim.measure_points(tmp_path / "straight.csv", point, max_slots=16, chunk=16, **kw) == 1
    assert nr_sim.measure_points(tmp_path / "chunked.csv", point, max_slots=16, chunk=6, **kw) == 1  # 6: 2 batches
    assert nr_sim.measure_points(tmp_path / "resumed.csv", point, max_slots=8, chunk=16, **kw) == 1
    assert nr_sim.measure_points(tmp_path / "resumed.csv", point, max_slots=16, chunk=16, **kw) == 1  # 8 more
    assert counts(tmp_path / "straight.csv") == [(16, 5)]
    assert counts(tmp_path / "chunked.csv") == counts(tmp_path / "resumed.csv") == [(8, 4), (8, 1)]
    assert nr_sim.measure_points(tmp_path / "resumed.csv", point, max_slots=16, **kw) == 0  # done: nothing redone
    # the link reads the chunks as one point: 5 of 16
    tbs = int(nr.read_table(tmp_path / "straight.csv")[0]["tb_size"])
    table = write_table(tmp_path / "t.csv", {3: (tbs, [(-4.0, 1.0), (-2.0, 0.0, 0.036)])}, "awgn", "perfect")
    (tmp_path / "t_tails.csv").write_bytes((tmp_path / "chunked.csv").read_bytes())
    curve = nr.load_table(table)[3]
    assert dict(zip(curve.snr_db, curve.bler))[-2.8] == 5 / 16
    assert nr_sim.point_done(8, 3, 16, 3) and nr_sim.point_done(4, 4, 16, 50) and not nr_sim.point_done(8, 4, 16, 50)


def test_the_tails_cli_measures_the_points_it_is_given(tmp_path, capsys):
    """`python -m layersplit.nr --tails F --points 3:-2.8`: the counts of measure_points at the tails' seed."""
    from layersplit import nr_cli

    common = ["--channel", "awgn", "--receiver", "perfect", "--max-slots", "16", "--batch", "4"]
    assert nr_cli.main(["--tails", str(tmp_path / "cli.csv"), "--points", "3:-2.8", *common]) == 0
    assert "simulated 1 points" in capsys.readouterr().out
    rows = nr.read_table(tmp_path / "cli.csv", repeats=True)
    assert [(int(r["slots"]), int(r["errors"])) for r in rows] == [(16, 5)]  # the chunked test's straight run
    assert {r["seed"] for r in rows} == {str(nr_sim.TABLE_SEED + nr_sim.TAIL_SEED_OFFSET)}


def test_the_slots_that_certify_a_residual_and_the_reliable_rules_points():
    n = nr.slots_to_certify(1e-4)
    assert n == 36887 and nr.clopper_pearson(0, n)[1] <= 1e-4 < nr.clopper_pearson(0, n - 1)[1]
    assert nr.slots_to_certify(0.019) == 193  # the table's 192-slot points stop just short of 0.019
    with pytest.raises(UserError, match="outside"):
        nr.slots_to_certify(0.0)
    # each point is the rule's MCS at an SNR of RELIABLE_SNR_DB, at or below where its bound is read, the
    # lowest per MCS; a loss-free point there with that many slots lets the bound pick what the curve picks
    curves = nr.load_table()
    points = nr_sim.reliable_points(curves)
    assert len({m for m, _ in points}) == len(points)
    for snr in nr_sim.RELIABLE_SNR_DB:
        mcs = nr.choose_mcs(curves, snr, "reliable", residual_read="extrapolated").mcs
        read = snr + 10 * math.log10(nr.HARQ_MAX_RETX + 1)
        assert any(m == mcs and s <= read for m, s in points)
    assert points == [(3, 11.0), (5, 16.0), (11, 21.0), (14, 26.0), (17, 31.0), (24, 36.0)]  # the committed table
    # the committed tails certify every point (none lost in 36,887), so there the default (bound) picks what the
    # curve picks
    counts = nr.point_counts(nr.read_table(nr.tails_of(nr.BLER_TABLE), repeats=True))
    assert all(counts[point] == (0, n) for point in points)
    assert nr.RESIDUAL_READ == "bound"
    for snr in nr_sim.RELIABLE_SNR_DB:
        picks = {read: nr.choose_mcs(curves, snr, "reliable", residual_read=read).mcs for read in nr.RESIDUAL_READS}
        assert picks["bound"] == picks["extrapolated"], (snr, picks)


# ---- the link in the engine and the latency model -----------------------------------------------
def test_the_nr_link_loses_whole_tbs_with_the_residual_bler():
    cfg = channel.LinkConfig(snr_db=-2.0)
    imp = links.physical(cfg, "nr")
    point = nr.operating_point(-2.0)
    assert imp.loss == point.residual > 0
    k = imp.elements_per_packet
    assert k == point.tb_size // 16
    x = torch.randn(1, 40, 576)
    received, impaired, sent = uplink.impair(x, imp, uplink.generator(3))
    lost = (received == 0).flatten()
    per_tb = lost[: (lost.numel() // k) * k].view(-1, k)
    assert bool((per_tb.all(1) | ~per_tb.any(1)).all())  # every TB arrives whole or not at all
    assert impaired == int(lost.sum()) and sent == x.numel()
    # the same elements as erasure with TB-sized packets at that loss
    same = uplink.impair(
        x,
        uplink.Impairment(links.ErasureLink(channel.LinkConfig(snr_db=-2.0, elements_per_packet=k)), loss=imp.loss),
        uplink.generator(3),
    )[0]
    assert torch.equal(received, same)
    with pytest.raises(UserError, match="not modelled on the NR link"):
        imp.protecting(4)


def test_nr_air_time_counts_every_tb_and_transmission():
    dims = compute.SMOLLM2_135M
    cfg = channel.LinkConfig(snr_db=5.0)
    point = nr.operating_point(5.0)
    n_tb = math.ceil(512 * dims.hidden_size / (point.tb_size // 16))
    times = compute.latency_breakdown(links.NrLink(cfg), dims, 4, 512)
    assert times["tx_s"] == pytest.approx(point.air_s(n_tb))
    assert times["total_s"] == pytest.approx(times["ue_compute_s"] + times["tx_s"] + times["edge_compute_s"])
    # a better channel: a higher MCS, fewer TBs, less air time
    assert (
        compute.latency_breakdown(links.NrLink(channel.LinkConfig(snr_db=25.0)), dims, 4, 512)["tx_s"] < times["tx_s"]
    )


def test_a_sweep_over_the_nr_link(tiny_llama, tmp_path):
    ids = torch.randint(0, 300, (96,))
    conds = [Condition("nr", snr_db=s) for s in (-4.0, 20.0)]
    cfg = sweep.SweepConfig([1, 2], conds, 2, 0, 48, 48, channel.LinkConfig(snr_db=0.0), 4)
    store = sweep_store.ResultsStore(
        tmp_path / "s.csv",
        {
            "model": "tiny",
            "dataset": "x",
            "tokens": 96,
            "context_length": 48,
            "stride": 48,
            "dtype": "float32",
            "seed": 0,
        },
        sweep_store.link_columns(cfg.link_template, "nr"),
    )
    sweep.run_fast(tiny_llama, ids, cfg, store, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert len(rows) == 2 * 2 * 2 and {r["link"] for r in rows} == {"nr"}
    assert {r["modulation"] for r in rows} == {""} and {r["bits_per_element"] for r in rows} == {"16"}
    low = [r for r in rows if float(r["snr_db"]) == -4.0]
    assert all(float(r["dropout"]) == pytest.approx(nr.operating_point(-4.0).residual) for r in low)
    assert all(float(r["tx_s"]) > 0 for r in rows)
    # the naive path (the split hook) gives the same numbers
    store2 = sweep_store.ResultsStore(
        tmp_path / "n.csv", store.run_config, sweep_store.link_columns(cfg.link_template, "nr")
    )
    sweep.run_naive(tiny_llama, ids, cfg, store2, progress=False)
    naive = {schema.row_key(r): r for r in csv.DictReader(open(tmp_path / "n.csv"))}
    for r in rows:
        assert float(naive[schema.row_key(r)]["nll"]) == pytest.approx(float(r["nll"]), rel=1e-4)


def test_add_noise_and_the_nr_cli(tiny_model_dir, sample_txt, tmp_path):
    out = run_script(
        "add_noise.py",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(sample_txt),
        "--split",
        "1",
        "--snr-db",
        "0",
        "--link",
        "nr",
        "--max-tokens",
        "64",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    point = nr.operating_point(0.0)
    assert report["link"] == "nr" and report["mcs"] == point.mcs and report["residual_tb_loss"] == point.residual
    assert "modulation" not in report
    out = run_script(
        "add_noise.py",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(sample_txt),
        "--split",
        "1",
        "--snr-db",
        "0",
        "--link",
        "nr",
        "--max-tokens",
        "64",
    )
    assert out.returncode == 0, out.stderr
    assert f"5G NR MCS {point.mcs} (TBs of {point.tb_size} bits)" in out.stdout and "latency of" in out.stdout
    out = run_script(
        "add_noise.py",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(sample_txt),
        "--split",
        "1",
        "--snr-db",
        "0",
        "--link",
        "nr",
        "--protect",
        "2",
        "--max-tokens",
        "64",
    )
    assert out.returncode == 2 and "not modelled on the NR link" in out.stderr
    out = run_script("-m", "layersplit.nr", "--snr-db", "7", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["mcs"] == nr.operating_point(7.0).mcs
    table = tmp_path / "lat.csv"
    out = run_script("-m", "layersplit.nr", "--latency-table", str(table))
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(open(table)))
    assert len(rows) == 2 * 3 * (30 + 32)
    for bad, message in (
        (["--check", "3:x"], "give MCS:SNR pairs"),
        (["--snrs", "abc"], "--snrs 'abc'"),
        (["--mcs", "3.5"], "MCS indices are integers"),
        (["--check", "99:0"], "MCS 99 is not in"),
        (["--target-bler", "2", "--snr-db", "5"], "target BLER 2.0 is outside"),
    ):
        out = run_script(
            "-m",
            "layersplit.nr",
            *bad,
            "--table" if bad[0] in ("--snrs", "--mcs") else "--json",
            *([str(tmp_path / "never.csv")] if bad[0] in ("--snrs", "--mcs") else []),
        )
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, (bad, out.stderr)
    assert not (tmp_path / "never.csv").exists()


def test_the_ldpc_code_on_awgn_sits_a_few_db_from_its_constellations_limit():
    """The LDPC check (results/nr_bler_awgn.csv: AWGN, perfect CSI): each MCS reaches 10% BLER between
    0.5 and 2.5 dB above the limit of its constellation at its rate (Gray QAM, BICM), itself at or above
    Shannon's 2^(Qm R) - 1 (a finite-length code with practical decoding loses about 1-2 dB there; a
    table to the left of either limit would be wrong). MCS 28's gap to Shannon is mostly 64QAM's."""
    curves = nr.load_table(nr.BLER_TABLE.parent / "nr_bler_awgn.csv")
    tdl = nr.load_table()
    for mcs, curve in curves.items():
        at_target = next(s / 10 for s in range(-100, 400) if curve(s / 10) <= 0.1)
        shannon = 10 * math.log10(2 ** (curve.modulation_order * curve.code_rate) - 1)
        limit = claims_radio.constellation_limit_db(curve.modulation_order, curve.code_rate)
        assert shannon - 0.01 < limit and 0.5 < at_target - limit < 2.5, (mcs, at_target, limit, shannon)
        if mcs == 28:
            assert limit - shannon > at_target - limit  # the constellation's share is the larger
        # fading and LS estimation cost SNR: the TDL curve reaches 10% later
        assert next(s / 10 for s in range(-100, 500) if tdl[mcs](s / 10) <= 0.1) > at_target


def test_the_residual_bound_is_what_the_data_resolve(tmp_path):
    path = write_table(
        tmp_path / "b.csv", {3: (1000, [(-4.0, 1.0, 1.0), (0.0, 0.5, 0.6), (4.0, 0.05, 0.11), (8.0, 0.0, 0.037)])}
    )
    curve = nr.load_table(path)[3]
    # the nearest measured point at or below: its interval's upper end (BLER does not rise with the SNR)
    assert [curve.upper_bound(s) for s in (-6.0, -4.0, 2.0, 4.0, 7.9, 8.0, 30.0)] == [
        1.0,
        1.0,
        0.6,
        0.11,
        0.11,
        0.037,
        0.037,
    ]
    # after 4 transmissions, at 2 dB + 6.02 dB the data say no more than the 8 dB point's 0.037, whatever the
    # extrapolation below it says
    assert nr.residual_bound(curve, 2.0, 4) == 0.037 > nr.failed_all(curve, 2.0, 4)
    # the committed table alone resolves no residual below about 2%: 192 TBs with none lost, upper end
    # 1 - 0.025^(1/192); its tails resolve 1 - 0.025^(1/2000) (MCS 7 and 20) and 1e-4 (MCS 3 and 5, 36,887 TBs)
    alone = nr.load_table(tails=None)
    assert min(nr.residual_bound(c, 40.0) for c in alone.values()) == pytest.approx(1 - 0.025 ** (1 / 192), rel=1e-3)
    committed = nr.load_table()
    assert nr.residual_bound(committed[7], 10.0) == pytest.approx(1 - 0.025 ** (1 / 2000), rel=1e-3)
    assert nr.residual_bound(committed[20], 20.0) == pytest.approx(1 - 0.025 ** (1 / 2000), rel=1e-3)
    assert nr.residual_bound(committed[5], 10.0) <= nr.RESIDUAL_TARGET < nr.residual_bound(committed[5], 9.9)
    assert nr.choose_mcs(committed, 10.0, "reliable", residual_read="bound").mcs == 5  # certified: what the curve picks
    assert nr.choose_mcs(committed, 10.0, "reliable").mcs == 5
    # MCS 3's deep point (11 dB) certifies its residual from 11 - 6.02 dB on: the rule's 5 dB choice
    assert nr.residual_bound(committed[3], 5.0) <= nr.RESIDUAL_TARGET < nr.residual_bound(committed[3], 4.9)
    assert nr.failed_all(committed[3], 5.0, 4) <= nr.RESIDUAL_TARGET < nr.failed_all(committed[3], 4.9, 4)
    assert nr.choose_mcs(committed, 5.0, "reliable", residual_read="bound").mcs == 3


def test_the_reliable_rule_reads_the_bound_where_asked(tmp_path, monkeypatch):
    """residual_read "bound": an MCS qualifies only when the data certify its residual. MCS 3's curve ends in a
    deep loss-free point (bound 1e-5), MCS 5's in a shallow one (0.037): at 10 dB both meet the 10% target and
    extrapolate far below 1e-4, but only MCS 3's bound is under it."""
    deep = [(-4.0, 1.0, 1.0), (0.0, 0.2, 0.3), (2.0, 0.01, 0.02), (10.0, 0.0, 1e-5)]
    shallow = [(-2.0, 1.0, 1.0), (2.0, 0.1, 0.2), (4.0, 0.01, 0.02), (6.0, 0.0, 0.037)]
    path = write_table(tmp_path / "r.csv", {3: (1000, deep), 5: (2000, shallow)})
    curves = nr.load_table(path)
    assert nr.failed_all(curves[5], 10.0, 4) < nr.RESIDUAL_TARGET and curves[5](10.0) <= nr.TARGET_BLER
    assert nr.choose_mcs(curves, 10.0, "reliable", residual_read="extrapolated").mcs == 5
    assert nr.choose_mcs(curves, 10.0, "reliable", residual_read="bound").mcs == 3
    assert nr.choose_mcs(curves, 10.0, "reliable").mcs == 3  # the default reads the bound
    assert nr.residual_bound(curves[3], 10.0) == 1e-5 and nr.residual_bound(curves[5], 10.0) == 0.037
    monkeypatch.setattr(nr, "RESIDUAL_READ", "extrapolated")  # the constant a script's --residual-read sets
    assert nr.operating_point(10.0, rule="reliable", table=path).mcs == 5
    assert nr.choose_mcs(curves, 10.0, "target").mcs == 5  # the other rules read no residual
    with pytest.raises(UserError, match="residual read"):
        nr.choose_mcs(curves, 10.0, "reliable", residual_read="guess")


def test_the_tails_block_says_where_the_lookup_lies_in_the_deep_interval(tmp_path):
    import shutil

    from layersplit import claims_radio

    shutil.copy(nr.BLER_TABLE, tmp_path / "nr_bler.csv")
    lookup = nr.load_table(tails=None)[20](26.0)  # the table's extrapolation at the 20 dB point's residual
    rows = []
    for snr, errors, slots in ((26.0, 8, 2000), (28.0, 0, 2000), (24.0, 1000, 2000)):
        low, high = nr_sim.clopper_pearson(errors, slots)
        rows.append({**dict.fromkeys(nr.TABLE_COLUMNS, ""), "mcs": 20, "modulation_order": 6, "code_rate": 0.5,
                     "tb_size": 24576, "snr_db": snr, "slots": slots, "errors": errors, "bler": errors / slots,
                     "bler_low": low, "bler_high": high, "channel": "tdl", "receiver": "ls", "seed": 2})  # fmt: skip
    with open(tmp_path / claims_radio.NR_TAILS, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=nr.TABLE_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    lines = [line for line in claims_radio.block_nr_tails(tmp_path).splitlines() if line.startswith("| 20 |")]
    verdicts = [line.split("|")[-3].strip() for line in lines]  # the last column but one
    assert verdicts == ["below: optimistic", "inside", "above: pessimistic"]
    low, high = nr_sim.clopper_pearson(8, 2000)
    assert low <= lookup <= high  # 26 dB: 8 of 2,000 holds the extrapolation
    assert "| 26 dB | 20.0 dB |" in lines[1] and "8 / 2,000" in lines[1]


def test_the_link_pools_the_tails_with_the_table_worked_by_hand(tmp_path):
    """A tail point at a table point adds its TBs to that point's; one past the curve's end adds a point, and
    the lookup past the last lost TB passes under every loss-free point's upper end (the steepest binds)."""
    table = write_table(tmp_path / "t.csv", {3: (1000, [(0.0, 0.2, 0.3), (4.0, 0.1, 0.18), (8.0, 0.0, 0.036)])})
    tails = tmp_path / "t_tails.csv"  # beside the table: read with it by default
    with open(tails, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=nr.TABLE_COLUMNS)
        w.writeheader()
        for snr, errors, slots in ((8.0, 0, 900), (12.0, 0, 2000)):
            low, high = nr.clopper_pearson(errors, slots)
            w.writerow({**dict.fromkeys(nr.TABLE_COLUMNS, ""), "mcs": 3, "modulation_order": 2, "code_rate": 0.5,
                        "tb_size": 1000, "snr_db": snr, "slots": slots, "errors": errors, "bler": errors / slots,
                        "bler_low": low, "bler_high": high, "channel": "tdl", "receiver": "ls", "seed": 2})  # fmt: skip
    alone, pooled = nr.load_table(table, tails=None)[3], nr.load_table(table)[3]
    assert nr.tails_of(table) == tails and nr.load_table(table, tails=tails)[3] == pooled
    assert alone.snr_db == (0.0, 4.0, 8.0) and pooled.snr_db == (0.0, 4.0, 8.0, 12.0)
    assert pooled.bler[:2] == alone.bler[:2] == (0.2, 0.1)  # table points without tails: as the table gives them
    eight, twelve = nr.clopper_pearson(0, 100 + 900)[1], nr.clopper_pearson(0, 2000)[1]  # 8 dB: 0 of 100 + 900
    assert pooled.bler_high[2:] == pytest.approx((eight, twelve))
    # past 4 dB (0.1): the line through 0 and 4 dB falls 0.075 decades a dB; under 8 dB's upper end it must
    # fall (log10(0.036) + 1) / 4 a dB alone, and pooled the steeper of 8 dB's and 12 dB's
    through = math.log10(0.1 / 0.2) / 4.0
    alone_slope = min(through, (math.log10(0.036) + 1.0) / 4.0)
    pooled_slope = min(through, (math.log10(eight) + 1.0) / 4.0, (math.log10(twelve) + 1.0) / 8.0)
    assert alone(10.0) == pytest.approx(0.1 * 10 ** (alone_slope * 6.0))
    assert pooled(10.0) == pytest.approx(0.1 * 10 ** (pooled_slope * 6.0)) and pooled(10.0) < alone(10.0)
    assert pooled.upper_bound(12.5) == pytest.approx(twelve) and alone.upper_bound(12.5) == 0.036
    # a tails file of another set-up is refused; a table with none beside it is read alone
    other = write_table(tmp_path / "o.csv", {3: (2000, [(0.0, 0.5), (4.0, 0.0, 0.036)])})
    with pytest.raises(UserError, match="not a point of"):
        nr.load_table(other, tails=tails)
    assert nr.load_table(other)[3].snr_db == (0.0, 4.0)


def test_the_committed_link_reads_its_tails():
    committed, alone = nr.load_table(), nr.load_table(tails=None)
    assert committed[20].snr_db[-1] == 26.0 and 26.0 not in alone[20].snr_db
    point = nr.operating_point(20.0)
    deep_bound = 1 - 0.025 ** (1 / 2000)  # 26 dB, where 20 dB's residual is read: none of 2,000 TBs lost
    assert point.mcs == 20 and point.residual <= deep_bound + 1e-12 < nr.failed_all(alone[20], 20.0, 4)
