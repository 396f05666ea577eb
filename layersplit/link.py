"""The split-layer link: where the model is cut and what the wireless link does to what crosses it.

Layers 0..split run on the user equipment (UE); the hidden state after 0-based decoder layer
`split` crosses the uplink to the edge server, which runs the remaining layers and the LM head.
So split n means n + 1 layers on the UE, as in the original code.

The link is a forward hook on that decoder layer (no copied model code, so it survives
transformers upgrades and attaches to any decoder-only model). What it does to the hidden state
is one of LINK_MODES:
    dropout  the original: each element zeroed with probability p, no 1/(1-p) rescaling
    erasure  packets of k elements lost with the channel's packet error rate and zero-filled
             (k = 1 is `dropout` with p = PER, mask for mask)
    awgn     y + n / |h| on power-normalised activations: fading, zero-forcing equalisation, noise
             power = signal power / SNR, one fade per packet of k elements
    bitflip  raw bit errors on the transmitted float16/float32 with no CRC: a stress test whose
             non-finite results are reported by the evaluation, not dropped
On top of any mode the UE may withhold a share of the activation (set_withheld): a seeded random
subset of elements is not sent, the edge zero-fills it, and the transmission shrinks accordingly;
with erasure the packets are filled with the elements that are sent.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special
from transformers import LlamaForCausalLM

from . import UserError, channel
from .models import find_decoder_layers

DELAY_RANGE_S = (0.005, 0.01)  # the original's per-transfer delay, U(5 ms, 10 ms), used when no channel is set
LINK_MODES = ("dropout", "erasure", "awgn", "bitflip")  # what the link does; see the module docstring
WIRE_DTYPES = {16: torch.float16, 32: torch.float32}  # bitflip: the float format whose bits are flipped


def validate_probability(p: float, name: str = "dropout") -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:  # also rejects NaN
        raise UserError(f"{name} probability {p} is outside [0, 1]")
    return p


@dataclass
class Transfer:
    """One crossing of the link: one forward pass's hidden state at the split."""

    tokens: int  # positions that crossed (batch x sequence); 1 per decoding step with a KV cache
    elements: int  # numbers sent: tokens x hidden size
    bits: int  # bits on air: packets with headers under a channel, else the activation dtype's size
    impaired: int  # elements zeroed (dropout, erasure), altered by bit errors (bitflip), or noisy (awgn: all)
    delay_s: float  # link time: the channel's transmission time, else the original's random delay


