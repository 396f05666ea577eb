"""How the protected path (--protect K) delivers in a block fade: uncoded ARQ with a retry cap and round trips,
against a coded path, as delivery within a deadline, mean and 95th-percentile latency and the loss at the cap.

The first latency model (channel.protected_tx_s, now the "counted" design) counts 1 / (1 - PER) transmissions a
packet: every retry a new fade, no round trip and no cap, so "those elements always arrive". A packet is far
shorter than the coherence time (about 40 ms at 3 km/h and 3.5 GHz), so its retries see the fade that lost it;
in a deep fade no number of retries gets it through. Five designs of the protected path of one transfer, its P
packets (the K pairs of each token in the uncoded link's packets, channel.protected_payload_bits) after the
ordinary ones:
- "counted": what the latency model counts: P / (1 - PER) packet times, nothing lost;
- "arq_independent": ARQ, a new fade every try, with the cap and the round trips below;
- "arq_block": ARQ in a block fade: |h|^2 ~ Gamma(m, 1/m) drawn once per packet and kept over its retries
  (packets independent, as the PER model has them);
- "nr_lowest": the pairs in 5G NR transport blocks at the table's lowest MCS, NR_MCS, with HARQ (nr.py) on FDD
  (a continuous uplink, as the uncoded link's), whatever link adaptation would pick: a robust coded path;
- "nr_reliable": the same at the MCS of nr.py's "reliable" rule (10% first-transmission BLER and a residual
  after HARQ of at most nr.RESIDUAL_TARGET): a faster coded path, as reliable as the BLER table's tails are.

ARQ is selective repeat in rounds: round 1 sends the P packets; each later round, a round trip (ARQ_RTT_S)
after the one before, resends those still lost; a packet lost on ARQ_MAX_TRIES tries loses its elements.
With s_k = P(a packet needs more than k tries) = E_h[q(h)^k], q(h) its loss in fade h (s_k = PER^k for
independent fades):
- E[tries per packet] = sum_{k < N} s_k; lost at the cap: s_N;
- the rounds R are the most tries any packet needs: P(R <= k) = (1 - s_k)^P for k < N;
- latency = packet time x all tries + (R - 1) x the round trip; the tries' total is taken at its mean
  (a sum over P independent packets), the rounds' count exactly;
- all delivered by the deadline D: every packet through within the k_D <= N rounds that fit, (1 - s_{k_D})^P.
NR's HARQ is the same with TBs for packets, its rounds at most HARQ_MAX_RETX + 1, q_k = P(the first k
transmissions all fail) from the BLER table, and the round trips' idle slots as nr.OperatingPoint.air_s has them.

Which design --protect K uses (PROTECT_PATH, --protect-path; protected_path gives its cost): "coded" (nr_reliable,
the default), "arq" (arq_block) or "counted". The pairs fill the design's packets (TBs) in order, token by token
and by increasing index within a token (serve.py's order); a packet (TB) that never arrives loses its pairs, which
then take what the ordinary path delivered (uplink.protected_arrived). Air time is the design's mean latency.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from scipy import special

from . import channel, nr, nr_frame

if TYPE_CHECKING:
    from .compute import ModelDims

ARQ_MAX_TRIES = 7  # tries a packet gets at most: IEEE 802.11's short retry limit, a common link layer's cap
ARQ_RTT_S = 2e-3  # from a try to its retry: NR's HARQ round trip on FDD (4 slots of 0.5 ms), the same radio
ARQ_DEADLINE_S = 0.05  # the protected path's budget after the ordinary packets: 50 ms, beside a prefill of 25-80 ms
NR_MCS = 3  # the coded path's MCS: the lowest of the BLER table, QPSK at rate 0.24
PERCENTILE = 0.95  # the latency percentile reported
DESIGNS = ("counted", "arq_independent", "arq_block", "nr_lowest", "nr_reliable")
# the tries a packet or TB gets at most, by design ("": no cap)
MAX_TRIES = {"counted": "", "arq_independent": ARQ_MAX_TRIES, "arq_block": ARQ_MAX_TRIES}
MAX_TRIES.update({"nr_lowest": nr.HARQ_MAX_RETX + 1, "nr_reliable": nr.HARQ_MAX_RETX + 1})
# --protect-path: the protected path's design (the CLI's name -> its row in DESIGNS)
PROTECT_PATHS = {"coded": "nr_reliable", "arq": "arq_block", "counted": "counted"}
# The default: NR TBs with HARQ at the reliable MCS, on FDD. Of the designs of results/protect_arq.csv it loses
# orders of magnitude fewer pairs than uncoded ARQ in a block fade at every Es/N0 and delivers a K = 4 prefill's
# pairs by the deadline from 5 dB up; "counted" (1 / (1 - PER) tries, nothing lost) was the default before.
PROTECT_PATH = "coded"


@functools.lru_cache(maxsize=4096)  # the sweep and the LLM environment ask at every transfer
def tries_beyond(cfg: channel.LinkConfig, tries: int, block: bool) -> float:
    """s_k: P(a packet is lost on each of its first `tries` tries); block: one fade over all of them (else a
    new fade every try: PER^k)."""
    per = channel.packet_error_rate(cfg)
    if tries == 0:
        return 1.0
    if not block or cfg.fading == "awgn" or not cfg.block_fading:
        return per**tries
    esn0, n_bits = 10.0 ** (cfg.snr_db / 10.0), cfg.bits_per_packet
    _, factors = channel.ber_terms(cfg.modulation)
    knees = [1.0 / (factors[0] ** 2 * esn0), (-special.ndtri(1.0 / n_bits) / factors[0]) ** 2 / esn0]

    def lost_every_try(x):
        return channel.per_independent(channel.ber_awgn(cfg.modulation, esn0 * x), n_bits) ** tries

    return min(channel.fade_average(lost_every_try, cfg.fade_m, knees), 1.0)


def _rounds_summary(failed: list[float], units: int, time_of_rounds, deadline_s: float) -> dict[str, float]:
    """Mean and percentile latency and delivery by the deadline of `units` independent packets (or TBs), each
    lost on its first k tries with probability failed[k] (k = 0..N, failed[0] = 1); time_of_rounds(r): the
    seconds when the r-th round ends."""
    n = len(failed) - 1
    done_by = [(1.0 - failed[k]) ** units for k in range(n)] + [1.0]  # P(R <= k), k = 0..N; R <= N always
    mean_s = time_of_rounds(1) + sum(
        (1.0 - done_by[k]) * (time_of_rounds(k + 1) - time_of_rounds(k)) for k in range(1, n)
    )
    percentile_rounds = next(k for k in range(1, n + 1) if done_by[k] >= PERCENTILE)
    fit = max((k for k in range(1, n + 1) if time_of_rounds(k) <= deadline_s), default=0)
    return {
        "mean_s": mean_s,
        "p95_s": time_of_rounds(percentile_rounds),
        "delivered_by_deadline": (1.0 - failed[fit]) ** units if fit else 0.0,
        "lost_share": failed[n],
    }


def arq(
    cfg: channel.LinkConfig,
    payload_bits: int,
    block: bool,
    max_tries: int = ARQ_MAX_TRIES,
    rtt_s: float = ARQ_RTT_S,
    deadline_s: float = ARQ_DEADLINE_S,
) -> dict[str, float]:
    """ARQ of `payload_bits` in the uncoded link's packets: one fade per packet over its tries (block) or
    a new fade every try."""
    packets = math.ceil(payload_bits / (cfg.elements_per_packet * cfg.bits_per_element))
    packet_s = cfg.bits_per_packet / channel.achievable_rate_bps(cfg)
    failed = [tries_beyond(cfg, k, block) for k in range(max_tries + 1)]
    tries = sum(failed[:max_tries])  # E[tries per packet]

    def time_of_rounds(rounds: int) -> float:
        return packets * tries * packet_s + (rounds - 1) * rtt_s if rounds else 0.0

    return {
        "units": packets,
        "unit_bits": cfg.elements_per_packet * cfg.bits_per_element,
        "tries_per_unit": tries,
        "mcs": "",
        **_rounds_summary(failed, packets, time_of_rounds, deadline_s),
        "lost_bound": failed[max_tries],  # exact in the PER model: no bound beyond it
    }


def coded(
    snr_db: float, payload_bits: int, lowest: bool = True, deadline_s: float = ARQ_DEADLINE_S, table=None
) -> dict[str, float]:
    """The pairs in NR TBs with HARQ, on FDD: at NR_MCS (lowest) or at the MCS of the "reliable" rule."""
    frame = nr_frame.Frame.named(nr_frame.FDD)
    if lowest:
        point = nr.point_at(nr.load_table(str(table or nr.BLER_TABLE))[NR_MCS], snr_db, nr.HARQ_MAX_RETX, frame)
    else:
        point = nr.operating_point(snr_db, rule="reliable", table=table, frame_name=nr_frame.FDD)
    tbs = point.tbs(payload_bits)
    failed = [1.0, *point.retx_needed, point.residual]
    gap = point.frame.retransmission_gap()

    def time_of_rounds(rounds: int) -> float:  # every transmission, and the idle slots of the last round trips
        return (
            nr.SLOT_S * point.frame.slots_to_send(tbs * point.transmissions + (gap - 1) * (rounds - 1))
            if rounds
            else 0.0
        )

    curve = nr.load_table(str(table or nr.BLER_TABLE))[point.mcs]
    return {
        "units": tbs,
        "unit_bits": point.tb_size,
        "tries_per_unit": point.transmissions,
        "mcs": point.mcs,
        **_rounds_summary(failed, tbs, time_of_rounds, deadline_s),
        "lost_bound": nr.residual_bound(curve, snr_db),  # what the BLER table's points certify of lost_share
    }


def counted(cfg: channel.LinkConfig, payload_bits: int, deadline_s: float = ARQ_DEADLINE_S) -> dict[str, float]:
    """What the latency model counts (channel.protected_tx_s): a mean, nothing lost."""
    packets = math.ceil(payload_bits / (cfg.elements_per_packet * cfg.bits_per_element))
    per = channel.packet_error_rate(cfg)
    seconds = packets * cfg.bits_per_packet / channel.achievable_rate_bps(cfg) / (1.0 - per) if per < 1 else math.inf
    return {
        "units": packets,
        "unit_bits": cfg.elements_per_packet * cfg.bits_per_element,
        "tries_per_unit": 1.0 / (1.0 - per) if per < 1 else math.inf,
        "mcs": "",
        "mean_s": seconds,
        "p95_s": seconds,
        "delivered_by_deadline": float(seconds <= deadline_s),
        "lost_share": 0.0,
        "lost_bound": 0.0,
    }


@dataclass(frozen=True)
class PathCost:
    """What the protected path of one transfer costs and loses, in one design."""

    air_bits: float  # expected bits on air, every transmission counted
    air_s: float  # expected seconds on air: the design's mean latency
    unit_bits: int  # payload bits of its packet (TB), which the pairs fill in order
    unit_loss: float  # P(a packet (TB) never arrives): its pairs take what the ordinary path delivered
    unit_loss_bound: float  # what the data certify of unit_loss (coded: nr.residual_bound; else unit_loss)


NO_PATH = PathCost(0.0, 0.0, 1, 0.0, 0.0)  # nothing protected


def check_path(path: str) -> str:
    if path not in PROTECT_PATHS:
        raise ValueError(f"protected path {path!r}: use one of {', '.join(PROTECT_PATHS)}")
    return path


def protected_path(
    cfg: channel.LinkConfig, tokens: int, protect: int, hidden_size: int, path: str | None = None
) -> PathCost:
    """The protected path of `tokens` tokens' K = `protect` pairs over the uncoded link at `cfg`, in design
    `path` (PROTECT_PATHS; None: PROTECT_PATH as it is at the call)."""
    path = check_path(PROTECT_PATH if path is None else path)
    payload = channel.protected_payload_bits(tokens, protect, hidden_size, cfg.bits_per_element)
    if not payload:
        return NO_PATH
    if path == "counted":
        out = counted(cfg, payload)
        air_bits = channel.protected_air_bits(cfg, tokens, protect, hidden_size)
        seconds = channel.protected_tx_s(cfg, tokens, protect, hidden_size)
        return PathCost(air_bits, seconds, out["unit_bits"], 0.0, 0.0)
    if path == "arq":
        out = arq(cfg, payload, block=True)
        air_bits = out["units"] * out["tries_per_unit"] * cfg.bits_per_packet
    else:
        out = coded(cfg.snr_db, payload, lowest=False)
        air_bits = out["units"] * out["tries_per_unit"] * out["unit_bits"]  # as nr.transfer counts TBs
    return PathCost(air_bits, out["mean_s"], out["unit_bits"], out["lost_share"], out["lost_bound"])


def design_table(
    snr_db_list, models: dict[str, ModelDims], ks, tokens: int, base: channel.LinkConfig = channel.LinkConfig()
) -> list[dict]:
    """One row per (model, Es/N0, K, design) for the protected path of a prefill of `tokens` tokens."""
    rows = []
    for name, dims in models.items():
        for snr_db in snr_db_list:
            cfg = replace(base, snr_db=float(snr_db))
            for k in ks:
                payload = channel.protected_payload_bits(tokens, k, dims.hidden_size, cfg.bits_per_element)
                results = {
                    "counted": counted(cfg, payload),
                    "arq_independent": arq(cfg, payload, block=False),
                    "arq_block": arq(cfg, payload, block=True),
                    "nr_lowest": coded(snr_db, payload),
                    "nr_reliable": coded(snr_db, payload, lowest=False),
                }
                for design in DESIGNS:
                    rows.append(
                        {
                            "model": name,
                            "tokens": tokens,
                            "snr_db": float(snr_db),
                            "packet_error_rate": channel.packet_error_rate(cfg),
                            "protect": k,
                            "protected_payload_bits": payload,
                            "design": design,
                            **results[design],
                            "ordinary_tx_s": channel.tx_latency_s(cfg, tokens, dims.hidden_size),
                            "max_tries": MAX_TRIES[design],
                            "rtt_s": ARQ_RTT_S,
                            "deadline_s": ARQ_DEADLINE_S,
                        }
                    )
    return rows
