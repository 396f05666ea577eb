"""The links behind one interface: what crosses and is lost, packets, bits, air time and latency terms.

One class per link: the original's direct p (OriginalLink), the uncoded physical link (ErasureLink,
AwgnLink, BitflipLink: packets at the ergodic capacity, channel.py), the 5G NR link (NrLink: transport
blocks, MCS and HARQ, nr.py), and serve.py's loss-free link (LossFreeLink). Every caller asks the link
object; LINKS, which maps a CLI name to its class, is the one place the names are compared (make_link).
What a link does to a transfer is the impairment engine's (uplink.py): each link picks its engine
function, so the draws, masks and numbers are the engine's whatever the caller. Imports nothing above
the radio modules (channel.py, nr.py); compute.py asks it for air time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Callable, ClassVar

import numpy as np

from . import UserError, channel, nr, protect_arq, wire
from .grid import LINK_MODES, SERVED_LINKS, validate_probability

if TYPE_CHECKING:
    import torch

    from .uplink import Impairment


def _engine():
    """uplink.py, imported at the first transfer: it needs torch, which the CLIs' parsers and tables do without."""
    from . import uplink

    return uplink


class Link:
    """A link at one operating point. Subclasses set `name` (the CLI's) and override what differs."""

    name: ClassVar[str]
    title: ClassVar[str] = "link"  # in messages
    physical: ClassVar[bool] = True  # an operating point on air (an SNR); the original's p has none
    protectable: ClassVar[bool] = True  # the protected path (--protect K) is modelled on it
    alters_every_element: ClassVar[bool] = False  # every element arrives altered (awgn: noisy)
    flips_bits: ClassVar[bool] = False  # bit errors reach the edge (bitflip: no CRC)
    # its sweep rows carry its set-up in LINK_COLUMNS (csv_columns), which a resumed sweep must match
    rows_carry_setup: ClassVar[bool] = False
    cfg: channel.LinkConfig | None = None

    @classmethod
    def from_cli(cls, cfg: channel.LinkConfig | None, p: float) -> "Link":
        """The link of the CLI's operating point `cfg` (the original's: of its p)."""
        return cls(cfg)

    # --- what crosses and is lost ----------------------------------------------------------------
    @property
    def loss(self) -> float:
        """Probability that a packet (the original's: an element) is lost."""
        return 0.0

    @property
    def ber(self) -> float:
        """Bit error rate of the bytes on air (bitflip: no CRC)."""
        return 0.0

    @property
    def elements_per_packet(self) -> int:
        return self.cfg.elements_per_packet if self.cfg else 1

    def on_air_element_loss(self, imp: Impairment) -> float:
        """Probability that a sent element arrives zeroed or altered."""
        return imp.loss

    def corrupt(self, hidden: torch.Tensor, imp: Impairment, gen: torch.Generator):
        """(received, elements impaired, elements sent) of one transfer: the engine's function for this link."""
        return _engine().erase(hidden, imp, gen)

    def deliver(self, data: np.ndarray, total: int, loss: float, ber: float, gen) -> tuple[np.ndarray, int]:
        """serve.py's packets: (indices of the `total` packets that arrive, bits flipped in `data`)."""
        return np.flatnonzero(~_engine().lost_packets(total, loss, gen).numpy()), 0

    @classmethod
    def check_protect(cls, k: int) -> None:
        if k and not cls.protectable:
            raise UserError(f"--protect is not modelled on the {cls.title} (--link {cls.name}) yet: use --link erasure")

    @classmethod
    def loss_text(cls, per: float, ber: float) -> str:
        """serve.py's words for the loss of a request at (PER, BER)."""
        return f"PER {per:.4g}"

    def check_tensor_wire(self) -> None:
        """Refuse an operating point the split hook cannot impair a tensor at (bitflip: float formats only)."""

    # --- bits and air time -----------------------------------------------------------------------
    def air(self, elements: int, scale_bits: int = 0) -> tuple[float, float]:
        """(bits on air, seconds on air) of `elements` activations and `scale_bits` of int8 scales."""
        raise NotImplementedError

    def protected_cost(self, tokens: int, protect: int, hidden_size: int) -> protect_arq.PathCost:
        """What the protected path of `tokens` tokens' K = `protect` pairs costs and loses (protect_arq.py's
        design PROTECT_PATH); a link without air: nothing on air, nothing lost."""
        return protect_arq.NO_PATH

    def protected_air(self, tokens: int, protect: int, hidden_size: int) -> tuple[float, float]:
        """(expected bits, expected seconds) on air of the protected path's pairs."""
        cost = self.protected_cost(tokens, protect, hidden_size)
        return cost.air_bits, cost.air_s

    def transfer(
        self, sent: int, tokens: int, hidden_size: int, protect: int, element_bits: int, delay: Callable[[], float]
    ) -> tuple[float, float]:
        """(bits, seconds) of one split-hook transfer of `sent` elements; `delay` draws the original's delay."""
        bits, seconds = self.air(sent)
        if protect:
            extra_bits, extra_s = self.protected_air(tokens, protect, hidden_size)
            bits += extra_bits
            seconds += extra_s
        return bits, seconds

    # --- latency terms ---------------------------------------------------------------------------
    def tx_s(self, tokens: int, hidden_size: int, withheld: float = 0.0, protect: int = 0) -> float:
        """Seconds on air of tokens x hidden_size activations less the share withheld (compute.latency_breakdown)."""
        raise NotImplementedError

    def table_columns(self, tokens: int, hidden_size: int) -> dict:
        """The latency table's columns that describe this link (compute.latency_table)."""
        return {}

    def describe(self) -> dict:
        """What add_noise.py reports about the link: its set-up and operating point."""
        return {}

    def summary(self) -> str:
        """serve.py's one line about the link's set-up."""
        return self.title

    def csv_columns(self, columns) -> dict:
        """The sweep rows' LINK_COLUMNS values of this link, as written: its set-up."""
        return {k: "" for k in columns}

    def at(self, snr_db: float) -> "Link":
        """The same link at another average Es/N0."""
        return replace(self, cfg=channel.LinkConfig(**{**asdict(self.cfg), "snr_db": float(snr_db)}))


