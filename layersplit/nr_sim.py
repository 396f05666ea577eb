"""The Monte Carlo that measures the 5G NR link's BLER table, with Sionna (nr.py reads the table).

Simulator is Sionna's PUSCH link for one MCS (PUSCHTransmitter, a TR 38.901 TDL channel on the OFDM
grid or AWGN, PUSCHReceiver), set up by nr.py's constants. simulate_point runs seeded batches of slots
at one average Es/N0 until enough TBs are lost; measure_table walks each MCS's curve upwards and appends
a row per point (table_row: the BLER and its 95% Clopper-Pearson interval) as it is done, so an
interrupted run resumes (`python -m layersplit.nr --table results/nr_bler.csv`, nr_cli.py). check
simulates (MCS, Es/N0) cases afresh and sets each beside the table (`python -m layersplit.nr --check`).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from . import UserError
from .channel_cli import format_row
from .nr import (
    BLER_TABLE,
    CARRIER_FREQUENCY_HZ,
    CHANNEL,
    CHANNELS,
    DELAY_SPREAD_S,
    DMRS_ADDITIONAL_POSITION,
    MCS_TABLE,
    NUM_PRBS,
    OFDM_SYMBOLS,
    RECEIVER,
    RECEIVERS,
    SUBCARRIER_SPACING_KHZ,
    TABLE_COLUMNS,
    TDL_PROFILE,
    UE_SPEED_MPS,
    clopper_pearson,
    load_table,
    point_counts,
    read_table,
)

# ---- the table's Monte Carlo -------------------------------------------------------------------
TABLE_SNR_DB = tuple(float(s) for s in range(-8, 41, 2))  # Es/N0 grid, 2 dB steps (the fading curves span ~12 dB)
TABLE_BATCH = 32  # slots simulated per Sionna call
TABLE_MAX_SLOTS = 192  # slots per point at most (a BLER of 0/192: the 95% upper bound is 1.9%)
TABLE_MIN_ERRORS = 50  # a point stops once this many TBs are lost (its interval is then tight enough)
TABLE_SEED = (
    0  # each (MCS, SNR) point draws from its own seeds: point_seed(seed, mcs, snr) + the slots before each batch
)
# ---- the tails: points measured deeper where HARQ's residuals are read (--tails) -------------------------------
# The table's points stop at 192 slots, so it resolves no BLER below about 0.019, while a residual after HARQ is the
# curve at the SNR + 6 dB (4 transmissions), past each curve's last lost TB. These are the points that the
# residuals the docs quote rest on: MCS 7 at 16 dB (the 10 dB operating point's), MCS 20 at 26 dB (20 dB's, the
# relapse of the target rule) and MCS 28 at 40 dB (its floor, read from 34 dB up).
TAIL_POINTS = ((7, 16.0), (20, 26.0), (28, 40.0))
TAIL_MAX_SLOTS = 2000  # slots per point at most (none lost: a 95% upper bound of 0.0018)
TAIL_SEED_OFFSET = 2  # the tails draw from seed + 2: independent of the table's points (seed) and --check's (seed + 1)
# The points the reliable rule's bound reads where the coded protected path runs (--points reliable): at each of
# these SNRs (the protect sweeps') the MCS the rule picks from the extrapolated curve, at the SNR + 6.02 dB of its
# 4 transmissions rounded down to 0.5 dB, the lowest per MCS (a loss-free point bounds every SNR above it). To
# certify RESIDUAL_TARGET each needs nr.slots_to_certify(RESIDUAL_TARGET) = 36,887 slots with none lost: with
# EARLY_STOP under an hour a point on these CPUs (results/early_stop.json), or a GPU (bench/gpu.sh's last step).
RELIABLE_SNR_DB = (5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0)
TAIL_CHUNK_SLOTS = 2048  # a row per this many slots of a point: an interrupted deep point keeps what it has done

# Stop decoding each LDPC code block once it meets its parity checks (Sionna's belief propagation runs all 20
# iterations on every block, ~97% of a slot's time on a CPU). Further iterations rarely move a valid code word: the
# TBs lost are the same slot by slot wherever compared (tests/test_nr.py, bench/early_stop.py), in a fraction of
# the time at the SNRs the deep tails are measured at. False: Sionna's decoder as it is.
EARLY_STOP = True

# where Sionna runs the link (--device): the committed tables are the CPU's; a GPU draws from its own random
# streams (other numbers at the same seed, the same statistics) and runs the large batches deep tails need
TABLE_DEVICE = "cpu"


# ---- Sionna's PUSCH configuration (nr.py's grid and MCS table) --------------------------------
def _pusch_config(mcs: int):
    from sionna.phy.nr import PUSCHConfig

    cfg = PUSCHConfig()
    cfg.carrier.subcarrier_spacing = SUBCARRIER_SPACING_KHZ
    cfg.carrier.n_size_grid = NUM_PRBS
    cfg.dmrs.additional_position = DMRS_ADDITIONAL_POSITION
    cfg.symbol_allocation = [0, OFDM_SYMBOLS]  # from the slot's first symbol
    cfg.tb.mcs_table = MCS_TABLE
    cfg.tb.mcs_index = mcs
    return cfg


# ---- the Monte Carlo (direct simulation) --------------------------------------------------------
def point_seed(seed: int, mcs: int, snr_db: float) -> int:
    return int(np.random.SeedSequence([int(seed), int(mcs), int(round(snr_db * 10)) + 1000]).generate_state(1)[0])


class Simulator:
    """Sionna's PUSCH link for one MCS: transmitter, channel, receiver; `errors(snr_db, slots)`."""

    def __init__(
        self,
        mcs: int,
        channel: str = CHANNEL,
        receiver: str = RECEIVER,
        device: str = TABLE_DEVICE,
        early_stop: bool = EARLY_STOP,
    ):
        if mcs not in range(29):
            raise UserError(f"MCS {mcs}: Table 5.1.3.1-1 has indices 0-28")
        if channel not in CHANNELS or receiver not in RECEIVERS:
            raise UserError(f"channel must be one of {CHANNELS} and receiver one of {RECEIVERS}")
        from sionna.phy.channel import AWGN, OFDMChannel
        from sionna.phy.channel.tr38901 import TDL
        from sionna.phy.nr import PUSCHReceiver, PUSCHTransmitter

        self.cfg, self.device = _pusch_config(mcs), str(device)
        try:
            self.tx = PUSCHTransmitter(self.cfg, return_bits=True, device=self.device)
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
                device=self.device,
            )
            self.air = OFDMChannel(
                tdl,
                self.tx.resource_grid,
                add_awgn=True,
                normalize_channel=False,
                return_channel=True,
                device=self.device,
            )
        else:
            self.air = AWGN(device=self.device)
        self.rx = PUSCHReceiver(
            self.tx,
            channel_estimator="perfect" if receiver == "perfect" else None,
            return_tb_crc_status=True,
            device=self.device,
        )
        self.iterations = 0  # belief-propagation iterations run, summed over the code words decoded so far
        self._stop_early(self.rx._tb_decoder._decoder, early_stop)

    def _stop_early(self, decoder, early_stop: bool) -> None:
        """Wrap the LDPC decoder's iteration: count it per code word, and (`early_stop`) iterate only the code
        words whose hard decisions do not yet meet every parity check (syndrome not 0): the others keep theirs."""
        import torch

        iterate = decoder._bp_iter
        cn = torch.as_tensor(np.asarray(decoder._cn_idx), dtype=torch.long, device=self.device)
        vn = torch.as_tensor(np.asarray(decoder._vn_idx), dtype=torch.long, device=self.device)
        checks = int(cn.max()) + 1
        state = {}

        def valid(x_hat):  # each code word's syndrome is 0 (bits as the decoder's hard output: LLR <= 0 is a 1)
            bits = (x_hat <= 0).to(torch.int32)[:, vn]
            syndrome = torch.zeros(bits.shape[0], checks, dtype=torch.int32, device=bits.device)
            return ~syndrome.index_add_(1, cn, bits).remainder_(2).bool().any(dim=1)

        def step(msg_v2c, msg_c2v, llr_ch, x_hat, it):
            if it == 0:
                state["done"] = torch.zeros(x_hat.shape[0], dtype=torch.bool, device=x_hat.device)
            active = (~state["done"]).nonzero().squeeze(1)
            if len(active) == len(x_hat):
                msg_v2c, msg_c2v, x_hat = iterate(msg_v2c, msg_c2v, llr_ch, x_hat, it)
            elif len(active):
                v2c, c2v, hard = iterate(msg_v2c[active], msg_c2v[active], llr_ch[active], x_hat[active], it)
                msg_v2c, msg_c2v, x_hat = msg_v2c.clone(), msg_c2v.clone(), x_hat.clone()
                msg_v2c[active], msg_c2v[active], x_hat[active] = v2c, c2v, hard
            self.iterations += len(active)
            if early_stop:
                state["done"] = valid(x_hat)
            return msg_v2c, msg_c2v, x_hat

        decoder._bp_iter = step

    @property
    def tb_size(self) -> int:
        return int(self.cfg.tb_size)

    def errors(self, snr_db: float, slots: int, seed: int) -> int:
        """TBs lost (CRC failed) out of `slots` first transmissions at average Es/N0 `snr_db`."""
        return int(self.lost(snr_db, slots, seed).sum())

    def lost(self, snr_db: float, slots: int, seed: int):
        """Whether each of `slots` first transmissions at average Es/N0 `snr_db` lost its TB (CRC failed)."""
        import sionna.phy
        import torch

        sionna.phy.config.seed = seed
        no = torch.tensor(10.0 ** (-snr_db / 10.0), device=self.device)
        with torch.no_grad():
            x, _ = self.tx(slots)
            if self.channel == "tdl":
                y, h = self.air(x, no)
            else:
                y, h = self.air(x, no), None
            if self.receiver == "perfect":
                if h is None:  # AWGN: the channel is 1 on every resource element
                    h = torch.ones(y.shape[:2] + (1, 1, 1) + y.shape[3:], dtype=y.dtype, device=y.device)
                _, crc = self.rx(y, no, h)
            else:
                _, crc = self.rx(y, no)
        return ~crc.bool()