class SplitLink:
    """Cut a decoder-only model after decoder layer `split` and impair the hidden state that crosses.

    Randomness comes from a seeded CPU torch.Generator, so the same seed gives the same masks on
    any device. Losses compare one uniform field per transfer (per element or per packet) against
    the loss probability, so masks at different probabilities are nested. Every transfer is
    recorded in `self.transfers`.

    set_dropout(p) selects the original's link; set_channel(cfg, mode) a physical one.
    """

    def __init__(self, model: torch.nn.Module, split: int = 0, dropout: float = 0.0, seed: int = 0,
                 delay_range_s: tuple[float, float] = DELAY_RANGE_S, sleep: bool = False):
        self.layers = find_decoder_layers(model)
        self.n_layers = len(self.layers)
        self.delay_range_s = delay_range_s
        self.sleep = sleep  # really wait for each transfer's delay (off: accounted only)
        self.mode = "dropout"
        self.channel: channel.LinkConfig | None = None  # the physical operating point, if any
        self.dropout = validate_probability(dropout)  # loss probability: per element, or per packet (erasure)
        self.withheld = 0.0  # share of elements the UE deliberately does not send (zero at the edge, no air time)
        self.ber = 0.0  # bit error rate of the bitflip mode
        self.generator = torch.Generator(device="cpu")
        self._delay_rng = random.Random()
        self.reseed(seed)
        self.transfers: list[Transfer] = []
        self._handle = None
        self.split = self._validate_split(split)
        self.attach()

    # --- configuration -------------------------------------------------------------------------
    def _validate_split(self, split: int) -> int:
        if isinstance(split, bool) or int(split) != split or not 0 <= split < self.n_layers:
            raise UserError(
                f"split {split} is outside the model's decoder layers: valid 0..{self.n_layers - 1} "
                f"(0-based; split n puts n + 1 of {self.n_layers} layers on the UE)"
            )
        return int(split)

    def set_split(self, split: int) -> None:
        self.split = self._validate_split(split)
        if self._handle is not None:
            self.attach()

    def set_dropout(self, p: float) -> None:
        """The original's link: each element lost with probability p."""
        self.mode, self.channel = "dropout", None
        self.dropout = validate_probability(p)

    def set_withheld(self, share: float) -> None:
        """Withhold a share of the activation: those elements are not sent (the edge zero-fills them,
        knowing which from the shared seed), which shortens the transmission; the rest cross the link."""
        self.withheld = validate_probability(share, "withheld share")

    def set_channel(self, cfg: channel.LinkConfig, mode: str = "erasure") -> None:
        """A physical link at operating point `cfg` (SNR, modulation, fading, packets)."""
        if mode not in LINK_MODES[1:]:
            raise UserError(f"unknown link mode {mode!r} for a channel: use one of {', '.join(LINK_MODES[1:])}")
        if mode == "bitflip" and cfg.bits_per_element not in WIRE_DTYPES:
            raise UserError(f"bitflip flips the bits of float16 or float32: use 16 or 32 bits per element, "
                            f"not {cfg.bits_per_element}")
        self.mode, self.channel = mode, cfg
        self.dropout = channel.packet_error_rate(cfg) if mode == "erasure" else 0.0
        self.ber = channel.average_ber(cfg.modulation, cfg.snr_db, cfg.fading, cfg.nakagami_m) if mode == "bitflip" else 0.0

    @property
    def element_loss(self) -> float:
        """Probability that an element arrives zeroed (withheld, dropout, erasure) or altered (bitflip)."""
        if self.mode == "bitflip":
            on_air = -math.expm1(self.channel.bits_per_element * math.log1p(-self.ber))
        else:
            on_air = 0.0 if self.mode == "awgn" else self.dropout
        return self.withheld + (1.0 - self.withheld) * on_air

    def reseed(self, seed: int) -> None:
        """Restart the mask and delay streams: evaluations that reseed alike see identical masks."""
        self.generator.manual_seed(int(seed))
        self._delay_rng.seed(int(seed))

    def attach(self) -> None:
        self.detach()
        self._handle = self.layers[self.split].register_forward_hook(self._hook)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def attached(self) -> bool:
        return self._handle is not None

    # --- statistics ----------------------------------------------------------------------------
    def reset_stats(self) -> None:
        self.transfers = []

    @property
    def impaired_fraction(self) -> float:
        elements = sum(t.elements for t in self.transfers)
        return sum(t.impaired for t in self.transfers) / elements if elements else 0.0

    @property
    def total_delay_s(self) -> float:
        return sum(t.delay_s for t in self.transfers)

    # --- the link itself -----------------------------------------------------------------------
    def _uniform(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, dtype=torch.float32)

    def _packet_mask(self, lost_packets: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Spread a per-packet flag over the packet's k consecutive elements (token-major order)."""
        k = self.channel.elements_per_packet if self.channel else 1
        return lost_packets.repeat_interleave(k)[: hidden.numel()].view(hidden.shape).to(hidden.device)

    def _fades(self, n_packets: int) -> torch.Tensor:
        """|h| per packet: |h|^2 ~ Gamma(m, 1/m) by inverse CDF of the seeded uniforms (AWGN: 1)."""
        m = self.channel.fade_m
        if math.isinf(m):
            return torch.ones(n_packets)
        u = self._uniform(n_packets).double().clamp_(1e-12, 1 - 1e-12).numpy()
        return torch.from_numpy(np.sqrt(special.gammaincinv(m, u) / m)).float()

    def transmit(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the edge receives for `hidden` (batch x tokens x hidden size)."""
        n = hidden.numel()
        impaired = 0
        sent = n
        if self.mode in ("dropout", "erasure") and (self.dropout > 0.0 or self.withheld > 0.0):
            k = self.channel.elements_per_packet if self.channel else 1
            packet_field = self._uniform(math.ceil(n / k))  # drawn first: no withholding keeps the same masks
            if self.withheld > 0.0:
                kept = self._uniform(n).view(hidden.shape) >= self.withheld
                sent = int(kept.sum())
                # packets are filled with the kept elements in order; each kept element takes its packet's fate
                packet_of = (torch.cumsum(kept.flatten(), 0) - 1) // k
                lost = ~kept | (kept & (packet_field[packet_of.clamp_(min=0)] < self.dropout).view(hidden.shape))
                lost = lost.to(hidden.device)
            else:
                lost = self._packet_mask(packet_field < self.dropout, hidden)
            hidden = hidden.masked_fill(lost, 0.0)
            impaired = int(lost.sum())
        elif self.mode == "awgn":
            k = self.channel.elements_per_packet
            fades = self._packet_mask(self._fades(math.ceil(n / k)), hidden)
            power = hidden.float().pow(2).mean()
            noise_std = torch.sqrt(power / 10.0 ** (self.channel.snr_db / 10.0))
            noise = torch.randn(hidden.shape, generator=self.generator).to(hidden.device)
            hidden = (hidden.float() + noise * noise_std / fades).to(hidden.dtype)
            impaired = n
        elif self.mode == "bitflip" and self.ber > 0.0:
            hidden, impaired = self._flip_bits(hidden)
        if self.mode in ("awgn", "bitflip") and self.withheld > 0.0:
            kept = (self._uniform(n).view(hidden.shape) >= self.withheld).to(hidden.device)
            sent = int(kept.sum())
            hidden = hidden.masked_fill(~kept, 0.0)
            impaired = n if self.mode == "awgn" else impaired + int((~kept).sum())  # bitflip: an upper bound
        if self.channel is not None:
            bits = math.ceil(sent / self.channel.elements_per_packet) * self.channel.bits_per_packet
            delay = bits / channel.achievable_rate_bps(self.channel)
        else:
            bits = sent * hidden.element_size() * 8
            delay = self._delay_rng.uniform(*self.delay_range_s)
        if self.sleep:
            time.sleep(delay)
        self.transfers.append(Transfer(tokens=n // hidden.shape[-1], elements=n, bits=bits, impaired=impaired,
                                       delay_s=delay))
        return hidden

    def _flip_bits(self, hidden: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Send `hidden` as float16/float32 and flip each bit independently with probability BER."""
        bits = self.channel.bits_per_element
        wire = hidden.to(WIRE_DTYPES[bits]).cpu()
        as_int = wire.view(torch.int16 if bits == 16 else torch.int32)
        flips = (self._uniform(wire.numel() * bits) < self.ber).view(*wire.shape, bits)
        weights = torch.tensor([1 << b for b in range(bits)], dtype=torch.int64)
        mask = (flips.long() * weights).sum(-1)
        mask = torch.where(mask >= 2 ** (bits - 1), mask - 2**bits, mask).to(as_int.dtype)  # as a signed int
        received = (as_int ^ mask).view(wire.dtype)
        return received.to(device=hidden.device, dtype=hidden.dtype), int(flips.any(-1).sum())

    def _hook(self, module, args, output):
        if isinstance(output, tuple):  # older transformers and some architectures return (hidden, ...)
            return (self.transmit(output[0]),) + tuple(output[1:])
        return self.transmit(output)


class LlamaForCausalLMWithChannel(LlamaForCausalLM):
    """LlamaForCausalLM with the original's channel controls, built on SplitLink.

    set_dropout_prob(p) and set_specified_layers(n) keep the original's meaning: each element of
    the hidden state after 0-based decoder layer n is zeroed with probability p. A fresh model has
    p = 0, so it computes exactly what LlamaForCausalLM computes until told otherwise.
    """

    def __init__(self, config):
        super().__init__(config)
        self.link = SplitLink(self, split=0, dropout=0.0)

    def set_dropout_prob(self, p: float) -> None:
        self.link.set_dropout(p)

    def set_specified_layers(self, n: int) -> None:
        self.link.set_split(n)
