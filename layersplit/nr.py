"""The 5G NR coded uplink (--link nr): transport blocks, LDPC, MCS, a TDL channel and HARQ, from Sionna.

The activation's bits fill 5G NR transport blocks (TBs): one TB per slot over the whole allocation, its
size from TS 38.214 5.1.3.2 for the MCS (Table 5.1.3.1-1), with TB and code-block CRCs and LDPC coding
(Sionna's PUSCHTransmitter). Each TB crosses a TR 38.901 TDL channel on an OFDM grid and is decoded
by Sionna's PUSCHReceiver (LS channel estimation or perfect CSI, LMMSE detection). A TB whose CRC
fails is retransmitted (HARQ) up to HARQ_MAX_RETX times; one still lost then loses its elements
(zero-filled at the edge, as erasure loses a packet).

Per-TB link simulation is far too slow for a sweep, so the BLER of each MCS against the average SNR is
measured once by seeded Monte Carlo (`python -m layersplit.nr --table results/nr_bler.csv`, with 95%
Clopper-Pearson intervals) and the link reads that table:
- link adaptation: the highest MCS whose first-transmission BLER at the SNR is <= TARGET_BLER
  (MCS_RULE "target"), or the MCS of the highest goodput TB bits x (1 - BLER) (MCS_RULE "goodput");
- HARQ, chase combining on a channel that stays put over the rounds (UE_SPEED_MPS makes the coherence
  time, ~40 ms, 20x the HARQ round trip): r transmissions of a TB are r copies in the same fade, i.e. one
  transmission at r times the SNR, so P(all r fail) = BLER(snr_db + 10 log10 r);
- rate and loss from the same link: the goodput is the TB bits per slot x (1 - BLER), the air time
  counts every transmission and the HARQ round trips of the last TBs, and the residual loss of a TB
  is P(all HARQ_MAX_RETX + 1 transmissions fail).
The table is read through one reader, read_table, which refuses (UserError, file:line) a folder, a file
that is not UTF-8 CSV with the columns READ_COLUMNS, a number that is not finite or out of range (BLER and
its interval in [0, 1], the BLER inside its interval, MCS 0-28, counts whole, errors <= slots) and a second
row of one (MCS, SNR); load_table, check() and measure_table's resume all use it. LAYERSPLIT_NR_BLER_TABLE
names another table; check_environment() refuses a set but bad one naming the variable, before any work.
links.NrLink is this link behind the one Link interface; its latency table is compute.latency_table's.
SNR convention, as in channel.py: `snr_db` is the average received SNR per resource element, Es/N0,
E|h|^2 = 1 over the TDL's realisations (the channel is not normalised per slot).

CLI:
    python -m layersplit.nr --snr-db 10                       # MCS, BLER, goodput, latency at 10 dB
    python -m layersplit.nr --table results/nr_bler.csv       # the Monte Carlo BLER table (resumable)
    python -m layersplit.nr --check 14:10 --max-slots 64      # simulate MCS 14 at 10 dB afresh vs the table
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import UserError, cli, shipped_file
from .channel import format_row

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
HARQ_MAX_RETX = 3  # retransmissions after the first: 4 transmissions in all, a common configuration
HARQ_RTT_SLOTS = 4  # slots from a transmission to its retransmission (decode, feedback, new grant)
TAIL_SLOPE_DB = -1.0  # decades of BLER per dB past a curve's last lost TB when it has only one point
# with losses (otherwise the slope of its last two: a fading channel's BLER falls as a power of the SNR)

# ---- the table's Monte Carlo -------------------------------------------------------------------
# the table the link reads: the committed one, or the file LAYERSPLIT_NR_BLER_TABLE names (a recomputed table;
# empty: unset); scripts check it before any work with check_environment()
TABLE_ENV = "LAYERSPLIT_NR_BLER_TABLE"
BLER_TABLE = Path(os.environ.get(TABLE_ENV) or shipped_file("nr_bler.csv"))
TABLE_SNR_DB = tuple(float(s) for s in range(-8, 41, 2))  # Es/N0 grid, 2 dB steps (the fading curves span ~12 dB)
TABLE_BATCH = 32  # slots simulated per Sionna call
TABLE_MAX_SLOTS = 192  # slots per point at most (a BLER of 0/192: the 95% upper bound is 1.9%)
TABLE_MIN_ERRORS = 50  # a point stops once this many TBs are lost (its interval is then tight enough)
TABLE_SEED = (
    0  # each (MCS, SNR) point draws from its own seeds: point_seed(seed, mcs, snr) + the slots before each batch
)
TABLE_COLUMNS = (
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
def _pusch_config(mcs: int):
    from sionna.phy.nr import PUSCHConfig

    cfg = PUSCHConfig()
    cfg.carrier.subcarrier_spacing = SUBCARRIER_SPACING_KHZ
    cfg.carrier.n_size_grid = NUM_PRBS
    cfg.dmrs.additional_position = DMRS_ADDITIONAL_POSITION
    cfg.tb.mcs_table = MCS_TABLE
    cfg.tb.mcs_index = mcs
    return cfg


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


# ---- the Monte Carlo (direct simulation) --------------------------------------------------------
def point_seed(seed: int, mcs: int, snr_db: float) -> int:
    return int(np.random.SeedSequence([int(seed), int(mcs), int(round(snr_db * 10)) + 1000]).generate_state(1)[0])


class Simulator:
    """Sionna's PUSCH link for one MCS: transmitter, channel, receiver; `errors(snr_db, slots)`."""

    def __init__(self, mcs: int, channel: str = CHANNEL, receiver: str = RECEIVER):
        if mcs not in range(29):
            raise UserError(f"MCS {mcs}: Table 5.1.3.1-1 has indices 0-28")
        if channel not in CHANNELS or receiver not in RECEIVERS:
            raise UserError(f"channel must be one of {CHANNELS} and receiver one of {RECEIVERS}")
        from sionna.phy.channel import AWGN, OFDMChannel
        from sionna.phy.channel.tr38901 import TDL
        from sionna.phy.nr import PUSCHReceiver, PUSCHTransmitter

        self.cfg = _pusch_config(mcs)
        try:
            self.tx = PUSCHTransmitter(self.cfg, return_bits=True)
        except ValueError as e:  # the LDPC encoder refuses code rates below 1/5
            raise UserError(f"MCS {mcs}: {e}") from e
        self.mcs, self.channel, self.receiver = mcs, channel, receiver
        if channel == "tdl":
            tdl = TDL(
                TDL_PROFILE,
                delay_spread=DELAY_SPREAD_S,
                carrier_frequency=CARRIER_FREQUENCY_HZ,
                min_speed=UE_SPEED_MPS,
                max_speed=UE_SPEED_MPS,
                device="cpu",
            )
            self.air = OFDMChannel(
                tdl, self.tx.resource_grid, add_awgn=True, normalize_channel=False, return_channel=True, device="cpu"
            )
        else:
            self.air = AWGN(device="cpu")
        self.rx = PUSCHReceiver(
            self.tx,
            channel_estimator="perfect" if receiver == "perfect" else None,
            return_tb_crc_status=True,
            device="cpu",
        )

    @property
    def tb_size(self) -> int:
        return int(self.cfg.tb_size)

    def errors(self, snr_db: float, slots: int, seed: int) -> int:
        """TBs lost (CRC failed) out of `slots` first transmissions at average Es/N0 `snr_db`."""
        import sionna.phy
        import torch

        sionna.phy.config.seed = seed
        no = torch.tensor(10.0 ** (-snr_db / 10.0))
        with torch.no_grad():
            x, _ = self.tx(slots)
            if self.channel == "tdl":
                y, h = self.air(x, no)
            else:
                y, h = self.air(x, no), None
            if self.receiver == "perfect":
                if h is None:  # AWGN: the channel is 1 on every resource element
                    h = torch.ones(y.shape[:2] + (1, 1, 1) + y.shape[3:], dtype=y.dtype)
                _, crc = self.rx(y, no, h)
            else:
                _, crc = self.rx(y, no)
        return int((~crc.bool()).sum())