def simulate_point(
    sim: Simulator,
    snr_db: float,
    seed: int,
    max_slots: int = TABLE_MAX_SLOTS,
    min_errors: int = TABLE_MIN_ERRORS,
    batch: int = TABLE_BATCH,
    start: tuple[int, int] = (0, 0),
) -> tuple[int, int]:
    """(slots, errors) at one SNR: batches of `batch` slots, each from its own seed (the point's seed + the
    slots before it), until `min_errors` TBs are lost, `max_slots` are simulated, or a first batch is lost in
    full (the BLER is then ~1). `start`: the (slots, errors) of the point so far, which it continues."""
    slots, errors = start
    while slots < max_slots and errors < min_errors:
        n = min(batch, max_slots - slots)
        errors += sim.errors(snr_db, n, point_seed(seed, sim.mcs, snr_db) + slots)
        slots += n
        if errors == slots:
            break
    return slots, errors


def point_done(slots: int, errors: int, max_slots: int, min_errors: int) -> bool:
    """Whether simulate_point would stop here: enough slots or lost TBs, or every TB so far lost."""
    return slots >= max_slots or errors >= min_errors or (slots > 0 and errors == slots)


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
    device: str = TABLE_DEVICE,
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
                sim = Simulator(mcs, channel, receiver, device)
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