@dataclass(frozen=True)
class OriginalLink(Link):
    """The original's link: each element lost with probability p; a random delay per transfer."""

    p: float = 0.0
    name: ClassVar[str] = "dropout"
    title: ClassVar[str] = "original link"
    physical: ClassVar[bool] = False

    def __post_init__(self):
        object.__setattr__(self, "p", validate_probability(self.p))

    @classmethod
    def from_cli(cls, cfg, p):
        return cls(p)

    @property
    def loss(self) -> float:
        return self.p

    def transfer(self, sent, tokens, hidden_size, protect, element_bits, delay):
        bits = sent * element_bits + channel.protected_payload_bits(tokens, protect, hidden_size, element_bits)
        return bits, delay()

    def tx_s(self, tokens, hidden_size, withheld=0.0, protect=0) -> float:
        return math.nan  # no air time: the original's delay is a random draw per transfer


@dataclass(frozen=True)
class UncodedLink(Link):
    """The uncoded physical link at operating point `cfg`: packets of k elements with headers, sent at the
    ergodic capacity (channel.py)."""

    cfg: channel.LinkConfig = channel.LinkConfig()
    title: ClassVar[str] = "uncoded link"
    rows_carry_setup: ClassVar[bool] = True  # modulation, fading, packets... (nr.py holds the NR link's)

    def air(self, elements, scale_bits=0):
        bits = wire.n_packets(elements, self.cfg.elements_per_packet) * self.cfg.bits_per_packet + scale_bits
        return bits, bits / channel.achievable_rate_bps(self.cfg)

    def protected_cost(self, tokens, protect, hidden_size):
        return protect_arq.protected_path(self.cfg, tokens, protect, hidden_size)

    def tx_s(self, tokens, hidden_size, withheld=0.0, protect=0) -> float:
        tx = channel.tx_latency_s(self.cfg, tokens, hidden_size, withheld)
        return tx + (self.protected_cost(tokens, protect, hidden_size).air_s if protect else 0.0)

    def table_columns(self, tokens, hidden_size):
        return {
            "modulation": self.cfg.modulation,
            "fading": self.cfg.fading,
            "bandwidth_hz": self.cfg.bandwidth_hz,
            "rate_bps": channel.achievable_rate_bps(self.cfg),
            "payload_bits": channel.payload_bits(self.cfg, tokens, hidden_size),
        }

    def csv_columns(self, columns):
        return {k: v for k, v in asdict(self.cfg).items() if k in columns}

    def summary(self) -> str:
        t = self.cfg
        return (
            f"{t.modulation}, {t.fading}{f' m={t.nakagami_m:g}' if t.fading == 'nakagami' else ''}, "
            f"packets of {t.elements_per_packet} x {t.bits_per_element} bits + {t.header_bits}, "
            f"{t.bandwidth_hz / 1e6:g} MHz"
        )

    def describe(self):
        cfg = self.cfg
        return {**asdict(cfg), "ber": channel.average_ber(cfg.modulation, cfg.snr_db, cfg.fading, cfg.nakagami_m)}


