"""The physical uplink at the split: SNR -> BER -> PER -> element loss, rate and air time.

The UE runs decoder layers 0..split and sends the hidden state (tokens x d_model numbers of
b bits each) to the edge server in packets of k elements plus h header/CRC bits. A packet that
fails its CRC is dropped and its k elements are zero-filled, so element_loss = PER; k = 1, h = 0
is the original code's i.i.d. element mask with p = PER.

SNR convention: `snr_db` is always the AVERAGE RECEIVED SNR PER SYMBOL, Es/N0, with E|h|^2 = 1.
Eb/N0 = Es/N0 / log2(M). Functions that take Eb/N0 say so in their name (`*_ebn0`).

Formulas (Goldsmith ch. 6, Proakis ch. 4 and 14; /work/shared/notes/wireless-channel.md):
- BER, coherent detection, Gray mapping, perfect CSI. BPSK/QPSK: Q(sqrt(2 Eb/N0)); square M-QAM:
  the exact expression of Cho & Yoon (IEEE Trans. Commun. 50(7), 2002), which for 16-QAM is
  1/4 [3 Q(a) + 2 Q(3a) - Q(5a)], a = sqrt(0.8 Eb/N0). Every BER is a sum of w_i Q(c_i sqrt(Es/N0)).
- Fading |h|^2 ~ Gamma(m, 1/m) (Nakagami-m; m = 1 is Rayleigh, m -> inf is AWGN). Rayleigh
  averages in closed form; Nakagami by scipy.integrate.quad over the Gamma density.
- Block fading (one fade per packet): PER = E_h[1 - (1 - Pb(gamma |h|^2))^L], not 1 - (1 - E[Pb])^L.
- Rate: Shannon B log2(1 + SNR), ergodic capacity under fading (compute time: compute.py).

The command line (python -m layersplit.channel), the Monte Carlo check of these closed forms and the
tables: channel_cli.py.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import integrate, special

# ---- link -----------------------------------------------------------------------------------
MODULATIONS = {"bpsk": 2, "qpsk": 4, "16qam": 16, "64qam": 64}  # name -> constellation size M
FADINGS = ("awgn", "rayleigh", "nakagami")  # |h| = 1; |h|^2 ~ Exp(1); |h|^2 ~ Gamma(m, 1/m)
NAKAGAMI_M_MIN = 0.5  # the Nakagami-m distribution is defined for m >= 1/2 (one-sided Gaussian)
FADE_TAIL = 1e-30  # fade-density mass left out at each end of the quad integrals
QUAD_RTOL = 1e-8  # relative tolerance of the fade averages (far below Monte Carlo noise)

# ---- defaults of a LinkConfig (and of the CLIs' link options) -------------------------------
DEFAULT_SNR_DB = 10.0  # average received Es/N0
DEFAULT_MODULATION = "qpsk"
# The paper's channel is Nakagami-m (y' = h y + n); its m is not known. m = 2: a UE near its edge
# server usually has a partial line of sight, a milder fade than Rayleigh (m = 1, no line of sight)
# and far from AWGN (m -> inf); m = 2 is also the usual moderate choice of the fading literature.
# --fading rayleigh (the earlier default) and --nakagami-m stay available.
DEFAULT_FADING = "nakagami"
DEFAULT_NAKAGAMI_M = 2.0
DEFAULT_BITS_PER_ELEMENT = 16  # fp16/bf16 activations
# 64 fp16 elements = 1024 payload bits + a CRC-32: a short ~1 kbit packet, 3 % header overhead.
# k = 1, h = 0 reproduces the original code's i.i.d. element mask.
DEFAULT_ELEMENTS_PER_PACKET = 64
DEFAULT_HEADER_BITS = 32
DEFAULT_BANDWIDTH_HZ = 20e6  # one 20 MHz LTE/Wi-Fi channel
DEFAULT_BLOCK_FADING = True  # a ~1 kbit packet lasts tens of microseconds << coherence time (ms)


def qfunc(x: np.ndarray | float) -> np.ndarray:
    """Gaussian tail Q(x) = P(N(0,1) > x)."""
    return 0.5 * special.erfc(np.asarray(x, dtype=float) / math.sqrt(2.0))


def bits_per_symbol(modulation: str) -> int:
    return int(math.log2(MODULATIONS[modulation]))


def ebn0_db_from_esn0_db(esn0_db: float, modulation: str) -> float:
    """Eb/N0 in dB from Es/N0 in dB: Eb/N0 = Es/N0 / log2(M)."""
    return esn0_db - 10.0 * math.log10(bits_per_symbol(modulation))


# ---- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LinkConfig:
    """One operating point of the uplink; validated on construction."""

    snr_db: float = DEFAULT_SNR_DB  # average received SNR per symbol, Es/N0, in dB
    modulation: str = DEFAULT_MODULATION  # bpsk, qpsk, 16qam or 64qam (Gray-mapped)
    fading: str = DEFAULT_FADING  # awgn, rayleigh or nakagami
    nakagami_m: float = DEFAULT_NAKAGAMI_M  # Nakagami shape, used only when fading == "nakagami"
    bits_per_element: int = DEFAULT_BITS_PER_ELEMENT  # 32 fp32, 16 fp16/bf16, 8 int8
    elements_per_packet: int = DEFAULT_ELEMENTS_PER_PACKET  # k activations per packet
    header_bits: int = DEFAULT_HEADER_BITS  # h header/CRC bits per packet
    bandwidth_hz: float = DEFAULT_BANDWIDTH_HZ  # uplink bandwidth; symbol rate = bandwidth
    block_fading: bool = DEFAULT_BLOCK_FADING  # one fade per packet (else independent bit errors)

    def __post_init__(self) -> None:
        if not math.isfinite(self.snr_db):
            raise ValueError(f"snr_db must be a finite number of dB, got {self.snr_db}")
        if self.modulation not in MODULATIONS:
            raise ValueError(f"modulation must be one of {', '.join(MODULATIONS)}, got {self.modulation!r}")
        if self.fading not in FADINGS:
            raise ValueError(f"fading must be one of {', '.join(FADINGS)}, got {self.fading!r}")
        if not self.nakagami_m >= NAKAGAMI_M_MIN:  # also rejects NaN
            raise ValueError(f"nakagami_m must be >= {NAKAGAMI_M_MIN}, got {self.nakagami_m}")
        for name, low in (("bits_per_element", 1), ("elements_per_packet", 1), ("header_bits", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (self.bandwidth_hz > 0 and math.isfinite(self.bandwidth_hz)):
            raise ValueError(f"bandwidth_hz must be a positive number of Hz, got {self.bandwidth_hz}")

    @property
    def bits_per_packet(self) -> int:
        """L = k * b + h."""
        return self.elements_per_packet * self.bits_per_element + self.header_bits

    @property
    def ebn0_db(self) -> float:
        return ebn0_db_from_esn0_db(self.snr_db, self.modulation)

    @property
    def fade_m(self) -> float:
        """Nakagami shape of the fade: inf for AWGN, 1 for Rayleigh."""
        return {"awgn": math.inf, "rayleigh": 1.0, "nakagami": self.nakagami_m}[self.fading]


# ---- bit error rate --------------------------------------------------------------------------
def ber_terms(modulation: str) -> tuple[np.ndarray, np.ndarray]:
    """Weights w and factors c with BER_AWGN(Es/N0) = sum_i w_i Q(c_i sqrt(Es/N0)), exactly.

    Square M-QAM (QPSK included) with Gray mapping per I/Q rail: Cho & Yoon (2002), eq. (14),
    with erfc(x) = 2 Q(sqrt(2) x); terms with the same argument are merged.
    """
    if modulation == "bpsk":
        return np.array([1.0]), np.array([math.sqrt(2.0)])
    m_const = MODULATIONS[modulation]
    side = math.isqrt(m_const)  # levels per rail
    bits_rail = int(math.log2(side))
    n_terms = side - 1  # i runs up to (1 - 2^-k) side - 1 <= side - 2
    weights = np.zeros(n_terms)
    for k in range(1, bits_rail + 1):  # bit k of the rail's Gray label
        half = 2 ** (k - 1)
        for i in range(side - (side >> k)):  # (-1)^floor(i 2^(k-1) / side) (2^(k-1) - floor(i 2^(k-1) / side + 1/2))
            weights[i] += (-1) ** (i * half // side) * (half - (2 * i * half + side) // (2 * side))
    weights *= 2.0 / (side * bits_rail)
    factors = (2 * np.arange(n_terms) + 1) * math.sqrt(3.0 / (m_const - 1))
    return weights, factors


def ber_awgn(modulation: str, esn0: np.ndarray | float) -> np.ndarray:
    """BER at instantaneous Es/N0 (LINEAR, not dB), elementwise."""
    weights, factors = ber_terms(modulation)
    root = np.sqrt(np.asarray(esn0, dtype=float))[..., None]
    return np.clip(qfunc(factors * root) @ weights, 0.0, 0.5)


def fade_average(f: Callable[[np.ndarray], np.ndarray], m: float, knees: list[float]) -> float:
    """E[f(X)] for X = |h|^2 ~ Gamma(shape m, scale 1/m), by quad over the Gamma density.

    Integrates in u = ln x, where the density and f are smooth over the whole range;
    `knees` are x where f changes fastest (breakpoints for quad). m = inf means no fade.
    """
    if math.isinf(m):
        return float(f(np.array(1.0)))
    lo = math.log(special.gammaincinv(m, FADE_TAIL) / m)
    hi = math.log(special.gammainccinv(m, FADE_TAIL) / m)
    log_norm = m * math.log(m) - special.gammaln(m)

    def integrand(u: float) -> float:  # f(x) p(x) dx with x = e^u, dx = x du
        return float(f(np.array(math.exp(u)))) * math.exp(log_norm + m * u - m * math.exp(u))

    points = sorted({min(max(math.log(x), lo), hi) for x in [*knees, 1.0] if x > 0} - {lo, hi})
    value, _ = integrate.quad(integrand, lo, hi, points=points or None, epsabs=0.0, epsrel=QUAD_RTOL, limit=200)
    return value


@functools.lru_cache(maxsize=1024)  # pure; the sweep asks again for every window and draw
def average_ber(modulation: str, snr_db: float, fading: str, nakagami_m: float = DEFAULT_NAKAGAMI_M) -> float:
    """Fade-averaged BER at average received Es/N0 `snr_db` (dB)."""
    cfg = LinkConfig(snr_db=snr_db, modulation=modulation, fading=fading, nakagami_m=nakagami_m)  # validates
    esn0 = 10.0 ** (snr_db / 10.0)
    weights, factors = ber_terms(modulation)
    if fading == "awgn":
        return float(ber_awgn(modulation, esn0))
    if fading == "rayleigh":  # E[Q(c sqrt(g X))] = (1 - sqrt(s / (1 + s))) / 2, s = c^2 g / 2
        s = factors**2 * esn0 / 2.0
        return float(np.dot(weights, 0.5 * (1.0 - np.sqrt(s / (1.0 + s)))))
    knees = list(1.0 / (factors**2 * esn0))
    return fade_average(lambda x: ber_awgn(modulation, esn0 * x), cfg.fade_m, knees)


def average_ber_ebn0(modulation: str, ebn0_db: float, fading: str, nakagami_m: float = DEFAULT_NAKAGAMI_M) -> float:
    """Fade-averaged BER at average received Eb/N0 `ebn0_db` (dB)."""
    esn0_db = ebn0_db + 10.0 * math.log10(bits_per_symbol(modulation))
    return average_ber(modulation, esn0_db, fading, nakagami_m)


# ---- packets ---------------------------------------------------------------------------------
def per_independent(ber: np.ndarray | float, bits_per_packet: int) -> np.ndarray:
    """PER = 1 - (1 - Pb)^L for independent bit errors (log1p/expm1 keep small values exact)."""
    return -np.expm1(bits_per_packet * np.log1p(-np.asarray(ber, dtype=float)))


@functools.lru_cache(maxsize=1024)  # pure (LinkConfig is frozen); quad integrals are worth keeping
def packet_error_rate(cfg: LinkConfig) -> float:
    """Probability that a packet of cfg.bits_per_packet bits has at least one bit error.

    block_fading: one fade per packet, PER = E_h[1 - (1 - Pb(g |h|^2))^L]; otherwise (AWGN or
    fast/interleaved fading) bit errors are independent with the fade-averaged BER.
    The bits of one 16/64-QAM symbol share a noise sample; treating them as independent given the
    fade changes the PER by < 0.5 % relative against the exact 1 - (1 - SER)^(L / log2 M).
    """
    n_bits = cfg.bits_per_packet
    if cfg.fading == "awgn" or not cfg.block_fading:
        return float(per_independent(average_ber(cfg.modulation, cfg.snr_db, cfg.fading, cfg.nakagami_m), n_bits))
    esn0 = 10.0 ** (cfg.snr_db / 10.0)
    _, factors = ber_terms(cfg.modulation)
    # The PER drops from 1 to 0 around the fade x where Q(c_0 sqrt(g x)) ~ 1/L.
    knees = [1.0 / (factors[0] ** 2 * esn0), (-special.ndtri(1.0 / n_bits) / factors[0]) ** 2 / esn0]
    per = fade_average(lambda x: per_independent(ber_awgn(cfg.modulation, esn0 * x), n_bits), cfg.fade_m, knees)
    return min(per, 1.0)  # quad may overshoot 1 by rounding when every packet is lost


def element_loss(cfg: LinkConfig) -> float:
    """Probability that an activation element is zero-filled: its packet is lost, so = PER."""
    return packet_error_rate(cfg)


# ---- burst losses (--link burst) -----------------------------------------------------------------
# How long a fade holds: Clarke's coherence time 0.423 / f_D, with the Doppler f_D = v f_c / c = 9.7 Hz of a
# pedestrian (3 km/h) at 3.5 GHz (the NR link's carrier): 44 ms, rounded down
COHERENCE_S = 0.040


def packet_loss_in_fade(cfg: LinkConfig, gain: np.ndarray) -> np.ndarray:
    """A packet's loss probability in the fade |h|^2 = gain (elementwise): 1 - (1 - Pb(Es/N0 x gain))^L, the
    term packet_error_rate averages over the fade."""
    esn0 = 10.0 ** (cfg.snr_db / 10.0)
    return per_independent(ber_awgn(cfg.modulation, esn0 * np.asarray(gain, dtype=float)), cfg.bits_per_packet)


def coherence_packets(cfg: LinkConfig) -> int:
    """Packets sent back to back within one coherence time (COHERENCE_S) at the link's rate: they share a fade."""
    return max(1, math.floor(COHERENCE_S * achievable_rate_bps(cfg) / cfg.bits_per_packet))


