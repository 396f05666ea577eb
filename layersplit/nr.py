"""The 5G NR coded uplink (--link nr): transport blocks, LDPC, MCS, a TDL channel and HARQ, from Sionna.

The activation's bits fill 5G NR transport blocks (TBs): one TB per slot over the whole allocation, its
size from TS 38.214 5.1.3.2 for the MCS (Table 5.1.3.1-1), with TB and code-block CRCs and LDPC coding
(Sionna's PUSCHTransmitter). Each TB crosses a TR 38.901 TDL channel on an OFDM grid and is decoded
by Sionna's PUSCHReceiver (LS channel estimation or perfect CSI, LMMSE detection). A TB whose CRC
fails is retransmitted (HARQ) up to HARQ_MAX_RETX times; one still lost then loses its elements
(zero-filled at the edge, as erasure loses a packet).

Per-TB link simulation is far too slow for a sweep, so the BLER of each MCS against the average SNR is
measured once by seeded Monte Carlo (`python -m layersplit.nr --table results/nr_bler.csv`, with 95%
Clopper-Pearson intervals), with the points where residuals are read measured deeper beside it (`--tails
results/nr_bler_tails.csv`, pooled in by load_table), and the link reads that table:
- link adaptation: the highest MCS whose first-transmission BLER at the SNR is <= TARGET_BLER
  (MCS_RULE "target"), or the MCS of the highest goodput TB bits x (1 - BLER) (MCS_RULE "goodput");
- HARQ, chase combining on a channel that stays put over the rounds (UE_SPEED_MPS makes the coherence
  time, ~40 ms, 16x the HARQ round trip of a DDDSU frame): r transmissions of a TB are r copies in the
  same fade, i.e. one transmission at r times the SNR, so P(all r fail) = BLER(snr_db + 10 log10 r);
- rate and loss from the same link, on the TDD frame of nr_frame.py (uplink in one slot of five by
  default): the air time counts every transmission, the HARQ round trips of the last TBs and the slots
  that carry no uplink; the residual loss of a TB is P(all HARQ_MAX_RETX + 1 transmissions fail); the
  goodput is what the air time implies, TB bits x (1 - residual) / (transmissions per TB x slot) x the
  frame's uplink share.
The table is read through one reader, read_table, which refuses (UserError, file:line) a folder, a file
that is not UTF-8 CSV with the columns READ_COLUMNS, a number that is not finite or out of range (BLER and
its interval in [0, 1], the BLER inside its interval, MCS 0-28, counts whole, errors <= slots) and a second
row of one (MCS, SNR); load_table, nr_sim's check() and measure_table's resume all use it.
LAYERSPLIT_NR_BLER_TABLE names another table; check_environment() refuses a set but bad one naming the
variable, before any work.
links.NrLink is this link behind the one Link interface; its latency table is compute.latency_table's.
SNR convention, as in channel.py: `snr_db` is the average received SNR per resource element, Es/N0,
E|h|^2 = 1 over the TDL's realisations (the channel is not normalised per slot).
The Monte Carlo that measures the table (Sionna's PUSCH link): nr_sim.py. The command line
(`python -m layersplit.nr --snr-db 10`, `--table`, `--check`, `--latency-table`): nr_cli.py.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import UserError, shipped_file
from .channel import COHERENCE_S
from .nr_frame import Frame, frame

# ---- the OFDM grid (TS 38.211) ----------------------------------------------------------------
SUBCARRIER_SPACING_KHZ = 30  # numerology mu = 1: 0.5 ms slots, the usual FR1 TDD choice
NUM_PRBS = 51  # 20 MHz at 30 kHz (TS 38.101-1 Table 5.3.2-1), the same band as the uncoded link's default
OFDM_SYMBOLS = 14  # a whole slot for PUSCH (normal cyclic prefix)
DMRS_ADDITIONAL_POSITION = 1  # two DMRS symbols per slot: the channel estimate follows a moving UE
CARRIER_FREQUENCY_HZ = 3.5e9  # n78, the common 5G mid band
SLOT_S = 1e-3 / (SUBCARRIER_SPACING_KHZ / 15)  # 0.5 ms

# ---- the channel (TR 38.901 7.7.2) and the receiver --------------------------------------------
CHANNELS = ("tdl", "awgn")  # a tapped-delay-line fading channel, or no fade (the LDPC check)
CHANNEL = "tdl"
TDL_PROFILE = "C"  # TDL-C: non line of sight, the profile 3GPP evaluations use most
DELAY_SPREAD_S = 100e-9  # "nominal" delay spread of TR 38.901 Table 7.7.3-1
UE_SPEED_MPS = 3 / 3.6  # 3 km/h, a pedestrian: ~10 Hz Doppler at 3.5 GHz, coherence ~40 ms
RECEIVERS = ("ls", "perfect")  # LS channel estimation with linear interpolation, or perfect CSI
RECEIVER = "ls"  # what a base station does; perfect CSI is the upper bound

# ---- MCS (TS 38.214 Table 5.1.3.1-1, 64QAM, PUSCH without transform precoding) -----------------
MCS_TABLE = 1
# From 3 (QPSK, code rate 0.24) to 28 (64QAM, 0.93), every second index up to 11 and then every third or fourth,
# their 10%-BLER points 2-4 dB apart (each higher MCS costs more Monte Carlo: its TB has more code blocks).
# MCS 0-2 code at rates below 1/5, which Sionna's LDPC encoder does not support.
MCS_INDICES = (3, 5, 7, 9, 11, 14, 17, 20, 24, 28)

# ---- link adaptation and HARQ ------------------------------------------------------------------
MCS_RULES = ("target", "goodput", "reliable")
MCS_RULE = "target"  # the highest MCS whose first-transmission BLER <= TARGET_BLER: the operators' rule
TARGET_BLER = 0.1  # the usual 10% first-transmission BLER target of outer-loop link adaptation
# "reliable": also a residual TB loss after HARQ of at most this (activations are loss-sensitive: the 10% rule
# alone leaves up to 2.6% of TBs lost where an MCS's curve has a floor; README, "A 5G NR coded link")
RESIDUAL_TARGET = 1e-4
# How the "reliable" rule reads a residual: "bound" (residual_bound: the 95% upper end of the nearest measured point,
# what the data alone certify) or "extrapolated" (the curve's lookup, a straight line in log BLER past its last lost
# TB). The bound is the default: an MCS is "reliable" only where a measured point resolves its residual. Where the
# tails certify the point nr_sim.reliable_points names (36,887 slots, none lost: 1e-4) the bound picks what the
# extrapolation picks; elsewhere it keeps a slower MCS (docs/nr-link.md gives where the two differ).
RESIDUAL_READS = ("extrapolated", "bound")
RESIDUAL_READ = "bound"
HARQ_MAX_RETX = 3  # retransmissions after the first: 4 transmissions in all, a common configuration
TAIL_SLOPE_DB = -1.0  # decades of BLER per dB past a curve's last lost TB when it has only one point
# with losses (otherwise the slope of its last two: a fading channel's BLER falls as a power of the SNR)

# ---- the BLER table (measured by nr_sim.py) ----------------------------------------------------
# the table the link reads: the committed one, or the file LAYERSPLIT_NR_BLER_TABLE names (a recomputed table;
# empty: unset); scripts check it before any work with check_environment()
TABLE_ENV = "LAYERSPLIT_NR_BLER_TABLE"
BLER_TABLE = Path(os.environ.get(TABLE_ENV) or shipped_file("nr_bler.csv"))
# A table's points measured deeper where the residuals are read (nr_sim's --tails) live beside it, as
# <table>_tails.csv (the committed: results/nr_bler_tails.csv), and are read with it: each is pooled with the
# table's point at its (MCS, SNR) or added to the curve (their seeds are independent of the table's), so the
# residuals there rest on thousands of TBs. A table with no such file beside it is read alone.
TAILS_SUFFIX = "_tails"
TABLE_COLUMNS = (  # its columns, as nr_sim.measure_table writes them
    "mcs",
    "modulation_order",
    "code_rate",
    "tb_size",
    "num_cb",
    "snr_db",
    "slots",
    "errors",
    "bler",
    "bler_low",
    "bler_high",
    "channel",
    "tdl_profile",
    "delay_spread_s",
    "ue_speed_mps",
    "receiver",
    "num_prbs",
    "subcarrier_spacing_khz",
    "seed",
)


# ---- TB sizes ----------------------------------------------------------------------------------
def tb_size(
    modulation_order: int,
    code_rate: float,
    num_prbs: int,
    num_ofdm_symbols: int,
    num_dmrs_per_prb: int,
    num_layers: int = 1,
) -> tuple[int, int]:
    """(TB size in bits, code blocks) by TS 38.214 5.1.3.2, Sionna's calculate_tb_size."""
    from sionna.phy.nr.utils import calculate_tb_size

    out = calculate_tb_size(
        modulation_order=modulation_order,
        target_coderate=code_rate,
        num_prbs=num_prbs,
        num_ofdm_symbols=num_ofdm_symbols,
        num_dmrs_per_prb=num_dmrs_per_prb,
        num_layers=num_layers,
        return_cw_length=False,
        device="cpu",
    )
    return int(out[0]), int(out[2])