def reliable_points(curves: dict | None = None, snrs=RELIABLE_SNR_DB) -> list[tuple[int, float]]:
    """The (MCS, Es/N0) points the `reliable` rule's bound reads at `snrs` (see RELIABLE_SNR_DB), by MCS."""
    from .nr import HARQ_MAX_RETX, choose_mcs

    curves = load_table() if curves is None else curves
    gain = 10.0 * math.log10(HARQ_MAX_RETX + 1)
    lowest: dict[int, float] = {}
    for snr in snrs:
        mcs = choose_mcs(curves, snr, "reliable", residual_read="extrapolated").mcs
        read = math.floor((snr + gain) * 2.0) / 2.0  # at or below where the bound is read
        lowest[mcs] = min(lowest.get(mcs, math.inf), read)
    return sorted(lowest.items())


def measure_points(
    path: Path,
    cases,
    seed: int = TABLE_SEED + TAIL_SEED_OFFSET,
    channel: str = CHANNEL,
    receiver: str = RECEIVER,
    max_slots: int = TAIL_MAX_SLOTS,
    min_errors: int = TABLE_MIN_ERRORS,
    batch: int = TABLE_BATCH,
    progress: bool = True,
    device: str = TABLE_DEVICE,
    chunk: int = TAIL_CHUNK_SLOTS,
) -> int:
    """Measure each (MCS, Es/N0) point of `cases` to `max_slots` slots (or `min_errors` lost TBs) and append
    its rows to `path` (the table's format, so read_table reads it; load_table pools a point's rows): a row per
    `chunk` slots (rounded up to whole batches), each as it is done. A point resumes where its rows stop, from
    the seeds it would have drawn next, so an interrupted run, or one asked for more slots, ends with the counts
    of a straight one. Returns the number of points simulated."""
    from tqdm.auto import tqdm

    path = Path(path)
    rows = read_table(path, allow_empty=True, repeats=True) if path.exists() else []
    for row in rows:
        if (row["channel"], row["receiver"], int(row["seed"])) != (channel, receiver, seed):
            raise UserError(f"{path} holds points of another set-up; write to a new file")
    so_far = {point: (slots, errors) for point, (errors, slots) in point_counts(rows).items()}
    chunk = -(-chunk // batch) * batch  # whole batches: a chunked run draws the seeds of a straight one
    todo = [c for c in dict.fromkeys(cases) if not point_done(*so_far.get(c, (0, 0)), max_slots, min_errors)]
    new = not path.exists() or path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        path.open("a", newline="") as f,
        tqdm(
            total=sum(max_slots - so_far.get(c, (0, 0))[0] for c in todo),
            desc="BLER tails",
            unit="slot",
            disable=not progress,
        ) as bar,
    ):
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        if new:
            writer.writeheader()
        for mcs, snr in todo:
            sim = Simulator(mcs, channel, receiver, device)
            slots, errors = so_far.get((mcs, snr), (0, 0))
            while not point_done(slots, errors, max_slots, min_errors):
                more = simulate_point(sim, snr, seed, min(max_slots, slots + chunk), min_errors, batch, (slots, errors))
                writer.writerow(format_row(table_row(sim, snr, more[0] - slots, more[1] - errors, seed)))
                f.flush()
                bar.update(more[0] - slots)
                slots, errors = more
    return len(todo)


# ---- the table checked against fresh simulations (--check) -------------------------------------
def check(
    cases: list[tuple[int, float]],
    slots: int,
    seed: int,
    table: str | Path = BLER_TABLE,
    channel: str = CHANNEL,
    receiver: str = RECEIVER,
    device: str = TABLE_DEVICE,
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
        sim = Simulator(mcs, channel, receiver, device)
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
