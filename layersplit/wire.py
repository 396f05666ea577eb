"""What crosses the link: an activation's wire format and its packets.

Light on purpose (numpy; torch only inside encode and decode): the scripts read these tables to
build their command lines before torch is imported.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from . import UserError

if TYPE_CHECKING:
    import torch

# wire format -> (bytes per element, numpy dtype of the encoded elements): bf16 is carried as its int16
# bits; int8 is symmetric with one float32 absmax scale per token (sent in the frame, not in packets)
WIRE_FORMATS = {"fp32": (4, "<f4"), "fp16": (2, "<f2"), "bf16": (2, "<i2"), "int8": (1, "i1")}
BITFLIP_WIRE = {16: "fp16", 32: "fp32"}  # bits per element -> the float format the split hook flips


def encode(hidden: torch.Tensor, wire: str) -> tuple[np.ndarray, np.ndarray | None]:
    """... x d activations -> (the elements' bytes in token-major order, per-token scales for int8)."""
    import torch

    if wire not in WIRE_FORMATS:
        raise UserError(f"unknown wire dtype {wire!r}: use one of {', '.join(WIRE_FORMATS)}")
    x = hidden.detach().to("cpu")
    scales = None
    if wire == "fp32":
        arr = x.float().numpy().astype("<f4", copy=False)
    elif wire == "fp16":
        arr = x.half().numpy().astype("<f2", copy=False)
    elif wire == "bf16":
        arr = x.bfloat16().view(torch.int16).numpy().astype("<i2", copy=False)
    else:
        xf = x.float()
        absmax = xf.abs().amax(dim=-1, keepdim=True)
        scale = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
        arr = torch.round(xf / scale).clamp_(-127, 127).to(torch.int8).numpy()
        scales = scale.squeeze(-1).numpy().astype("<f4").reshape(-1)
    # a copy, never a view of the activation: callers flip bits in these bytes in place
    return np.array(arr, order="C", copy=True).reshape(-1).view(np.uint8), scales


def decode(data: np.ndarray, scales: np.ndarray | None, shape: tuple[int, ...], wire: str) -> torch.Tensor:
    """Inverse of encode: a float32 tensor of `shape` (zero bytes decode to 0.0)."""
    import torch

    arr = np.frombuffer(data.tobytes(), dtype=WIRE_FORMATS[wire][1]).reshape(shape)
    if wire == "bf16":
        return torch.from_numpy(arr.astype(np.int16)).view(torch.bfloat16).float()
    out = torch.from_numpy(arr.astype(np.float32))
    if wire == "int8":
        out *= torch.from_numpy(scales.astype(np.float32)).view(*shape[:-1], 1)
    return out


def wire_bits(wire: str) -> int:
    return 8 * WIRE_FORMATS[wire][0]


def n_packets(elements: int, elements_per_packet: int) -> int:
    return math.ceil(elements / elements_per_packet)