# ---- the link, read from the table ------------------------------------------------------------
@dataclass(frozen=True)
class BlerCurve:
    """One MCS's measured BLER against Es/N0 (sorted)."""

    mcs: int
    tb_size: int
    modulation_order: int
    code_rate: float
    snr_db: tuple[float, ...]
    bler: tuple[float, ...]
    bler_high: tuple[float, ...]  # the upper ends of the points' 95% intervals

    def __call__(self, snr_db: float) -> float:
        """BLER at `snr_db`: log-linear between the measured points with losses; below the first point its
        value (the curves start where every TB is lost); past the last point with losses a straight line in
        log BLER: the one through the last two such points (a fading channel's BLER falls as a power of
        the SNR), or a steeper one where that would pass above the upper end of the interval of a point
        with no TB lost past it (a steep waterfall, as on AWGN; the deepest such point binds)."""
        lossy = [(s, b) for s, b in zip(self.snr_db, self.bler) if b > 0]
        if not lossy or snr_db <= self.snr_db[0]:
            return float(self.bler[0])
        x, logs = np.array([s for s, _ in lossy]), np.log10([b for _, b in lossy])
        if snr_db <= x[-1]:
            return float(10.0 ** np.interp(snr_db, x, logs))
        slope = min((logs[-1] - logs[-2]) / (x[-1] - x[-2]) if len(x) > 1 else TAIL_SLOPE_DB, 0.0)
        for s, b, h in zip(self.snr_db, self.bler, self.bler_high):  # the line passes under every loss-free
            if b == 0 and s > x[-1]:  # point's upper end (the table's last point; a deeper one from the tails)
                slope = min(slope, (math.log10(h) - logs[-1]) / (s - x[-1]))
        return float(10.0 ** (logs[-1] + slope * (snr_db - x[-1])))

    def upper_bound(self, snr_db: float) -> float:
        """What the measurements alone say of the BLER at `snr_db`: the upper end of the 95% interval of the
        nearest measured point at or below it (BLER does not rise with the SNR); 1 below the first point.
        Where the lookup extrapolates past a curve's last lost TB, this is the resolution the data have."""
        below = [h for s, h in zip(self.snr_db, self.bler_high) if s <= snr_db]
        return float(below[-1]) if below else 1.0


