"""The one impairment engine: what the air does to what crosses the uplink (wire.py: what crosses).

Everything here is a pure function of the activation of one transfer (its elements in token-major
order, cut into packets of k consecutive elements) and of a seeded random stream. The split hook
(link.SplitLink: add_noise.py, the LLM environment), the sweep and serve.py's simulated uplink all
call these functions, so the same seed, link, SNR and tokens impair the same elements everywhere.

Links (links.py, one class each, which picks its function here: erase, noisy, flipped):
    dropout  the original: each element lost with probability p (packets of one element)
    erasure  each packet of k elements lost with the channel's packet error rate (failed CRC)
    burst    erasure in a fade held for a coherence time: consecutive packets share it and are lost together
    awgn     y + n / |h| on power-normalised activations: one fade per packet, zero-forcing
    bitflip  raw bit errors on the wire format's bytes, no CRC (a stress test)
    nr       5G NR transport blocks (nr.py): each TB of the activation lost with its residual BLER after
             HARQ at the MCS link adaptation picks (erasure with TBs for packets)
    nr_burst nr with the fade held for a coherence time: the TBs sent in it are lost together or arrive
On top of any mode the UE may withhold a share of the elements (not sent; the edge zero-fills
them); with dropout and erasure the packets are then filled with the elements that are sent.

One seeding scheme: the randomness of a unit of work is a torch.Generator seeded with
stream_seed(seed, unit, draw), and its transfers draw from it in order. The generator is a CPU one
everywhere except in the sweep on an accelerator, which draws its fields on the device (mask_device:
the same Bernoulli marginals and nesting from another stream, without a host-to-device copy per
variant). The sweep's unit is a (window, draw), with one transfer; serve.py's is a request (draw 0),
whose steps are its transfers; add_noise.py's is its run (unit 0, draw 0), so
`add_noise.py --generate` at a seed impairs what serve.py's first request at that seed does. Losses
compare one uniform field per transfer with the loss probability, so masks at different
probabilities are nested.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import special

from . import UserError, channel, wire
from .grid import validate_probability

if TYPE_CHECKING:
    from .links import Link


@dataclass(frozen=True)
class Impairment:
    """What the link does to a transfer: a link (links.py) at its operating point, and what the UE chooses."""

    link: Link  # links.Link: which engine function below impairs the transfer, and its packets
    loss: float = 0.0  # probability that an element (dropout) or a packet (erasure, nr: a TB) is lost
    ber: float = 0.0  # bit error rate (bitflip)
    withheld: float = 0.0  # share of the elements the UE does not send
    protect: int = 0  # each token's K largest-magnitude elements also go over the protected path (protect_arq.py)

    mode = property(lambda self: self.link.name)
    channel = property(lambda self: self.link.cfg, doc="the physical operating point (None: the original's p)")
    elements_per_packet = property(lambda self: self.link.elements_per_packet)

    @property
    def element_loss(self) -> float:
        """Probability that an element arrives zeroed (withheld, dropout, erasure) or altered (bitflip)."""
        return self.withheld + (1.0 - self.withheld) * self.link.on_air_element_loss(self)

    def withholding(self, share: float) -> "Impairment":
        return replace(self, withheld=validate_probability(share, "withheld share"))

    def protecting(self, k: int) -> "Impairment":
        if isinstance(k, bool) or int(k) != k or k < 0:
            raise UserError(f"--protect {k!r}: give a number of elements per token >= 0")
        self.link.check_protect(k)
        return replace(self, protect=int(k))


def check_protect(k: int, hidden_size: int) -> None:
    """--protect k fits a token of hidden_size elements."""
    if k > hidden_size:
        raise UserError(f"--protect {k}: a token has only {hidden_size} elements")


def protected(hidden: torch.Tensor, k: int) -> torch.Tensor:
    """Flags of each token's k largest-magnitude elements (what --protect k sends over the protected path)."""
    check_protect(k, hidden.shape[-1])
    flags = torch.zeros(hidden.shape, dtype=torch.bool, device=hidden.device)
    return flags.scatter_(-1, hidden.abs().topk(k, dim=-1).indices, True)


