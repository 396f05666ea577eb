"""serve.py's simulated uplink (Uplink): what the air interface does to the packets of a request's
activations, and their bits and seconds on air; the losses come from the impairment engine (layersplit/uplink.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from .. import UserError, channel, links
from ..uplink import generator, stream_seed
from ..wire import wire_bits


@dataclass(frozen=True)
class Uplink:
    """What the air interface does to the packets of one request's transfers.

    mode none: every packet arrives intact. erasure: each packet is lost (fails its CRC) with
    probability packet_error_rate(cfg) and never reaches the edge. bitflip: no CRC; every bit of the
    activation's bytes flips with the fade-averaged BER (a stress test). `template` holds the
    modulation, fading, packet size and bandwidth; the SNR and the bits per element (from the wire
    dtype) are set per request. An infinite SNR is a loss-free link. The losses come from the
    impairment engine (layersplit/uplink.py) and request r's stream, stream_seed(seed, r): the same seed, SNR,
    link and tokens impair the same elements as add_noise.py's split hook. Elements on the protected
    path (--protect K) cross in its design (protect_arq.PROTECT_PATH): its air time is counted here
    (protected_air), and the UE draws which of its packets are lost (UEClient._protected_section).
    """

    mode: str = "erasure"
    template: channel.LinkConfig = channel.LinkConfig()
    seed: int = 0

    def __post_init__(self):
        links.link_class(self.mode, links.SERVED)  # an unknown name is refused here

    @property
    def kind(self) -> type[links.Link]:
        return links.SERVED[self.mode]

    def link(self, snr_db: float, wire: str) -> links.Link:
        """The link of a request at this SNR: loss-free under --link none or at an infinite SNR."""
        if not self.kind.physical or math.isinf(snr_db) and snr_db > 0:
            return links.LossFreeLink(self.template)
        try:
            return self.kind(replace(self.template, snr_db=float(snr_db), bits_per_element=wire_bits(wire)))
        except ValueError as e:
            raise UserError(str(e)) from e

    def loss(self, snr_db: float, wire: str) -> tuple[float, float]:
        """(packet error rate, bit error rate) at this SNR; (0, 0) when loss-free. nr: the packets are
        transport blocks, lost with their residual BLER after HARQ (nr.py)."""
        link = self.link(snr_db, wire)
        return link.loss, link.ber

    def packet_elements(self, snr_db: float, wire: str) -> int:
        """Elements per packet at this SNR: the template's, or for nr a TB's at the MCS chosen for it."""
        return self.link(snr_db, wire).elements_per_packet

    def stream(self, request: int) -> torch.Generator:
        """The random stream of request `request`; its steps draw from it in order."""
        return generator(stream_seed(self.seed, request))

    def transmit(
        self,
        data: np.ndarray,
        total: int,
        snr_db: float,
        wire: str,
        gen: torch.Generator,
        loss: tuple[float, float] | None = None,
    ) -> tuple[np.ndarray, int]:
        """(indices of the `total` packets that arrive, bits flipped); bitflip alters `data` (the
        activation's element bytes) in place. `loss`: self.loss(snr_db, wire) when the caller has it
        (a request computes it once for all its steps)."""
        per, ber = self.loss(snr_db, wire) if loss is None else loss
        if per == 0.0 and ber == 0.0:
            return np.arange(total), 0
        return self.link(snr_db, wire).deliver(data, total, per, ber, gen)

    def air(self, snr_db: float, wire: str, tokens: int, hidden_size: int, protect: int = 0) -> tuple[float, float]:
        """(bits on air, seconds on air) of one transfer: whole packets with headers, plus the int8
        scales (32 bits per token), plus the protected path's (protected_air); (0, 0) for a link
        without a physical operating point."""
        link = self.link(snr_db, wire)
        bits, seconds = link.air(tokens * hidden_size, 32 * tokens if wire == "int8" else 0)
        if not link.physical:
            return bits, seconds
        extra_bits, extra_s = link.protected_air(tokens, protect, hidden_size)
        return bits + extra_bits, seconds + extra_s

    def protected_air(
        self, snr_db: float, wire: str, tokens: int, hidden_size: int, protect: int
    ) -> tuple[float, float]:
        """(expected bits, expected seconds) on air of the protected path: each token's `protect`
        (index, value) pairs in the design's packets (TBs), every transmission counted (Link.protected_cost);
        (0, 0) without protection or a physical operating point."""
        return self.link(snr_db, wire).protected_air(tokens, protect, hidden_size)