READ_COLUMNS = (
    "mcs",
    "modulation_order",
    "code_rate",
    "tb_size",
    "snr_db",
    "slots",
    "errors",
    "bler",
    "bler_low",
    "bler_high",
    "channel",
    "receiver",
    "seed",
)  # what the readers use of TABLE_COLUMNS
# column -> (low, high, whole): the range of each number a table row holds (bler_low <= bler <= bler_high too)
TABLE_LIMITS = {
    "mcs": (0, 28, True),
    "modulation_order": (1, 10, True),
    "code_rate": (0, 1, False),
    "tb_size": (1, math.inf, True),
    "snr_db": (-math.inf, math.inf, False),
    "slots": (1, math.inf, True),
    "errors": (0, math.inf, True),
    "bler": (0, 1, False),
    "bler_low": (0, 1, False),
    "bler_high": (0, 1, False),
    "seed": (-math.inf, math.inf, True),
}


def _table_row_problem(row: dict) -> str | None:
    """What is wrong with a BLER table row as csv reads it, or None."""
    if None in row or None in row.values():
        return "fields missing or extra"
    values = {}
    for column, (low, high, whole) in TABLE_LIMITS.items():
        try:
            x = float(int(row[column]) if whole else row[column])  # whole: "3", as measure_table writes it
        except ValueError:
            return f"{column} is {row[column]!r}, not {'a whole number' if whole else 'a number'}"
        if not (low <= x <= high and math.isfinite(x)) or (whole and x != int(x)):
            kind = "a whole number" if whole else "a finite number"
            within = f" in [{low:g}, {high:g}]" if math.isfinite(high) else ""
            return f"{column} is {row[column]}, not {kind}{within}"
        values[column] = x
    if values["errors"] > values["slots"]:
        return f"errors {row['errors']} > slots {row['slots']}"
    if not values["bler_low"] <= values["bler"] <= values["bler_high"]:
        return f"bler {row['bler']} is outside its interval [{row['bler_low']}, {row['bler_high']}]"
    return None


