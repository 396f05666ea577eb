"""Link modes and the grid of channel conditions a model is measured under.

Light on purpose (no torch): the scripts build their command lines from it before importing models.
The link modes are the impairment engine's (uplink.py says what each does).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import UserError

LINK_MODES = (
    "dropout",
    "erasure",
    "awgn",
    "bitflip",
    "nr",
    "burst",
    "nr_burst",
)  # the original's direct p, then the physical links
# serve.py's simulated uplink: loss-free, or the physical links that act on packets and bits (awgn acts
# on values, and withholding would need the edge to know which elements are missing)
SERVED_LINKS = ("none", "erasure", "bitflip", "nr")
PAPER_DROPOUTS = (0.02, 0.06, 0.10, 0.14, 0.18, 0.22, 0.26, 0.30)  # the original's grid of p

# How the sweep runs its grid (sweep.py)
CPU_BATCH = 16  # impaired variants per suffix forward where no accelerator's memory decides (sweep.auto_batch_size)
GPU_MEMORY_SHARE = 0.8  # share of a GPU's free memory the auto batch may fill
# Where the fast and naive paths draw mask fields. auto: on the model's device (on a CPU the same numbers
# as ever; on a GPU its own seeded Philox streams, no host work or copy per variant); cpu: on the CPU
# whatever the device (the CPU's numbers everywhere, at a host draw and copy per variant).
MASK_DEVICES = ("auto", "cpu")


def validate_probability(p: float, name: str = "dropout") -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:  # also rejects NaN
        raise UserError(f"{name} probability {p} is outside [0, 1]")
    return p


@dataclass(frozen=True)
class Condition:
    """One channel condition: the original's direct p, or a physical link at an SNR."""

    link: str
    dropout: float | None = None  # requested p (dropout link only)
    snr_db: float | None = None  # Es/N0 (physical links only)
    withheld: float = 0.0  # share of the activation the UE deliberately does not send (physical links)
    protect: int = 0  # each token's K largest elements also cross the protected path (uplink.protected)

    @property
    def physical(self) -> bool:
        """A physical link's condition (at an SNR), not the original's direct p (links.py: Link.physical)."""
        return self.snr_db is not None

    @property
    def label(self) -> str:
        protected = f", K={self.protect}" if self.protect else ""
        if not self.physical:
            return f"p={self.dropout:g}{protected}"
        return (
            f"{self.link} {self.snr_db:g} dB" + (f", {self.withheld:.0%} withheld" if self.withheld else "") + protected
        )


def make_conditions(
    dropouts: list[float], snrs: list[float], link: str, withheld: list[float] = (), protects: list[int] = ()
) -> list[Condition]:
    """The clean reference (p = 0) first, then each p, then each SNR with the physical `link`, once
    with the whole activation sent and once per share in `withheld`; each of these once unprotected and
    once per K in `protects` (K elements per token over the protected path)."""
    if any(isinstance(k, bool) or k != int(k) or k < 0 for k in protects):
        raise UserError(f"--protects {list(protects)}: give numbers of elements per token >= 0")
    for p in dropouts:
        validate_probability(p)
    for w in withheld:
        validate_probability(w, "withheld share")
    if withheld and not snrs:
        raise UserError("--withheld applies to the physical link: give --snrs too")
    if snrs:
        from .links import LINKS  # here, not above: links.py imports this module

        physical = [name for name, kind in LINKS.items() if kind.physical]
        if link not in physical:
            raise UserError(f"SNR conditions need a physical link: {', '.join(physical)}, not {link!r}")
    ks = sorted({0, *(int(k) for k in protects)})
    conditions = [Condition("dropout", 0.0)] + [
        Condition("dropout", p, protect=k) for p in sorted(set(dropouts)) if p > 0 for k in ks
    ]
    shares = sorted({0.0, *withheld})
    conditions += [
        Condition(link, snr_db=s, withheld=w, protect=k) for s in sorted(set(snrs)) for w in shares for k in ks
    ]
    if len(conditions) == 1:
        raise UserError("the grid has no channel condition: give --dropouts and/or --snrs")
    return conditions


def is_clean(condition: Condition) -> bool:
    return not condition.physical and condition.dropout == 0.0


def draws_of(condition: Condition, draws: int) -> int:
    return 1 if is_clean(condition) else draws  # clean is deterministic