@dataclass(frozen=True)
class ErasureLink(UncodedLink):
    """Each packet lost (failed CRC) with the channel's packet error rate; its elements zero-filled."""

    name: ClassVar[str] = "erasure"

    @property
    def loss(self) -> float:
        return channel.packet_error_rate(self.cfg)


class HeldFade:
    """A link whose fade holds for a coherence time (channel.COHERENCE_S): erase_in_bursts loses the units
    (packets, TBs) with the losses its fade_losses draws per coherence interval, at the link's mean loss."""

    def corrupt(self, hidden, imp, gen):
        return _engine().erase_in_bursts(hidden, imp, gen)

    def deliver(self, data, total, loss, ber, gen):  # serve.py does not offer it (SERVED)
        raise NotImplementedError("burst losses are not served")


@dataclass(frozen=True)
class BurstLink(HeldFade, ErasureLink):
    """Erasure with the fade held for a coherence time: consecutive packets share it, so losses come in bursts
    at the same mean (uplink.burst_loss)."""

    name: ClassVar[str] = "burst"
    title: ClassVar[str] = "uncoded link with burst losses"

    def fade_losses(self, n_packets: int, gen) -> torch.Tensor:
        """Each packet's loss in the fade of its coherence interval."""
        return _engine().burst_loss(n_packets, self.cfg, gen)


@dataclass(frozen=True)
class AwgnLink(UncodedLink):
    """Every element arrives: y + n / |h| with one fade per packet (zero-forcing)."""

    name: ClassVar[str] = "awgn"
    alters_every_element: ClassVar[bool] = True

    def on_air_element_loss(self, imp):
        return 0.0

    def corrupt(self, hidden, imp, gen):
        return _engine().noisy(hidden, imp, gen)


@dataclass(frozen=True)
class BitflipLink(UncodedLink):
    """No CRC: every bit of the elements' bytes flips with the fade-averaged BER (a stress test)."""

    name: ClassVar[str] = "bitflip"
    flips_bits: ClassVar[bool] = True

    @classmethod
    def loss_text(cls, per, ber):
        return f"BER {ber:.3g}"

    @property
    def ber(self) -> float:
        return channel.average_ber(self.cfg.modulation, self.cfg.snr_db, self.cfg.fading, self.cfg.nakagami_m)

    def on_air_element_loss(self, imp):
        return -math.expm1(self.cfg.bits_per_element * math.log1p(-imp.ber))

    def corrupt(self, hidden, imp, gen):
        return _engine().flipped(hidden, imp, gen)

    def deliver(self, data, total, loss, ber, gen):
        return np.arange(total), len(_engine().flip_bits(data, ber, gen))

    def check_tensor_wire(self):
        if self.cfg.bits_per_element not in wire.BITFLIP_WIRE:
            raise UserError(
                "bitflip flips the bits of float16 or float32: use 16 or 32 bits per element, "
                f"not {self.cfg.bits_per_element}"
            )


@dataclass(frozen=True)
class NrLink(Link):
    """The 5G NR link at cfg.snr_db (nr.py): each transport block lost with its residual BLER after HARQ
    at the MCS link adaptation picks; cfg gives only the SNR and the bits per element."""

    cfg: channel.LinkConfig = channel.LinkConfig()
    name: ClassVar[str] = "nr"
    title: ClassVar[str] = "NR link"
    protectable: ClassVar[bool] = False

    @classmethod
    def loss_text(cls, per, ber):
        return f"residual TB loss {per:.4g}"

    def summary(self) -> str:
        return (
            f"5G NR, {nr.NUM_PRBS} PRBs at {nr.SUBCARRIER_SPACING_KHZ} kHz, TDL-{nr.TDL_PROFILE}, "
            f"MCS for {nr.TARGET_BLER:g} BLER ({nr.MCS_RULE}), up to {nr.HARQ_MAX_RETX} HARQ retransmissions, "
            f"{self.point.frame.name} frame"
        )

    @property
    def point(self) -> nr.OperatingPoint:
        return nr.operating_point(self.cfg.snr_db)

    @property
    def loss(self) -> float:
        return self.point.residual

    @property
    def elements_per_packet(self) -> int:  # a TB: its size follows the MCS at this SNR
        return nr.elements_per_tb(self.point, self.cfg.bits_per_element)

    def air(self, elements, scale_bits=0):  # whole TBs, every HARQ transmission; int8's scales fill TBs too
        return nr.transfer(
            self.cfg.snr_db, elements + math.ceil(scale_bits / self.cfg.bits_per_element), self.cfg.bits_per_element
        )

    def transfer(self, sent, tokens, hidden_size, protect, element_bits, delay):
        return nr.transfer(self.cfg.snr_db, sent, self.cfg.bits_per_element)

    def tx_s(self, tokens, hidden_size, withheld=0.0, protect=0) -> float:
        if protect:
            raise ValueError("the protected path is not modelled on the NR link")
        return nr.tx_latency_s(self.cfg.snr_db, tokens, hidden_size, self.cfg.bits_per_element, withheld)

    def table_columns(self, tokens, hidden_size):
        air_bits = nr.transfer(self.cfg.snr_db, tokens * hidden_size, self.cfg.bits_per_element)[0]
        return {**self._point_columns(), "air_bits": air_bits}

    def describe(self):  # nr.py's set-up replaces the uncoded link's
        return {"snr_db": self.cfg.snr_db, "bits_per_element": self.cfg.bits_per_element, **self._point_columns()}

    def _point_columns(self) -> dict:
        point = self.point
        return {
            "mcs": point.mcs,
            "tb_size": point.tb_size,
            "bler": point.bler,
            "residual_tb_loss": point.residual,
            "transmissions_per_tb": point.transmissions,
            "frame": point.frame.name,
            "goodput_bps": point.goodput_bps,
        }

    def csv_columns(self, columns):  # nr.py and its table hold the set-up: only the bits per element are ours
        return {k: (self.cfg.bits_per_element if k == "bits_per_element" else "") for k in columns}