def protected_arrived(keep: torch.Tensor, link: Link, protect: int, gen: torch.Generator) -> torch.Tensor:
    """The flags `keep` (each token's `protect` elements on the protected path over `link`) less those whose
    packet (TB) the protected path never delivers: the pairs fill its packets in order (token by token, by
    increasing index), a packet is lost with the design's loss (Link.protected_cost), from one uniform field of
    gen's side stream (side_stream: gen does not move), and a pair is lost with either packet it spans."""
    d = keep.shape[-1]
    tokens = keep.numel() // d
    cost = link.protected_cost(tokens, protect, d)
    if not cost.unit_loss > 0.0:
        return keep
    pair_bits = math.ceil(math.log2(d)) + link.cfg.bits_per_element
    pairs = tokens * protect
    lost_units = uniform(math.ceil(pairs * pair_bits / cost.unit_bits), side_stream(gen)) < cost.unit_loss
    start = torch.arange(pairs, device=lost_units.device) * pair_bits
    lost = lost_units[start // cost.unit_bits] | lost_units[(start + pair_bits - 1) // cost.unit_bits]
    flat = keep.flatten().clone()
    flat[flat.nonzero().squeeze(1)[lost.to(flat.device)]] = False
    return flat.view(keep.shape)


def impair(hidden: torch.Tensor, imp: Impairment, gen: torch.Generator) -> tuple[torch.Tensor, int, int]:
    """(what the edge receives for `hidden`, elements impaired, elements sent on the ordinary path): one
    transfer, drawn from `gen` in a fixed order (the packet field, then the withheld field; the protected path's
    losses from its side stream: protected_arrived): the rest is impaired exactly as without them."""
    received, impaired, sent = _impair(hidden, imp, gen)
    return received, int(impaired), int(sent)


def received(hidden: torch.Tensor, imp: Impairment, gen: torch.Generator) -> torch.Tensor:
    """What the edge receives (impair's first value, the same draws) without counting: on an
    accelerator this waits for nothing, so the sweep queues its variants without a host sync each."""
    return _impair(hidden, imp, gen)[0]


def _impair(hidden: torch.Tensor, imp: Impairment, gen: torch.Generator):
    """impair() with the counts as 0-d tensors where they come from the device (not read yet)."""
    received, impaired, sent = imp.link.corrupt(hidden, imp, gen)  # the link picks its function below
    if imp.protect:
        keep = protected_arrived(protected(hidden, imp.protect), imp.link, imp.protect, gen)
        received = torch.where(keep, hidden, received)
        impaired = hidden.numel() - keep.sum() if imp.link.alters_every_element else (received != hidden).sum()
    return received, impaired, sent


# --- what each link does to a transfer (links.py picks one): (received, impaired, sent) ----------------
def erase(hidden: torch.Tensor, imp: Impairment, gen: torch.Generator):
    """dropout, erasure, nr: the elements of lost packets (and the withheld ones) arrive zeroed."""
    n, k = hidden.numel(), imp.elements_per_packet
    if not (imp.loss > 0.0 or imp.withheld > 0.0):
        return hidden, 0, n
    lost, sent = lost_elements(n, k, imp.loss, imp.withheld, gen)
    lost = lost.view(hidden.shape).to(hidden.device)
    return hidden.masked_fill(lost, 0.0), lost.sum(), sent


def erase_in_bursts(hidden: torch.Tensor, imp: Impairment, gen: torch.Generator):
    """burst, nr_burst: erasure whose packets (TBs) share a fade for a coherence time, so they are lost together
    (each packet's loss in its fade: the link's fade_losses, burst_loss or nr_burst_loss)."""
    n, k = hidden.numel(), imp.elements_per_packet
    loss = imp.link.fade_losses(math.ceil(n / k), gen)
    lost, sent = lost_elements(n, k, loss, imp.withheld, gen)
    lost = lost.view(hidden.shape).to(hidden.device)
    return hidden.masked_fill(lost, 0.0), lost.sum(), sent


def noisy(hidden: torch.Tensor, imp: Impairment, gen: torch.Generator):
    """awgn: every element arrives noisy (the withheld ones zeroed)."""
    n = hidden.numel()
    hidden = add_noise(hidden, imp.channel.snr_db, imp.channel.fade_m, imp.elements_per_packet, gen)
    hidden, sent, _ = _withhold(hidden, imp, gen)
    return hidden, n, sent


def flipped(hidden: torch.Tensor, imp: Impairment, gen: torch.Generator):
    """bitflip: bit errors on the wire bytes; the impaired count is an upper bound with withholding."""
    impaired = 0
    if imp.ber > 0.0:
        fmt = wire.BITFLIP_WIRE[imp.channel.bits_per_element]
        data, _ = wire.encode(hidden, fmt)
        flips = flip_bits(data, imp.ber, gen)
        hidden = wire.decode(data, None, tuple(hidden.shape), fmt).to(device=hidden.device, dtype=hidden.dtype)
        impaired = len(np.unique(flips // imp.channel.bits_per_element))
    hidden, sent, withheld = _withhold(hidden, imp, gen)
    return hidden, impaired + withheld, sent


def _withhold(hidden: torch.Tensor, imp: Impairment, gen: torch.Generator):
    """(hidden with the withheld elements zeroed, elements sent, elements withheld) for the links that send
    every packet (awgn, bitflip); drawn after the link's own field."""
    n = hidden.numel()
    if not imp.withheld > 0.0:
        return hidden, n, 0
    withheld = withheld_elements(n, imp.withheld, gen).view(hidden.shape).to(hidden.device)
    count = withheld.sum()
    return hidden.masked_fill(withheld, 0.0), n - count, count


def stream_seed(seed: int, unit: int, draw: int = 0) -> int:
    """The generator seed of one unit of work: independent of split, condition and order of work."""
    return int(np.random.SeedSequence([int(seed), int(unit), int(draw)]).generate_state(1)[0])


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The stream of one unit of work. A CPU generator gives the same fields on any device; one on an
    accelerator (its Philox stream) gives other fields of the same distribution, drawn where they are used."""
    return torch.Generator(device=device).manual_seed(int(seed))


def side_stream(gen: torch.Generator) -> torch.Generator:
    """A stream for draws that must leave `gen` where it is: seeded from gen's state (the same state, the same
    side stream), which it only reads. The protected path draws from it, so that what the ordinary path loses,
    in this transfer and the next ones of the stream, does not depend on K."""
    digest = hashlib.blake2b(gen.get_state().cpu().numpy().tobytes(), digest_size=8).digest()
    return generator(int.from_bytes(digest, "little"), gen.device)


def uniform(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen, dtype=torch.float32, device=gen.device)


# --- losses: dropout, erasure, withholding ------------------------------------------------------------
def lost_elements(
    n: int, k: int, loss: float, withheld: float, gen: torch.Generator
) -> tuple[torch.Tensor, int | torch.Tensor]:
    """(flags of the n elements that do not arrive, elements sent) for packets of k elements lost
    with probability `loss` (dropout: k = 1; burst: a tensor, one per packet) after a share `withheld` of
    elements is not sent. The count sent is a 0-d tensor with withholding (on the generator's device: read
    it when needed)."""
    packet_field = uniform(math.ceil(n / k), gen)  # drawn first: no withholding keeps the same masks
    if withheld <= 0.0:
        lost = packet_field.lt(loss)
        return (lost if k == 1 else lost.repeat_interleave(k)[:n]), n
    kept = uniform(n, gen) >= withheld
    # packets are filled with the kept elements in order; each kept element takes its packet's fate
    packet_of = (torch.cumsum(kept, 0) - 1) // k
    packet_of.clamp_(min=0)
    fate = packet_field[packet_of] < (loss[packet_of] if torch.is_tensor(loss) else loss)
    return ~kept | (kept & fate), kept.sum()


def burst_loss(n_packets: int, cfg, gen: torch.Generator) -> torch.Tensor:
    """Each packet's loss probability when consecutive packets share a fade for channel.coherence_packets(cfg)
    packets: the transfer starts at a uniform point of a coherence interval, each interval draws one fade
    |h|^2 ~ Gamma(m, 1/m) (fades), and a packet is lost with channel.packet_loss_in_fade at its interval's fade.
    Its mean over the fades is the packet error rate: bursts change how losses cluster, not how many there are.
    Drawn first: one uniform for the offset, then one per interval."""
    if not cfg.block_fading:  # independent bit errors at the fade-averaged BER: no fade to hold
        return torch.full((n_packets,), channel.packet_error_rate(cfg), device=gen.device)

    def in_fades(intervals: int) -> torch.Tensor:
        gain = fades(intervals, cfg.fade_m, gen).double().pow(2).numpy()
        return torch.from_numpy(channel.packet_loss_in_fade(cfg, gain)).float()

    return _held_for_intervals(n_packets, channel.coherence_packets(cfg), in_fades, gen)


def nr_burst_loss(n_tbs: int, point, gen: torch.Generator) -> torch.Tensor:
    """Each TB's loss after HARQ (0 or 1) when consecutive TBs share a fade for point.coherence_tbs TBs: the
    transfer starts at a uniform point of a coherence interval, and each interval's TBs are all lost with
    probability point.residual, or all arrive. This is the limit of a steep LDPC waterfall: on AWGN the
    BLER falls from every TB lost to none within 2 dB at every MCS measured (results/nr_bler_awgn.csv), steep
    against how far the fades of a TDL channel move the SNR, so a fade either carries the MCS after HARQ or not.
    Its mean is the residual, as nr's; of the models at that mean it is the burstiest (nr's independent TB
    losses are the other end). Drawn first: one uniform for the offset, then one per interval."""
    return _held_for_intervals(
        n_tbs, point.coherence_tbs, lambda intervals: (uniform(intervals, gen) < point.residual).float(), gen
    )


def _held_for_intervals(n_packets: int, per_interval: int, interval_losses, gen: torch.Generator) -> torch.Tensor:
    """Per packet, the loss of its coherence interval (interval_losses(count), drawn after the offset)."""
    offset = int(uniform(1, gen).item() * per_interval)
    intervals = (offset + n_packets - 1) // per_interval + 1
    loss = interval_losses(intervals).to(gen.device)
    return loss.repeat_interleave(per_interval)[offset : offset + n_packets]


def lost_packets(n_packets: int, loss: float, gen: torch.Generator) -> torch.Tensor:
    """Flags of the packets lost (erasure without withholding: lost_elements' field, per packet)."""
    return uniform(n_packets, gen) < loss


def withheld_elements(n: int, withheld: float, gen: torch.Generator) -> torch.Tensor:
    """Flags of the elements not sent, for the modes that send every packet (awgn, bitflip)."""
    return uniform(n, gen) < withheld


# --- awgn ---------------------------------------------------------------------------------------------
def fades(n_packets: int, m: float, gen: torch.Generator) -> torch.Tensor:
    """|h| per packet: |h|^2 ~ Gamma(m, 1/m) by inverse CDF of seeded uniforms (m = inf: AWGN, |h| = 1)."""
    if math.isinf(m):
        return torch.ones(n_packets)
    u = uniform(n_packets, gen).double().clamp_(1e-12, 1 - 1e-12).cpu().numpy()  # scipy's inverse: on the host
    return torch.from_numpy(np.sqrt(special.gammaincinv(m, u) / m)).float()


def add_noise(x: torch.Tensor, snr_db: float, fade_m: float, k: int, gen: torch.Generator) -> torch.Tensor:
    """x + n / |h|: noise power = the activation's mean power / SNR, one fade per packet of k elements."""
    n = x.numel()
    fade = fades(math.ceil(n / k), fade_m, gen).repeat_interleave(k)[:n].view(x.shape).to(x.device)
    power = x.float().pow(2).mean()
    noise_std = torch.sqrt(power / 10.0 ** (snr_db / 10.0))
    noise = torch.randn(x.shape, generator=gen, device=gen.device).to(x.device)
    return (x.float() + noise * noise_std / fade).to(x.dtype)


# --- bit errors on the wire bytes ---------------------------------------------------------------------
def flip_bits(data: np.ndarray, ber: float, gen: torch.Generator) -> np.ndarray:
    """Flip each bit of the bytes `data` (uint8, little-endian elements) with probability ber, in place;
    return the indices of the bits flipped (bit i of byte j is bit 8 j + i)."""
    flips = torch.nonzero(uniform(data.size * 8, gen) < ber).flatten().cpu().numpy()
    np.bitwise_xor.at(data, flips // 8, (1 << (flips % 8)).astype(np.uint8))
    return flips
