"""An edge session: what the edge keeps for one request (EdgeSession), and the OPEN that starts one (check_open)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from ..segments import SegmentCache, StaticSegmentCache
from ..wire import WIRE_FORMATS
from .protocol import MAX_ELEMENTS_PER_PACKET, PROTOCOL_VERSION, TOKEN_ENV, ProtocolError


@dataclass
class EdgeSession:
    """One request on the edge: its split, wire format and KV cache."""

    id: int
    split: int
    wire: str
    elements_per_packet: int
    cache: SegmentCache | StaticSegmentCache
    protect: int = 0  # K: each token's protected elements in every ACTIVATION (protocol.py)
    step: int = 0  # the next ACTIVATION step expected
    context: int = 0  # tokens in the KV cache
    bytes_in: int = 0
    packets: int = 0
    packets_missing: int = 0
    edge_s: float = 0.0


def check_open(req: dict, token: str | None, fingerprint: dict, splits: list[int]) -> tuple[int, str, int, int]:
    """(split, wire dtype, elements per packet, protect) of an OPEN that an edge with this `token`
    (None: none), model `fingerprint` and served `splits` serves; ProtocolError otherwise (code
    "unauthorized" first, when the token is missing or wrong)."""
    if token is not None:  # first: the messages below would tell a stranger the model and splits
        theirs = req.get("token")
        if not isinstance(theirs, str) or not hmac.compare_digest(theirs.encode(), token.encode()):
            hint = f"give it with --token or {TOKEN_ENV}" if theirs is None else "this one is wrong"
            raise ProtocolError("unauthorized", f"this edge serves only UEs with its token: {hint}")
    if req.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolError(
            "malformed", f"OPEN for protocol {req.get('protocol')!r}; this edge speaks {PROTOCOL_VERSION}"
        )
    mine = fingerprint
    theirs = req.get("model")
    if not isinstance(theirs, dict) or any(
        theirs.get(k) != mine[k] for k in ("model_type", "n_layers", "hidden_size", "vocab_size")
    ):
        raise ProtocolError("bad_model", f"the UE runs {theirs!r}; this edge serves {mine}")
    split, wire, k = req.get("split"), req.get("wire"), req.get("elements_per_packet")
    if isinstance(split, bool) or not isinstance(split, int) or split not in splits:
        raise ProtocolError(
            "bad_split",
            f"split {split!r} cannot be served: this edge serves "
            f"splits {format_splits(splits)} (0-based: split n puts n + 1 of {mine['n_layers']} "
            "layers on the UE)",
        )
    if wire not in WIRE_FORMATS:
        raise ProtocolError("malformed", f"unknown wire dtype {wire!r}: use one of {', '.join(WIRE_FORMATS)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_ELEMENTS_PER_PACKET:
        raise ProtocolError("malformed", f"elements_per_packet {k!r} outside 1..{MAX_ELEMENTS_PER_PACKET}")
    protect = req.get("protect", 0)
    if isinstance(protect, bool) or not isinstance(protect, int) or not 0 <= protect <= mine["hidden_size"]:
        raise ProtocolError(
            "malformed", f"protect {protect!r} outside 0..{mine['hidden_size']} (elements per token of this model)"
        )
    return split, wire, k, protect


def format_splits(splits: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3,7'."""
    parts, i = [], 0
    while i < len(splits):
        j = i
        while j + 1 < len(splits) and splits[j + 1] == splits[j] + 1:
            j += 1
        parts.append(str(splits[i]) if i == j else f"{splits[i]}-{splits[j]}")
        i = j + 1
    return ",".join(parts)