@dataclass(frozen=True)
class NrBurstLink(HeldFade, NrLink):
    """The NR link with the fade held for a coherence time: the TBs sent in one are lost together, or arrive,
    at nr's mean loss (uplink.nr_burst_loss)."""

    name: ClassVar[str] = "nr_burst"
    title: ClassVar[str] = "NR link with burst losses"

    def fade_losses(self, n_tbs: int, gen) -> torch.Tensor:
        return _engine().nr_burst_loss(n_tbs, self.point, gen)


@dataclass(frozen=True)
class LossFreeLink(Link):
    """serve.py's --link none (or an infinite SNR): every packet arrives, nothing is counted on air."""

    cfg: channel.LinkConfig | None = None
    name: ClassVar[str] = "none"
    physical: ClassVar[bool] = False

    @classmethod
    def loss_text(cls, per, ber):
        return "loss-free"

    def summary(self) -> str:
        return "loss-free"

    def air(self, elements, scale_bits=0):
        return 0, 0.0

    def deliver(self, data, total, loss, ber, gen):
        return np.arange(total), 0


# The one place a CLI name is compared: name -> class.
LINKS: dict[str, type[Link]] = {
    k.name: k for k in (OriginalLink, ErasureLink, AwgnLink, BitflipLink, NrLink, BurstLink, NrBurstLink)
}
SERVED: dict[str, type[Link]] = {k.name: k for k in (LossFreeLink, ErasureLink, BitflipLink, NrLink)}
assert tuple(LINKS) == LINK_MODES and tuple(SERVED) == SERVED_LINKS  # grid.py's names (torch-free) are these


def link_class(name: str, kinds: dict[str, type[Link]] = LINKS) -> type[Link]:
    if name not in kinds:
        raise UserError(f"unknown link {name!r}: use one of {', '.join(kinds)}")
    return kinds[name]


def make_link(name: str, cfg: channel.LinkConfig | None = None, p: float = 0.0) -> Link:
    """The link a CLI name means: the original's at p, or a physical one at operating point `cfg`."""
    return link_class(name, {**LINKS, **SERVED}).from_cli(cfg, p)


def is_physical(name: str) -> bool:
    """Whether the link of this CLI name has an operating point on air (an SNR)."""
    return link_class(name, {**LINKS, **SERVED}).physical


# --- the impairment of a transfer: a link and what the UE chooses (withholding, protection) -------------
def direct(p: float, withheld: float = 0.0) -> Impairment:
    """The original's link: each element lost with probability p."""
    return _engine().Impairment(OriginalLink(p), loss=validate_probability(p)).withholding(withheld)


def physical(cfg: channel.LinkConfig, mode: str = "erasure", withheld: float = 0.0) -> Impairment:
    """A physical link at operating point `cfg` (SNR, modulation, fading, packets)."""
    if mode not in LINKS or not LINKS[mode].physical:
        modes = [k for k, kind in LINKS.items() if kind.physical]
        raise UserError(f"unknown link mode {mode!r} for a channel: use one of {', '.join(modes)}")
    return impairment(LINKS[mode](cfg), withheld)


def impairment(link: Link, withheld: float = 0.0) -> Impairment:
    """What `link` does to a transfer, with a share `withheld` of the elements not sent."""
    link.check_tensor_wire()
    return _engine().Impairment(link, loss=link.loss, ber=link.ber).withholding(withheld)
