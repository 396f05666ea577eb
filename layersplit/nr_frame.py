"""When the 5G NR uplink may transmit: the TDD frame (which slots carry uplink) and HARQ's round trip.

n78, the band nr.py's carrier sits in, is a TDD band: uplink and downlink share the carrier in a slot
pattern that repeats (TS 38.213 11.1, tdd-UL-DL-ConfigurationCommon). FRAME is that pattern, one letter
a slot: D downlink, S special (downlink symbols, a guard, uplink symbols), U uplink. "FDD" (the pattern
"U") is a paired uplink carrier on which every slot is uplink.

What the frame sets (nr.OperatingPoint.air_s, goodput_bps):
- transport blocks go in U slots only. The S slot's uplink symbols (SPECIAL_SLOT_SYMBOLS) carry control,
  not the activation: a TB in 2 symbols, one of them DMRS, would hold 1/12 of a slot's data at a BLER the
  table does not measure, so they are left out of the data capacity (at most 1/12 of a U slot's, lost);
- a transfer starts at a slot boundary, equally likely anywhere in the period (the data is ready when the
  UE finishes its layers, not when the frame suits), and ends with the last U slot it needs: the wait for
  the first U slot and the D and S slots between U slots count in its air time;
- HARQ: a TB is retransmitted in the first U slot at least HARQ_RTT_SLOTS after its last transmission
  that follows a slot able to carry the new grant (D or S; on FDD any slot, the downlink being another
  carrier). In DDDSU a retransmission waits one period, 2.5 ms, against 2 ms on FDD, but no U slot
  is left idle for it, since the next U slot is already that far away.
Not modelled: the scheduling request and grant before the first TB (a configured grant, or the edge
scheduling the transfer it expects); other users' share of the U slots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import UserError

# ---- the frame ----------------------------------------------------------------------------------
# DDDSU: 3 downlink slots, a special slot and an uplink slot, 2.5 ms at 30 kHz: the pattern most n78
# networks run (downlink-heavy traffic); one slot in five carries uplink
FRAME = "DDDSU"
FDD = "FDD"  # the name of a paired uplink carrier, every slot uplink (the pattern "U")
SPECIAL_SLOT_SYMBOLS = (10, 2, 2)  # the S slot's downlink, guard and uplink symbols (a common 10:2:2 split)
MAX_PERIOD_SLOTS = 20  # TS 38.213's longest period, 10 ms, at 30 kHz

# ---- HARQ ---------------------------------------------------------------------------------------
HARQ_RTT_SLOTS = 4  # slots from a transmission to its retransmission at the earliest (decode, feedback, new grant)


@dataclass(frozen=True)
class Frame:
    """A slot pattern that repeats: D downlink, S special, U uplink ("U" alone: FDD's uplink carrier)."""

    pattern: str

    def __post_init__(self):
        if not self.pattern or set(self.pattern) - set("DSU") or "U" not in self.pattern:
            raise UserError(f"NR frame {self.pattern!r}: give D, S and U slots with at least one U, or {FDD}")
        if len(self.pattern) > MAX_PERIOD_SLOTS:
            raise UserError(f"NR frame {self.pattern[:30]!r}: at most {MAX_PERIOD_SLOTS} slots (10 ms at 30 kHz)")
        if set(self.pattern) == {"U"}:  # every slot uplink, however written: FDD (and no D slot for grants)
            object.__setattr__(self, "pattern", "U")

    @classmethod
    def named(cls, name: str) -> Frame:
        """The frame a CLI name gives: FDD, or a pattern of D, S and U."""
        return cls("U" if name.upper() == FDD else name.upper())

    @property
    def name(self) -> str:
        return FDD if self.fdd else self.pattern

    @property
    def fdd(self) -> bool:
        return self.pattern == "U"

    @property
    def period(self) -> int:
        return len(self.pattern)

    @property
    def uplink(self) -> tuple[int, ...]:
        """The U slots' positions in the period."""
        return tuple(i for i, c in enumerate(self.pattern) if c == "U")

    @property
    def uplink_share(self) -> float:
        """The share of slots that carry transport blocks."""
        return len(self.uplink) / self.period

    def _is_uplink(self, slot: int) -> bool:
        return self.pattern[slot % self.period] == "U"

    def retransmission_gap(self) -> float:
        """Uplink slots from a TB's transmission to its earliest retransmission (1: the very next U slot),
        averaged over the U slots of the period."""
        gaps = []
        for start in self.uplink:
            slot = start + HARQ_RTT_SLOTS
            while not (
                self._is_uplink(slot)
                and (self.fdd or any(self.pattern[s % self.period] in "DS" for s in range(start + 1, slot)))
            ):
                slot += 1
            gaps.append(sum(self._is_uplink(s) for s in range(start + 1, slot + 1)))
        return sum(gaps) / len(gaps)

    def slots_to_send(self, uplink_slots: float) -> float:
        """Expected slots from a transfer's start (a slot boundary, uniform over the period) to the end of
        its `uplink_slots`-th U slot; linear between whole numbers of U slots. FDD: the count itself."""
        if uplink_slots <= 0:
            return 0.0
        if self.fdd:  # every slot is uplink
            return float(uplink_slots)
        low = math.floor(uplink_slots)
        if low == uplink_slots:
            return self._whole(int(low))
        return self._whole(low) + (uplink_slots - low) * (self._whole(low + 1) - self._whole(low))

    def _whole(self, k: int) -> float:
        if k == 0:
            return 0.0
        per_period = len(self.uplink)
        periods, k = divmod(k - 1, per_period)  # the k-th U slot is the (k mod u)-th one, whole periods later
        ends = []
        for start in range(self.period):
            later = [s for s in range(start, start + self.period) if self._is_uplink(s)]
            ends.append(later[k] + 1 - start)
        return periods * self.period + sum(ends) / len(ends)


def frame_name(text: str) -> str:
    """An argparse type: the canonical name of a valid frame (FDD or a D/S/U pattern), else one line."""
    import argparse

    try:
        return Frame.named(text).name
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def frame(name: str | None = None) -> Frame:
    """The frame `name` gives (None: FRAME as it is at the call: a script's --nr-frame sets it)."""
    return Frame.named(FRAME if name is None else name)