def read_table(path: str | Path, allow_empty: bool = False, repeats: bool = False) -> list[dict]:
    """The rows of a BLER table (measure_table's format), each checked: the columns present, numbers finite
    and in range (BLER and its interval in [0, 1], MCS and counts whole), one row per (MCS, SNR) unless
    `repeats` (a tails file: a deep point is written in chunks, pooled where it is read).
    UserError names the file and line of the first that is not, or the file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not an NR BLER table")
    if not path.exists():
        raise UserError(f"{path}: no NR BLER table; make it with python -m layersplit.nr --table {path}")
    rows, seen = [], {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in READ_COLUMNS if c not in (reader.fieldnames or [])]
            if missing and (reader.fieldnames or not allow_empty):
                raise UserError(
                    f"{path} is not an NR BLER table: no column(s) {', '.join(missing[:4])}"
                    + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
                )
            for row in reader:
                problem = _table_row_problem(row)
                key = None if problem else (int(row["mcs"]), float(row["snr_db"]))
                if key in seen and not repeats:
                    problem = f"MCS {key[0]} at {key[1]:g} dB again (line {seen[key]} has it)"
                if problem:
                    raise UserError(f"{path}:{reader.line_num}: {problem}")
                seen[key] = reader.line_num
                rows.append(row)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not an NR BLER table: not UTF-8 text") from None
    except csv.Error as e:
        raise UserError(f"{path} is not an NR BLER table: not CSV ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the NR BLER table ({e.strerror or e})") from None
    if not rows and not allow_empty:
        raise UserError(f"{path}: the NR BLER table is empty")
    return rows


def check_environment() -> None:
    """Refuse a LAYERSPLIT_NR_BLER_TABLE that is set but does not name a valid BLER table (missing, a
    folder, not a table, a bad row), naming the variable: scripts call this before any work."""
    value = os.environ.get(TABLE_ENV)
    if not value:  # unset or empty: the committed table
        return
    try:
        load_table(Path(value))
    except UserError as e:
        raise UserError(f"{TABLE_ENV}={value}: {e}") from None


def point_counts(rows) -> dict[tuple[int, float], tuple[int, int]]:
    """(lost TBs, slots) per (MCS, Es/N0) over `rows` (read_table's), a point's chunks pooled."""
    counts: dict[tuple[int, float], tuple[int, int]] = {}
    for row in rows:
        key = (int(row["mcs"]), float(row["snr_db"]))
        errors, slots = counts.get(key, (0, 0))
        counts[key] = (errors + int(row["errors"]), slots + int(row["slots"]))
    return counts


def tails_of(table: str | Path) -> Path:
    """Where the points measured deeper for `table` live: beside it, <table>_tails.csv (links resolved)."""
    table = Path(table).resolve()
    return table.with_name(f"{table.stem}{TAILS_SUFFIX}{table.suffix}")


@functools.lru_cache(maxsize=8)
def load_table(path: str | Path = BLER_TABLE, tails: str | Path | None = "beside") -> dict[int, BlerCurve]:
    """The BLER curves of a table written by measure_table, by MCS (read_table checks every row), with the
    points of `tails` (a file --tails wrote) pooled in; "beside": tails_of(path) where it exists; None: the
    table alone."""
    path = Path(path)
    if tails == "beside":
        tails = tails_of(path) if tails_of(path).is_file() else None
    rows: dict[int, list[dict]] = {}
    for row in read_table(path):
        rows.setdefault(int(row["mcs"]), []).append(row)
    top = max(float(r["snr_db"]) for group in rows.values() for r in group)
    counts: dict[int, dict[float, list]] = {}  # MCS -> SNR -> [errors, slots, BLER, its upper end]
    for mcs, group in sorted(rows.items()):
        group.sort(key=lambda r: float(r["snr_db"]))
        if int(group[-1]["errors"]) and float(group[-1]["snr_db"]) < top:
            raise UserError(
                f"{path}: the curve of MCS {mcs} stops at {group[-1]['snr_db']} dB with TBs still lost "
                f"(an interrupted run?): resume it with python -m layersplit.nr --table {path}"
            )
        if len({r["tb_size"] for r in group}) > 1:
            raise UserError(f"{path}: the rows of MCS {mcs} give more than one TB size")
        counts[mcs] = {
            float(r["snr_db"]): [int(r["errors"]), int(r["slots"]), float(r["bler"]), float(r["bler_high"])]
            for r in group
        }
    setup = {(r["channel"], r["receiver"]) for group in rows.values() for r in group}
    tail_rows = read_table(tails, repeats=True) if tails is not None else []
    for row in tail_rows:
        mcs = int(row["mcs"])
        if mcs not in rows or {(row["channel"], row["receiver"])} != setup or row["tb_size"] != rows[mcs][0]["tb_size"]:
            raise UserError(f"{tails}: MCS {mcs} at {row['snr_db']} dB is not a point of {path}'s set-up")
    for (mcs, snr), (errors, slots) in point_counts(tail_rows).items():
        point = counts[mcs].setdefault(snr, [0, 0, 0.0, 1.0])
        point[0] += errors
        point[1] += slots
        point[2], point[3] = point[0] / point[1], clopper_pearson(point[0], point[1])[1]
    curves = {}
    for mcs, group in sorted(rows.items()):
        snrs = sorted(counts[mcs])
        curves[mcs] = BlerCurve(
            mcs,
            int(group[0]["tb_size"]),
            int(group[0]["modulation_order"]),
            float(group[0]["code_rate"]),
            tuple(snrs),
            tuple(counts[mcs][s][2] for s in snrs),
            tuple(counts[mcs][s][3] for s in snrs),
        )
    return curves


def clopper_pearson(errors: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a BLER of `errors` lost TBs in `n`."""
    from scipy import stats

    a = (1 - level) / 2
    low = 0.0 if errors == 0 else float(stats.beta.ppf(a, errors, n - errors + 1))
    high = 1.0 if errors == n else float(stats.beta.ppf(1 - a, errors + 1, n - errors))
    return low, high


def slots_to_certify(target: float, level: float = 0.95) -> int:
    """The slots a point needs, none of them lost, for the upper end of its Clopper-Pearson interval to reach
    `target`: 1 - ((1 - level) / 2)^(1/n) <= target (36,887 for 1e-4)."""
    if not 0.0 < target < 1.0:
        raise UserError(f"target {target} is outside (0, 1)")
    return math.ceil(math.log((1.0 - level) / 2.0) / math.log1p(-target))


def choose_mcs(
    curves: dict[int, BlerCurve],
    snr_db: float,
    rule: str = MCS_RULE,
    target_bler: float = TARGET_BLER,
    max_retx: int = HARQ_MAX_RETX,
    residual_read: str | None = None,
) -> BlerCurve:
    """Link adaptation at average Es/N0 `snr_db`. target: the highest MCS whose BLER <= target_bler (the
    lowest MCS when none meets it: the link is then in outage); goodput: the highest TB bits x (1 - BLER);
    reliable: as target, among the MCSs whose residual loss after max_retx retransmissions, read as
    `residual_read` says (RESIDUAL_READS; None: RESIDUAL_READ), is at most RESIDUAL_TARGET too."""
    if rule not in MCS_RULES:
        raise UserError(f"MCS rule {rule!r}: use one of {', '.join(MCS_RULES)}")
    residual_read = RESIDUAL_READ if residual_read is None else residual_read
    if residual_read not in RESIDUAL_READS:
        raise UserError(f"residual read {residual_read!r}: use one of {', '.join(RESIDUAL_READS)}")
    residual = residual_bound if residual_read == "bound" else failed_all
    if not 0.0 < target_bler < 1.0:
        raise UserError(f"target BLER {target_bler} is outside (0, 1)")
    ordered = sorted(curves.values(), key=lambda c: c.tb_size)
    if rule == "goodput":
        return max(ordered, key=lambda c: c.tb_size * (1.0 - c(snr_db)))
    meeting = [
        c
        for c in ordered
        if c(snr_db) <= target_bler and (rule == "target" or residual(c, snr_db, max_retx + 1) <= RESIDUAL_TARGET)
    ]
    return meeting[-1] if meeting else ordered[0]


def residual_bound(curve: BlerCurve, snr_db: float, transmissions: int = HARQ_MAX_RETX + 1) -> float:
    """failed_all's value as the data bound it (BlerCurve.upper_bound at the combined SNR)."""
    return curve.upper_bound(snr_db + 10.0 * math.log10(transmissions))


def failed_all(curve: BlerCurve, snr_db: float, transmissions: int) -> float:
    """P(all `transmissions` of a TB fail): chase combining in a fade that stays put over the rounds,
    i.e. one transmission at `transmissions` x the SNR."""
    return curve(snr_db + 10.0 * math.log10(transmissions))


@dataclass(frozen=True)
class OperatingPoint:
    """The NR link at one average Es/N0: its MCS, TB, BLERs, HARQ and rate."""

    snr_db: float
    mcs: int
    tb_size: int  # information bits per TB (one TB per slot), CRCs excluded
    bler: float  # first-transmission BLER
    residual: float  # P(a TB is still lost after 1 + max_retx transmissions): its elements are zero-filled
    transmissions: float  # expected transmissions per TB
    retx_needed: tuple[float, ...]  # q_r = P(the first r transmissions all fail), r = 1..max_retx
    frame: Frame  # which slots carry uplink (nr_frame.py)

    @property
    def goodput_bps(self) -> float:
        """Delivered bits per second of the frame: a TB's bits, less its residual loss, per its expected
        transmissions, in the U slots only."""
        return self.tb_size * (1.0 - self.residual) * self.frame.uplink_share / (self.transmissions * SLOT_S)

    @property
    def coherence_tbs(self) -> int:
        """TBs sent within one coherence time (channel.COHERENCE_S, the pedestrian's at this carrier) at the
        frame's pace: they share a fade (--link nr_burst)."""
        return max(1, math.floor(COHERENCE_S * self.frame.uplink_share / (self.transmissions * SLOT_S)))

    def tbs(self, bits: int) -> int:
        return math.ceil(bits / self.tb_size) if bits > 0 else 0

    def air_s(self, n_tb: int) -> float:
        """Expected seconds to deliver n_tb TBs: one U slot per transmission (HARQ processes keep every U slot
        busy), plus the U slots left idle by the round trips of the last retransmissions, which nothing else
        can fill (a TB needing r + 1 transmissions ends (gap - 1) x r U slots later than its last slot would
        otherwise, gap the frame's retransmission gap in U slots); then placed on the frame: the wait for
        the first U slot and the other slots between U slots count (nr_frame.Frame.slots_to_send)."""
        if n_tb == 0:
            return 0.0
        tail = sum(1.0 - (1.0 - q) ** n_tb for q in self.retx_needed)
        uplink_slots = n_tb * self.transmissions + (self.frame.retransmission_gap() - 1) * tail
        return SLOT_S * self.frame.slots_to_send(uplink_slots)


def operating_point(
    snr_db: float,
    rule: str | None = None,
    target_bler: float | None = None,
    max_retx: int | None = None,
    table: str | Path | None = None,
    frame_name: str | None = None,
) -> OperatingPoint:
    """The NR link at average Es/N0 `snr_db`, from the BLER table, on the frame `frame_name` (nr_frame.py);
    None takes the module's constant as it is at the call (a script's --mcs-rule sets MCS_RULE, its
    --nr-frame nr_frame.FRAME, its --residual-read RESIDUAL_READ)."""
    if table is None and os.environ.get(TABLE_ENV):  # the table the variable names: a bad one is named by it
        check_environment()
    return _operating_point(
        float(snr_db),
        MCS_RULE if rule is None else rule,
        TARGET_BLER if target_bler is None else target_bler,
        HARQ_MAX_RETX if max_retx is None else max_retx,
        str(BLER_TABLE if table is None else table),
        RESIDUAL_TARGET,
        frame(frame_name),
        RESIDUAL_READ,
    )


@functools.lru_cache(maxsize=4096)
def _operating_point(
    snr_db: float,
    rule: str,
    target_bler: float,
    max_retx: int,
    table: str,
    residual_target: float,
    frame: Frame,
    residual_read: str,
) -> OperatingPoint:  # residual_target: in the key, read by choose_mcs
    if isinstance(max_retx, bool) or int(max_retx) != max_retx or max_retx < 0:
        raise UserError(f"HARQ retransmissions {max_retx!r}: give an integer >= 0")
    curve = choose_mcs(load_table(table), snr_db, rule, target_bler, max_retx, residual_read)
    return point_at(curve, snr_db, max_retx, frame)


def point_at(curve: BlerCurve, snr_db: float, max_retx: int, frame: Frame) -> OperatingPoint:
    """The NR link at average Es/N0 `snr_db` with the MCS of `curve`, whatever link adaptation would pick."""
    q = tuple(failed_all(curve, snr_db, r) for r in range(1, max_retx + 1))
    return OperatingPoint(
        float(snr_db),
        curve.mcs,
        curve.tb_size,
        q[0] if q else curve(snr_db),
        failed_all(curve, snr_db, max_retx + 1),
        1.0 + sum(q),
        q,
        frame,
    )


def elements_per_tb(point: OperatingPoint, bits_per_element: int) -> int:
    """Activation elements per TB: whole elements (an element never straddles two TBs; the rest is padding)."""
    if bits_per_element > point.tb_size:
        raise UserError(f"{bits_per_element}-bit elements do not fit a TB of {point.tb_size} bits")
    return point.tb_size // bits_per_element


def transfer(snr_db: float, elements: int, bits_per_element: int) -> tuple[float, float]:
    """(expected bits on air, expected seconds on air) to send `elements` activations over the NR link:
    whole TBs, every HARQ transmission counted."""
    point = operating_point(snr_db)
    n_tb = math.ceil(elements / elements_per_tb(point, bits_per_element)) if elements else 0
    return n_tb * point.tb_size * point.transmissions, point.air_s(n_tb)


def tx_latency_s(snr_db: float, tokens: int, hidden_size: int, bits_per_element: int, withheld: float = 0.0) -> float:
    """Seconds on air for tokens x hidden_size activations, less the share withheld (as channel.tx_latency_s)."""
    return transfer(snr_db, math.ceil(tokens * hidden_size * (1.0 - withheld)), bits_per_element)[1]


if __name__ == "__main__":  # python -m layersplit.nr: the command line is nr_cli's
    from .nr_cli import main

    sys.exit(main())