def clopper_pearson(errors: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy import stats

    a = (1 - level) / 2
    low = 0.0 if errors == 0 else float(stats.beta.ppf(a, errors, n - errors + 1))
    high = 1.0 if errors == n else float(stats.beta.ppf(1 - a, errors + 1, n - errors))
    return low, high


def simulate_point(
    sim: Simulator,
    snr_db: float,
    seed: int,
    max_slots: int = TABLE_MAX_SLOTS,
    min_errors: int = TABLE_MIN_ERRORS,
    batch: int = TABLE_BATCH,
) -> tuple[int, int]:
    """(slots, errors) at one SNR: batches of `batch` slots, each from its own seed, until `min_errors`
    TBs are lost, `max_slots` are simulated, or a first batch is lost in full (the BLER is then ~1)."""
    slots = errors = 0
    while slots < max_slots and errors < min_errors:
        n = min(batch, max_slots - slots)
        errors += sim.errors(snr_db, n, point_seed(seed, sim.mcs, snr_db) + slots)
        slots += n
        if errors == slots:
            break
    return slots, errors


def table_row(sim: Simulator, snr_db: float, slots: int, errors: int, seed: int) -> dict:
    low, high = clopper_pearson(errors, slots)
    tb = sim.cfg.tb
    return {
        "mcs": sim.mcs,
        "modulation_order": int(tb.num_bits_per_symbol),
        "code_rate": float(tb.target_coderate),
        "tb_size": sim.tb_size,
        "num_cb": sim.tx._tb_encoder.num_cbs,
        "snr_db": snr_db,
        "slots": slots,
        "errors": errors,
        "bler": errors / slots,
        "bler_low": low,
        "bler_high": high,
        "channel": sim.channel,
        "tdl_profile": TDL_PROFILE if sim.channel == "tdl" else "",
        "delay_spread_s": DELAY_SPREAD_S if sim.channel == "tdl" else "",
        "ue_speed_mps": UE_SPEED_MPS if sim.channel == "tdl" else "",
        "receiver": sim.receiver,
        "num_prbs": NUM_PRBS,
        "subcarrier_spacing_khz": SUBCARRIER_SPACING_KHZ,
        "seed": seed,
    }


def measure_table(
    path: Path,
    mcs_list,
    snr_list,
    seed: int = TABLE_SEED,
    channel: str = CHANNEL,
    receiver: str = RECEIVER,
    max_slots: int = TABLE_MAX_SLOTS,
    min_errors: int = TABLE_MIN_ERRORS,
    batch: int = TABLE_BATCH,
    progress: bool = True,
) -> int:
    """Measure BLER against SNR for each MCS and append the rows to `path` as each point is done, so an
    interrupted run resumes. Per MCS the SNRs are walked upwards: a point lost in full starts the curve,
    the first point with no TB lost ends it (higher SNRs are not simulated: BlerCurve extends the curve).
    Returns the number of points simulated."""
    from tqdm.auto import tqdm

    path = Path(path)
    done = {}
    if path.exists():  # read (and checked) before anything is appended: another file is never changed
        for row in read_table(path, allow_empty=True):
            if (row["channel"], row["receiver"], int(row["seed"])) != (channel, receiver, seed):
                raise UserError(f"{path} holds a table of another set-up; write to a new file")
            done.setdefault(int(row["mcs"]), []).append((float(row["snr_db"]), int(row["errors"]), int(row["slots"])))
    new = not path.exists() or path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    simulated = 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        if new:
            writer.writeheader()
        floor = -math.inf  # higher MCSs need more SNR: each curve starts at the last SNR the previous lost in full
        for mcs in tqdm(mcs_list, desc="BLER table", unit="MCS", disable=not progress):
            points = sorted(done.get(mcs, []))
            if not (points and points[-1][1] == 0):  # else this MCS's curve is complete
                sim = Simulator(mcs, channel, receiver)
                start = points[-1][0] if points else -math.inf
                for snr in snr_list:
                    if snr <= start or snr < floor:
                        continue
                    slots, errors = simulate_point(sim, snr, seed, max_slots, min_errors, batch)
                    points.append((snr, errors, slots))
                    writer.writerow(format_row(table_row(sim, snr, slots, errors, seed)))
                    f.flush()
                    simulated += 1
                    if errors == 0:
                        break
            lost_in_full = [snr for snr, errors, slots in points if errors == slots]
            floor = max(floor, max(lost_in_full, default=floor))
    return simulated


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
        the SNR), or a steeper one where that would pass above the upper end of the interval of the point
        with no TB lost that ends the curve (a steep waterfall, as on AWGN)."""
        lossy = [(s, b) for s, b in zip(self.snr_db, self.bler) if b > 0]
        if not lossy or snr_db <= self.snr_db[0]:
            return float(self.bler[0])
        x, logs = np.array([s for s, _ in lossy]), np.log10([b for _, b in lossy])
        if snr_db <= x[-1]:
            return float(10.0 ** np.interp(snr_db, x, logs))
        slope = min((logs[-1] - logs[-2]) / (x[-1] - x[-2]) if len(x) > 1 else TAIL_SLOPE_DB, 0.0)
        ends = [(s, h) for s, b, h in zip(self.snr_db, self.bler, self.bler_high) if b == 0 and s > x[-1]]
        if ends:  # the line must pass under the loss-free point's upper end
            slope = min(slope, (math.log10(ends[0][1]) - logs[-1]) / (ends[0][0] - x[-1]))
        return float(10.0 ** (logs[-1] + slope * (snr_db - x[-1])))


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


def read_table(path: str | Path, allow_empty: bool = False) -> list[dict]:
    """The rows of a BLER table (measure_table's format), each checked: the columns present, numbers finite
    and in range (BLER and its interval in [0, 1], MCS and counts whole), one row per (MCS, SNR).
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
                if key in seen:
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


@functools.lru_cache(maxsize=8)
def load_table(path: str | Path = BLER_TABLE) -> dict[int, BlerCurve]:
    """The BLER curves of a table written by measure_table, by MCS (read_table checks every row)."""
    path = Path(path)
    rows: dict[int, list[dict]] = {}
    for row in read_table(path):
        rows.setdefault(int(row["mcs"]), []).append(row)
    curves = {}
    top = max(float(r["snr_db"]) for group in rows.values() for r in group)
    for mcs, group in sorted(rows.items()):
        group.sort(key=lambda r: float(r["snr_db"]))
        if int(group[-1]["errors"]) and float(group[-1]["snr_db"]) < top:
            raise UserError(
                f"{path}: the curve of MCS {mcs} stops at {group[-1]['snr_db']} dB with TBs still lost "
                f"(an interrupted run?): resume it with python -m layersplit.nr --table {path}"
            )
        if len({r["tb_size"] for r in group}) > 1:
            raise UserError(f"{path}: the rows of MCS {mcs} give more than one TB size")
        curves[mcs] = BlerCurve(
            mcs,
            int(group[0]["tb_size"]),
            int(group[0]["modulation_order"]),
            float(group[0]["code_rate"]),
            tuple(float(r["snr_db"]) for r in group),
            tuple(float(r["bler"]) for r in group),
            tuple(float(r["bler_high"]) for r in group),
        )
    return curves


def choose_mcs(
    curves: dict[int, BlerCurve],
    snr_db: float,
    rule: str = MCS_RULE,
    target_bler: float = TARGET_BLER,
    max_retx: int = HARQ_MAX_RETX,
) -> BlerCurve:
    """Link adaptation at average Es/N0 `snr_db`. target: the highest MCS whose BLER <= target_bler (the
    lowest MCS when none meets it: the link is then in outage); goodput: the highest TB bits x (1 - BLER);
    reliable: as target, among the MCSs whose residual loss after max_retx retransmissions is at most
    RESIDUAL_TARGET too."""
    if rule not in MCS_RULES:
        raise UserError(f"MCS rule {rule!r}: use one of {', '.join(MCS_RULES)}")
    if not 0.0 < target_bler < 1.0:
        raise UserError(f"target BLER {target_bler} is outside (0, 1)")
    ordered = sorted(curves.values(), key=lambda c: c.tb_size)
    if rule == "goodput":
        return max(ordered, key=lambda c: c.tb_size * (1.0 - c(snr_db)))
    meeting = [
        c
        for c in ordered
        if c(snr_db) <= target_bler and (rule == "target" or failed_all(c, snr_db, max_retx + 1) <= RESIDUAL_TARGET)
    ]
    return meeting[-1] if meeting else ordered[0]


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
    goodput_bps: float  # TB bits x (1 - BLER) per slot

    def tbs(self, bits: int) -> int:
        return math.ceil(bits / self.tb_size) if bits > 0 else 0

    def air_s(self, n_tb: int) -> float:
        """Expected seconds to deliver n_tb TBs: one slot per transmission (HARQ processes keep every slot
        busy), plus the round trips of the last retransmissions, which nothing else can fill: a TB needing
        r + 1 transmissions ends (HARQ_RTT_SLOTS - 1) x r slots after its last slot would otherwise."""
        if n_tb == 0:
            return 0.0
        tail = sum(1.0 - (1.0 - q) ** n_tb for q in self.retx_needed)
        return SLOT_S * (n_tb * self.transmissions + (HARQ_RTT_SLOTS - 1) * tail)


def operating_point(
    snr_db: float,
    rule: str | None = None,
    target_bler: float | None = None,
    max_retx: int | None = None,
    table: str | Path | None = None,
) -> OperatingPoint:
    """The NR link at average Es/N0 `snr_db`, from the BLER table; None takes the module's constant as it
    is at the call (a script's --mcs-rule sets MCS_RULE)."""
    if table is None and os.environ.get(TABLE_ENV):  # the table the variable names: a bad one is named by it
        check_environment()
    return _operating_point(
        float(snr_db),
        MCS_RULE if rule is None else rule,
        TARGET_BLER if target_bler is None else target_bler,
        HARQ_MAX_RETX if max_retx is None else max_retx,
        str(BLER_TABLE if table is None else table),
        RESIDUAL_TARGET,
    )


@functools.lru_cache(maxsize=4096)
def _operating_point(
    snr_db: float, rule: str, target_bler: float, max_retx: int, table: str, residual_target: float
) -> OperatingPoint:  # residual_target: in the key, read by choose_mcs
    if isinstance(max_retx, bool) or int(max_retx) != max_retx or max_retx < 0:
        raise UserError(f"HARQ retransmissions {max_retx!r}: give an integer >= 0")
    curve = choose_mcs(load_table(table), snr_db, rule, target_bler, max_retx)
    q = tuple(failed_all(curve, snr_db, r) for r in range(1, max_retx + 1))
    return OperatingPoint(
        float(snr_db),
        curve.mcs,
        curve.tb_size,
        q[0] if q else curve(snr_db),
        failed_all(curve, snr_db, max_retx + 1),
        1.0 + sum(q),
        q,
        curve.tb_size * (1.0 - curve(snr_db)) / SLOT_S,
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


def check(
    cases: list[tuple[int, float]],
    slots: int,
    seed: int,
    table: str | Path = BLER_TABLE,
    channel: str = CHANNEL,
    receiver: str = RECEIVER,
) -> list[dict]:
    """Simulate (MCS, Es/N0) cases afresh, from `seed` (not the table's), and set each beside the table's
    curve: `agrees` when the fresh 95% interval meets the table's (at one of its points) or holds the
    table's interpolated value (between them)."""
    curves = load_table(table)
    measured = {
        (int(r["mcs"]), float(r["snr_db"])): (float(r["bler_low"]), float(r["bler_high"])) for r in read_table(table)
    }
    rows = []
    for mcs, snr in cases:
        if mcs not in curves:
            raise UserError(f"MCS {mcs} is not in {table}: it has {', '.join(map(str, curves))}")
        sim = Simulator(mcs, channel, receiver)
        n, errors = simulate_point(sim, snr, seed, max_slots=slots, min_errors=slots + 1)
        low, high = clopper_pearson(errors, n)
        table_low, table_high = measured.get((mcs, snr), (curves[mcs](snr),) * 2)
        rows.append(
            {
                "mcs": mcs,
                "snr_db": snr,
                "slots": n,
                "errors": errors,
                "bler": errors / n,
                "bler_low": low,
                "bler_high": high,
                "table_bler": curves[mcs](snr),
                "table_low": table_low,
                "table_high": table_high,
                "agrees": low <= table_high and table_low <= high,
            }
        )
    return rows


# ---- CLI ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import channel

    p = cli.parser(
        "The 5G NR coded uplink (Sionna): the link at one SNR, its BLER table, the table's check, its latency table.",
        prog="python -m layersplit.nr",
    )
    p.add_argument("--snr-db", type=cli.snr_db, default=channel.DEFAULT_SNR_DB, help="average received Es/N0 in dB")
    p.add_argument(
        "--tokens", type=cli.positive_int, default=channel.DEFAULT_TOKENS, help="prompt tokens sent at prefill"
    )
    p.add_argument(
        "--hidden-size", type=cli.positive_int, default=channel.DEFAULT_HIDDEN_SIZE, help="d_model of the split model"
    )
    p.add_argument(
        "--bits-per-element",
        type=cli.positive_int,
        default=channel.DEFAULT_BITS_PER_ELEMENT,
        help="bits per activation on the wire",
    )
    p.add_argument("--mcs-rule", choices=MCS_RULES, default=MCS_RULE, help="link adaptation rule")
    p.add_argument(
        "--target-bler",
        type=cli.finite_float,
        default=TARGET_BLER,
        help="first-transmission BLER target (--mcs-rule target)",
    )
    p.add_argument(
        "--harq-max-retx", type=cli.non_negative_int, default=HARQ_MAX_RETX, help="HARQ retransmissions at most"
    )
    p.add_argument("--bler-table", type=Path, default=BLER_TABLE, help="the BLER table the link reads")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    g = p.add_argument_group("the BLER table (Monte Carlo with Sionna)")
    g.add_argument(
        "--table",
        metavar="CSV",
        type=cli.writable_file,
        help="measure BLER against Es/N0 per MCS by Monte Carlo and append to CSV (resumes)",
    )
    g.add_argument(
        "--check",
        metavar="MCS:SNR,...",
        help="simulate these (MCS, Es/N0) cases afresh (seed --seed + 1) and compare with --bler-table",
    )
    g.add_argument(
        "--latency-table",
        metavar="CSV",
        type=cli.writable_file,
        help="write UE compute, air time and edge compute against the split over the NR link for "
        "SmolLM2-135M and Llama-2-7B (prefill of --tokens tokens and one decoding step)",
    )
    g.add_argument("--mcs", type=str, default=",".join(map(str, MCS_INDICES)), help="MCS indices of the table")
    g.add_argument(
        "--snrs", type=str, default=",".join(f"{s:g}" for s in TABLE_SNR_DB), help="Es/N0 grid of the table, dB"
    )
    g.add_argument("--channel", choices=CHANNELS, default=CHANNEL, help="TDL fading, or AWGN (the LDPC check)")
    g.add_argument("--receiver", choices=RECEIVERS, default=RECEIVER, help="LS channel estimation, or perfect CSI")
    g.add_argument(
        "--max-slots",
        type=cli.positive_int,
        default=TABLE_MAX_SLOTS,
        help="slots per point at most (--check: slots per case)",
    )
    g.add_argument("--min-errors", type=cli.positive_int, default=TABLE_MIN_ERRORS, help="lost TBs that end a point")
    g.add_argument("--batch", type=cli.positive_int, default=TABLE_BATCH, help="slots per Sionna call")
    g.add_argument("--seed", type=cli.seed, default=TABLE_SEED, help="seed of the Monte Carlo")
    return p


def main(argv: list[str] | None = None) -> int:
    import json

    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # bad lists are refused here, before any Monte Carlo starts
        mcs_list = cli.parse_floats(args.mcs, "--mcs")
        snr_list = cli.parse_snrs(args.snrs)
    except UserError as e:
        parser.error(str(e))
    if any(m != int(m) for m in mcs_list):
        parser.error(f"--mcs {args.mcs!r}: MCS indices are integers")
    mcs_list = [int(m) for m in mcs_list]
    try:
        cases = [(int(a), float(b)) for a, b in (c.split(":") for c in args.check.split(","))] if args.check else []
    except ValueError:
        parser.error(f"--check {cli.shown(args.check)}: give MCS:SNR pairs, e.g. 14:10,3:0")
    if any(not cli.SNR_DB_MIN <= snr <= cli.SNR_DB_MAX for _, snr in cases):  # NaN too
        parser.error(f"--check {cli.shown(args.check)}: SNRs must lie in {cli.SNR_DB_MIN:g}..{cli.SNR_DB_MAX:g} dB")

    if args.latency_table and args.bler_table != BLER_TABLE:  # the rows read the link's table, not the option
        parser.error(
            "--latency-table reads the table the link uses: set LAYERSPLIT_NR_BLER_TABLE instead of --bler-table"
        )

    def body() -> int:  # (cli.run_main has checked the table LAYERSPLIT_NR_BLER_TABLE names)
        if args.bler_table != BLER_TABLE:
            read_table(args.bler_table)  # a bad table is named before any Monte Carlo
        if args.table:
            start = time.time()
            n = measure_table(
                Path(args.table),
                mcs_list,
                snr_list,
                args.seed,
                args.channel,
                args.receiver,
                args.max_slots,
                args.min_errors,
                args.batch,
            )
            print(f"simulated {n} points into {args.table} in {time.time() - start:.0f} s")
        elif cases:
            rows = check(cases, args.max_slots, args.seed + 1, args.bler_table, args.channel, args.receiver)
            for r in rows:
                print(
                    json.dumps(r)
                    if args.json
                    else f"MCS {r['mcs']:2d} at {r['snr_db']:5.1f} dB: {r['errors']}/{r['slots']} lost, "
                    f"BLER {r['bler']:.3f} "
                    f"[{r['bler_low']:.3f}, {r['bler_high']:.3f}]; table {r['table_bler']:.3f} "
                    f"[{r['table_low']:.3f}, {r['table_high']:.3f}]: "
                    f"{'agrees' if r['agrees'] else 'OUTSIDE the interval'}"
                )
            return 0 if all(r["agrees"] for r in rows) else 1
        elif args.latency_table:  # compute.py's one latency table, over this link
            from . import channel, compute, links  # the CLI is the top of the graph: they build on this module

            link = links.NrLink(channel.LinkConfig(bits_per_element=args.bits_per_element))
            rows = compute.latency_table(list(channel.LATENCY_TABLE_SNR_DB), compute.TABLE_MODELS, args.tokens, link)
            channel.write_table(rows, args.latency_table)
            print(f"wrote {len(rows)} rows to {args.latency_table}")
        else:
            point = operating_point(args.snr_db, args.mcs_rule, args.target_bler, args.harq_max_retx, args.bler_table)
            k = elements_per_tb(point, args.bits_per_element)
            out = {
                "snr_db": args.snr_db,
                "mcs": point.mcs,
                "tb_size": point.tb_size,
                "bler": point.bler,
                "residual_tb_loss": point.residual,
                "transmissions_per_tb": point.transmissions,
                "goodput_bps": point.goodput_bps,
                "elements_per_tb": k,
                "tx_latency_prefill_s": point.air_s(math.ceil(args.tokens * args.hidden_size / k)),
                "tx_latency_decode_s": point.air_s(math.ceil(args.hidden_size / k)),
            }
            if args.json:
                print(json.dumps(out))
            else:
                for key, value in out.items():
                    print(f"{key:22s} {value:.4g}" if isinstance(value, float) else f"{key:22s} {value}")
        return 0

    return cli.run_main(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())
