"""The NR uplink's TDD frame (layersplit/nr_frame.py): slots to send and HARQ's retransmission gap against
frames worked by hand, FDD equal to one slot per transmission, the air time and goodput of the NR link
on it, and bad frames refused in one line."""

from __future__ import annotations

import math

import pytest

from conftest import run_script
from layersplit import UserError, nr, nr_frame
from layersplit.nr_frame import Frame


def test_dddsu_worked_by_hand():
    f = Frame("DDDSU")
    assert f.uplink == (4,) and f.uplink_share == 0.2 and not f.fdd and f.name == "DDDSU"
    # a transfer starts at slot 0, 1, 2, 3 or 4 of the period; its U slot (4) ends 5, 4, 3, 2 or 1 slots later
    assert f.slots_to_send(1) == (5 + 4 + 3 + 2 + 1) / 5 == 3.0
    assert f.slots_to_send(2) == 3.0 + 5  # the second U slot: a period later
    assert f.slots_to_send(7) == 3.0 + 6 * 5
    assert f.slots_to_send(1.5) == pytest.approx((3.0 + 8.0) / 2)  # linear between whole numbers
    assert f.slots_to_send(0) == 0.0
    # a TB sent in slot 4: its earliest retransmission is slot 4 + HARQ_RTT_SLOTS = 8 (an S slot) or later,
    # so slot 9, the very next U slot (D slots 5-7 carry the grant): no U slot is left idle
    assert f.retransmission_gap() == 1.0


def test_a_frame_with_two_uplink_slots_worked_by_hand():
    f = Frame("DDDSUUDDDD")  # U at 4 and 5, period 10
    # from slot 4: slot 8 or later, the first U is 14 (= 4 + 10): U slots 5 and 14 lie in (4, 14], gap 2;
    # from slot 5: slot 9 or later, the first U is 14: U slot 14 alone, gap 1
    assert f.retransmission_gap() == 1.5
    # one U slot: from starts 0..4 the U slot 4 ends 5..1 slots later, from 5 slot 5 ends 1 later,
    # from 6..9 the next period's slot 4 (14) ends 9..6 later
    assert f.slots_to_send(1) == pytest.approx((5 + 4 + 3 + 2 + 1 + 1 + 9 + 8 + 7 + 6) / 10)


def test_fdd_is_one_slot_per_transmission_and_its_retransmission_waits_the_round_trip():
    f = Frame.named("fdd")
    assert f.pattern == "U" and f.fdd and f.name == "FDD" and f.uplink_share == 1.0
    assert Frame("UUUU") == f  # every slot uplink however written
    assert f.retransmission_gap() == nr_frame.HARQ_RTT_SLOTS
    assert [f.slots_to_send(k) for k in (0.25, 1, 3, 10.5)] == [0.25, 1.0, 3.0, 10.5]


def test_the_nr_link_on_a_tdd_frame():
    fdd, tdd = (nr.operating_point(10.0, frame_name=name) for name in ("FDD", "DDDSU"))
    assert (fdd.mcs, fdd.residual, fdd.transmissions) == (tdd.mcs, tdd.residual, tdd.transmissions)  # loss alike
    assert tdd.goodput_bps == pytest.approx(fdd.goodput_bps / 5)  # one slot in five carries uplink
    # n TBs on DDDSU: their U slots (transmissions, no idle one: the gap is 1) placed on the frame
    n = 40
    uplink_slots = n * tdd.transmissions
    assert tdd.air_s(n) == pytest.approx(nr.SLOT_S * Frame("DDDSU").slots_to_send(uplink_slots))
    assert 4.5 < tdd.air_s(n) / fdd.air_s(n) < 5.0
    # the goodput is what the air time gives over a long transfer
    n = 100_000
    assert n * tdd.tb_size * (1 - tdd.residual) / tdd.air_s(n) == pytest.approx(tdd.goodput_bps, rel=1e-3)


def test_the_default_frame_is_read_at_each_call(monkeypatch):
    assert nr.operating_point(10.0).frame == Frame(nr_frame.FRAME)
    monkeypatch.setattr(nr_frame, "FRAME", "FDD")
    assert nr.operating_point(10.0).frame.fdd


@pytest.mark.parametrize("bad", ["", "DDD", "DDXU", "D" * 20 + "U", "u u"])
def test_bad_frames_are_refused(bad):
    with pytest.raises(UserError, match="NR frame"):
        Frame.named(bad)


@pytest.mark.slow
def test_a_bad_frame_on_the_command_line_is_one_line_and_exit_2():
    out = run_script("-m", "layersplit.nr", "--snr-db", "10", "--frame", "DDXU")
    assert out.returncode == 2 and "NR frame 'DDXU'" in out.stderr.strip().splitlines()[-1]
    out = run_script("-m", "layersplit.nr", "--snr-db", "10", "--frame", "fdd", "--json")
    assert out.returncode == 0 and '"frame": "FDD"' in out.stdout
    assert math.isfinite(float(out.stdout.split('"goodput_bps": ')[1].split(",")[0]))
