"""The split-layer link: where the model is cut and what the wireless link does to what crosses it.

Layers 0..split run on the user equipment (UE); the hidden state after 0-based decoder layer
`split` crosses the uplink to the edge server, which runs the remaining layers and the LM head.
So split n means n + 1 layers on the UE, as in the original code.

The link is a forward hook on that decoder layer (no copied model code, so it survives
transformers upgrades and attaches to any decoder-only model). What it does to the hidden state
is the impairment engine's (uplink.py: dropout, erasure, awgn, bitflip, withholding), drawn from
the link's seeded stream (reseed), one transfer per forward pass.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
from transformers import LlamaForCausalLM

from . import UserError, channel, links, uplink
from .models import find_decoder_layers

DELAY_RANGE_S = (0.005, 0.01)  # the original's per-transfer delay, U(5 ms, 10 ms), used when no channel is set


@dataclass
class Transfer:
    """One crossing of the link: one forward pass's hidden state at the split."""

    tokens: int  # positions that crossed (batch x sequence); 1 per decoding step with a KV cache
    elements: int  # numbers sent: tokens x hidden size
    # bits on air: packets with headers under a channel (the protected path's expected), else the dtype's size
    bits: float
    impaired: int  # elements zeroed (dropout, erasure), altered by bit errors (bitflip), or noisy (awgn: all)
    delay_s: float  # link time: the channel's transmission time, else the original's random delay


class SplitLink:
    """Cut a decoder-only model after decoder layer `split` and impair the hidden state that crosses.

    Randomness comes from a seeded CPU torch.Generator, so the same seed gives the same masks on
    any device (mask_device: another device's generator, as the sweep uses on an accelerator). Losses
    compare one uniform field per transfer (per element or per packet) against
    the loss probability, so masks at different probabilities are nested. Every transfer is
    recorded in `self.transfers`.

    set_dropout(p) selects the original's link; set_channel(cfg, mode) a physical one; set_link(link) any.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        split: int = 0,
        dropout: float = 0.0,
        seed: int = 0,
        delay_range_s: tuple[float, float] = DELAY_RANGE_S,
        sleep: bool = False,
        mask_device: str | torch.device = "cpu",
    ):
        self.layers = find_decoder_layers(model)
        self.n_layers = len(self.layers)
        self.hidden_size = getattr(getattr(model, "config", None), "hidden_size", None)
        self.delay_range_s = delay_range_s
        self.sleep = sleep  # really wait for each transfer's delay (off: accounted only)
        self.impairment = links.direct(dropout)  # what the link does: the original's p until told otherwise
        self.generator = uplink.generator(seed, mask_device)
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
        self.set_link(links.OriginalLink(p))

    def set_withheld(self, share: float) -> None:
        """Withhold a share of the activation: those elements are not sent (the edge zero-fills them,
        knowing which from the shared seed), which shortens the transmission; the rest cross the link."""
        self.impairment = self.impairment.withholding(share)

    def set_channel(self, cfg: channel.LinkConfig, mode: str = "erasure") -> None:
        """A physical link at operating point `cfg` (SNR, modulation, fading, packets)."""
        self.impairment = links.physical(cfg, mode, self.impairment.withheld).protecting(self.impairment.protect)

    def set_link(self, link: links.Link) -> None:
        """Any link (links.py), keeping the share withheld and the protection."""
        self.impairment = links.impairment(link, self.impairment.withheld).protecting(self.impairment.protect)

    def set_protect(self, k: int) -> None:
        """Send each token's k largest-magnitude elements over the protected path too (protect_arq.py).
        A k beyond the model's width is refused here, before anything runs, not at the first transfer."""
        impairment = self.impairment.protecting(k)
        if self.hidden_size is not None:
            uplink.check_protect(impairment.protect, self.hidden_size)
        self.impairment = impairment

    # what the link does now, read from its impairment
    mode = property(lambda self: self.impairment.mode)
    channel = property(lambda self: self.impairment.channel)
    dropout = property(lambda self: self.impairment.loss, doc="loss probability: per element, or per packet (erasure)")
    withheld = property(lambda self: self.impairment.withheld)
    ber = property(lambda self: self.impairment.ber)
    element_loss = property(lambda self: self.impairment.element_loss)

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

    # --- the link itself: the impairment engine (uplink.py) on this transfer's elements -----------------
    def transmit(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the edge receives for `hidden` (batch x tokens x hidden size)."""
        tokens = hidden.numel() // hidden.shape[-1]
        hidden, impaired, sent = uplink.impair(hidden, self.impairment, self.generator)
        bits, delay = self.impairment.link.transfer(
            sent,
            tokens,
            hidden.shape[-1],
            self.impairment.protect,
            hidden.element_size() * 8,
            lambda: self._delay_rng.uniform(*self.delay_range_s),  # the original's delay, drawn only there
        )
        if self.sleep:
            time.sleep(delay)
        self.transfers.append(
            Transfer(tokens=tokens, elements=hidden.numel(), bits=bits, impaired=impaired, delay_s=delay)
        )
        return hidden

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