# ---- rate and latency ------------------------------------------------------------------------
def spectral_efficiency(snr_db: float, fading: str, nakagami_m: float = DEFAULT_NAKAGAMI_M) -> float:
    """Ergodic capacity E[log2(1 + g |h|^2)] in bit/s/Hz at average SNR g = 10^(snr_db/10)."""
    cfg = LinkConfig(snr_db=snr_db, fading=fading, nakagami_m=nakagami_m)  # validates
    g = 10.0 ** (snr_db / 10.0)
    if fading == "rayleigh":  # exp(x) E1(x) / ln 2 with x = 1/g
        x = 1.0 / g
        if x <= 700.0:
            return float(special.exp1(x) * math.exp(x) / math.log(2.0))
        # below about -28.5 dB exp(x) overflows: the asymptotic series, relative error < 24 / x^4 < 1e-10 here
        return (1.0 - 1.0 / x + 2.0 / x**2 - 6.0 / x**3) / x / math.log(2.0)
    return fade_average(lambda x: np.log2(1.0 + g * x), cfg.fade_m, [1.0 / g])


def bicm_capacity(bits_per_symbol: int, snr_db: float, nodes: int = 96) -> float:
    """Bits per symbol a Gray-mapped square QAM of 2^bits_per_symbol points carries on AWGN at Es/N0 `snr_db`
    with bit-interleaved coded modulation (the receiver's bitwise LLRs, as in 5G): the sum over the bits of
    I(bit; y). I and Q are two Gray-mapped PAM rails; each bit's information is integrated over the noise by
    Gauss-Hermite quadrature. The limit a code at rate R on this constellation cannot pass is the SNR where
    it equals bits_per_symbol x R: above 2^(bits_per_symbol R) - 1 (Shannon's), the more so the denser."""
    if bits_per_symbol < 2 or bits_per_symbol % 2:
        raise ValueError(f"square QAM needs an even number of bits per symbol, got {bits_per_symbol}")
    levels = 2 ** (bits_per_symbol // 2)
    amplitude = (2 * np.arange(levels) - levels + 1) / math.sqrt(2 * (levels**2 - 1) / 3)  # unit symbol energy
    labels = np.arange(levels) ^ (np.arange(levels) >> 1)  # Gray labels along the rail
    sigma = math.sqrt(0.5 / 10.0 ** (snr_db / 10.0))  # noise per rail: N0 / 2
    t, w = np.polynomial.hermite.hermgauss(nodes)
    y = amplitude[:, None] + math.sqrt(2.0) * sigma * t[None, :]  # received values for each sent level
    log_p = -((y[:, :, None] - amplitude[None, None, :]) ** 2) / (2 * sigma**2)  # [sent, node, candidate]
    total = special.logsumexp(log_p, axis=2)
    info = 0.0
    for bit in range(bits_per_symbol // 2):
        value = (labels >> bit) & 1
        same = special.logsumexp(np.where(value[None, None, :] == value[:, None, None], log_p, -np.inf), axis=2)
        info += 1.0 - float(np.mean((w[None, :] * (total - same)).sum(1) / math.sqrt(math.pi))) / math.log(2.0)
    return 2.0 * info


def achievable_rate_bps(cfg: LinkConfig) -> float:
    """Bit rate of the uplink: bandwidth x ergodic capacity (ideal adaptive coding assumed).

    The modulation only sets the BER/PER; the rate is the capacity the bandwidth supports.
    """
    return cfg.bandwidth_hz * spectral_efficiency(cfg.snr_db, cfg.fading, cfg.nakagami_m)


def payload_bits(cfg: LinkConfig, tokens: int, hidden_size: int, withheld: float = 0.0) -> int:
    """Bits on air for tokens x hidden_size activations: whole packets, headers included.
    withheld: the share of elements the UE deliberately does not send (they are not on air)."""
    sent = math.ceil(tokens * hidden_size * (1.0 - withheld))
    n_packets = math.ceil(sent / cfg.elements_per_packet)
    return n_packets * cfg.bits_per_packet


def tx_latency_s(cfg: LinkConfig, tokens: int, hidden_size: int, withheld: float = 0.0) -> float:
    """Seconds to send tokens x hidden_size activations (prefill: the prompt; decode: 1 token),
    less the share `withheld` that the UE deliberately does not send."""
    return payload_bits(cfg, tokens, hidden_size, withheld) / achievable_rate_bps(cfg)


# ---- the protected path (--protect K) --------------------------------------------------------
# The K largest-magnitude elements of each token also go over a protected path as (index, value) pairs.
# Here: their bits, and the "counted" design's cost (packets of the same size and modulation, each sent
# 1 / (1 - PER) times, nothing lost); protect_arq.py holds the other designs and picks the one in use.
def protected_payload_bits(tokens: int, protect: int, hidden_size: int, bits_per_element: int) -> int:
    """The protected pairs' bits: per token, K x (an index of ceil(log2 d) bits + a value)."""
    return tokens * protect * (math.ceil(math.log2(hidden_size)) + bits_per_element) if protect else 0


def protected_air_bits(cfg: LinkConfig, tokens: int, protect: int, hidden_size: int) -> float:
    """Expected bits on air of the protected path: whole packets with headers, each sent 1 / (1 - PER)
    times on average (retransmitted until received)."""
    payload = protected_payload_bits(tokens, protect, hidden_size, cfg.bits_per_element)
    if not payload:
        return 0.0
    packets = math.ceil(payload / (cfg.elements_per_packet * cfg.bits_per_element))
    per = packet_error_rate(cfg)
    return math.inf if per >= 1.0 else packets * cfg.bits_per_packet / (1.0 - per)


def protected_tx_s(cfg: LinkConfig, tokens: int, protect: int, hidden_size: int) -> float:
    """Expected seconds of the protected path on air."""
    return protected_air_bits(cfg, tokens, protect, hidden_size) / achievable_rate_bps(cfg)


# ---- SNR over time ---------------------------------------------------------------------------
# The uplink's Es/N0 from one request to the next: the wireless environment trains under this process
# and serve.py serves under it, so a policy is served under the SNR spread it was trained on.
SNR_MEAN_DB = 25.0  # stationary mean
SNR_STD_DB = 8.0  # stationary standard deviation
SNR_RHO = 0.9  # lag-1 correlation between consecutive requests


class SnrProcess:
    """AR(1) (Gauss-Markov) SNR in dB with exact stationary mean, std and lag-1 correlation rho:
    x_{t+1} = mean + rho (x_t - mean) + sqrt(1 - rho^2) std eps_t, x_0 drawn from N(mean, std^2).
    """

    def __init__(
        self, mean_db: float = SNR_MEAN_DB, std_db: float = SNR_STD_DB, rho: float = SNR_RHO, seed: int | None = None
    ) -> None:
        if not std_db >= 0:
            raise ValueError(f"std_db must be >= 0, got {std_db}")
        if not -1 <= rho <= 1:
            raise ValueError(f"rho must be in [-1, 1], got {rho}")
        self.mean_db, self.std_db, self.rho = mean_db, std_db, rho
        self.reset(seed)

    def reset(self, seed: int | None = None) -> float:
        self.rng = np.random.default_rng(seed)
        self.snr_db = self.mean_db + self.std_db * self.rng.standard_normal()
        return self.snr_db

    def step(self) -> float:
        innovation = math.sqrt(1.0 - self.rho**2) * self.std_db * self.rng.standard_normal()
        self.snr_db = self.mean_db + self.rho * (self.snr_db - self.mean_db) + innovation
        return self.snr_db


def snr_path(mean_db: float, std_db: float, rho: float, n_steps: int, seed: int | None = None) -> np.ndarray:
    """n_steps SNR values (dB) of one AR(1) sample path, the first drawn from the stationary law."""
    process = SnrProcess(mean_db, std_db, rho, seed)
    return np.array([process.snr_db] + [process.step() for _ in range(n_steps - 1)])


if __name__ == "__main__":  # python -m layersplit.channel: the command line is channel_cli's
    from .channel_cli import main

    sys.exit(main())
