"""Real split inference across two processes: the UE and the edge server over a socket.

The UE (user equipment) runs the embeddings and the first `split` decoder layers, and sends the
hidden state of each step to the edge as packets in a wire dtype (fp32, fp16, bf16, or int8 with a
per-token absmax scale). A simulated uplink decides, seeded by (seed, request, step), which packets
are lost (erasure: each packet with the channel's packet error rate at the request's SNR) or which
bits flip (bitflip: no CRC); lost packets never cross the socket, and the edge zero-fills them from
the sequence numbers it did receive. The edge runs the remaining layers and the LM head and returns
the greedy next token. Both sides keep a KV cache, so after the prompt each step sends one token's
activation. `split` always counts the decoder layers ON THE UE (1..L-1).

Model segments run through the model's own forward: a *view* of the model shares every parameter
but holds only its segment of the decoder list (and, on the UE, no final norm and no LM head), so
the edge serves any split from one loaded model and concurrent sessions never mutate shared
modules. A `SegmentCache` gives each side a KV cache whose layer indices are local to its segment.
`check_composition` verifies, at edge start-up, that UE + edge reproduce the full model's logits.

Wire protocol (version PROTOCOL_VERSION). Every frame: HEADER = magic b"LSPL", version, frame
type, 2 reserved bytes, payload length (uint32, little-endian), then the payload.
    UE -> edge  OPEN        JSON: protocol, model fingerprint, split, wire dtype, elements per packet
    edge -> UE  READY       JSON: session id, the edge's frame and context limits
    UE -> edge  ACTIVATION  ACT_HEADER (step, tokens, hidden size, packets in total, packets sent),
                            then per-token float32 scales (int8 only), then each delivered packet as
                            its uint32 sequence number and k elements (the last one zero-padded)
    edge -> UE  TOKEN       TOKEN_BODY: step, next token, packets missing, edge compute seconds
    UE -> edge  CLOSE       (empty) the request is over: the edge frees the session's KV cache
    edge -> UE  CLOSED      JSON: the session's totals
    edge -> UE  ERROR       JSON: code, message (see ERROR_CODES)
One connection carries any number of requests, one at a time; it takes one of the edge's session
slots with its first valid OPEN, which must come within a short handshake timeout. Bad framing, an
oversized frame, a malformed activation, an idle timeout or a server fault close the connection; a
refused OPEN (a split this edge does not serve, another model) or a session over the context limit
ends only that request.
"""
from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import socket
import struct
import threading
import time
import weakref
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import torch
from transformers import DynamicCache

from . import UserError, channel, sweep
from .models import find_decoder_layers

log = logging.getLogger("layersplit.serving")

# ---- protocol ---------------------------------------------------------------------------------
PROTOCOL_VERSION = 1  # bumped on any incompatible change of the frames below
MAGIC = b"LSPL"  # first bytes of every frame: a stray client or a desynchronised stream is caught at once
HEADER = struct.Struct("<4sBBHI")  # magic, version, frame type, reserved, payload length
ACT_HEADER = struct.Struct("<IIIII")  # step, tokens, hidden size, packets in total, packets sent
TOKEN_BODY = struct.Struct("<IiIf")  # step, next token, packets missing, edge compute seconds
SEQ = struct.Struct("<I")  # a packet's sequence number
OPEN, READY, ACTIVATION, TOKEN, CLOSE, CLOSED, ERROR = range(1, 8)  # frame types
FRAME_NAMES = {OPEN: "OPEN", READY: "READY", ACTIVATION: "ACTIVATION", TOKEN: "TOKEN", CLOSE: "CLOSE",
               CLOSED: "CLOSED", ERROR: "ERROR"}
ERROR_CODES = {  # code -> does the edge close the connection after it
    "busy": True, "bad_frame": True, "too_large": True, "malformed": True, "timeout": True, "internal": True,
    "bad_split": False, "bad_model": False, "too_long": False, "no_session": False,
}

# ---- limits and defaults ------------------------------------------------------------------------
DEFAULT_HOST = "127.0.0.1"  # loopback: the edge is reachable from this machine only unless told otherwise
DEFAULT_PORT = 8765  # TCP port of the edge (0: any free port, printed at start-up)
# The largest frame the edge reads. It bounds the memory one connection can make the edge allocate;
# 16 MiB holds a 2048-token prompt of SmolLM2 (d = 576) even in fp32 (4.7 MB). Wider models with
# long fp32 prompts need a larger --max-frame-bytes.
MAX_FRAME_BYTES = 16 * 2**20
MAX_CONTEXT = 2048  # tokens (prompt + generated) per session: bounds each session's KV cache
MAX_SESSIONS = 4  # sessions served at once; their steps interleave on the one model
MAX_QUEUE = 8  # connections waiting for a free session beyond that; the rest are refused as busy
QUEUE_TIMEOUT_S = 30.0  # a queued connection that waits longer is refused as busy
IDLE_TIMEOUT_S = 60.0  # the edge drops a connection that sends no complete frame for this long
# A connection takes a session slot only with its first valid OPEN, and until then each frame must come
# within HANDSHAKE_TIMEOUT_S. A UE sends OPEN as soon as it connects, so 5 s is ample even on a slow
# link, while idle or stray connections (port scans, clients that hang) are closed long before anyone
# notices; they never hold a slot, so they cannot make a real UE wait or be refused as busy.
HANDSHAKE_TIMEOUT_S = 5.0
# Connections waiting for their OPEN, each a thread blocked in recv for at most HANDSHAKE_TIMEOUT_S. A
# new connection beyond this many pushes the oldest one out: a flood of idle sockets then costs at most
# this many threads and still cannot lock a real UE out (its OPEN follows its connect within
# milliseconds, long before that many newer connections arrive).
MAX_HANDSHAKES = 64
# Frames before a session is open are small (an OPEN is some hundred bytes of JSON); this bound, not
# --max-frame-bytes, keeps MAX_HANDSHAKES strangers from making the edge allocate a gigabyte.
MAX_OPEN_FRAME_BYTES = 64 * 2**10
# The longest timeout accepted (11.6 days, in effect none). Python's socket and lock timeouts overflow
# beyond about 9.2e9 s (4.3e6 s for locks on Windows), which an --idle-timeout of inf would otherwise hit.
MAX_TIMEOUT_S = 1e6
CLIENT_TIMEOUT_S = 120.0  # the UE gives up on an edge that does not answer for this long (queueing included)
MAX_ELEMENTS_PER_PACKET = 1 << 20  # sanity bound on a session's packet size
FINAL_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm")  # the decoder's last norm

WIRE_DTYPES = {  # wire dtype -> (bytes per element, numpy dtype of the encoded elements)
    "fp32": (4, "<f4"),
    "fp16": (2, "<f2"),
    "bf16": (2, "<i2"),  # bfloat16 bits, carried as int16
    "int8": (1, "i1"),  # symmetric, one float32 absmax scale per token (sent in the frame, not in packets)
}
LINKS = ("none", "erasure", "bitflip")  # what the simulated uplink does to the packets


# ---- errors -------------------------------------------------------------------------------------
class ProtocolError(Exception):
    """A frame the edge cannot accept; `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class PeerClosed(ConnectionError):
    """The other side closed the connection (between frames or in the middle of one)."""


class EdgeError(UserError):
    """The edge answered a request with an ERROR frame."""

    def __init__(self, code: str, message: str):
        super().__init__(f"the edge refused ({code}): {message}")
        self.code = code


def check_port(port, what: str = "port") -> int:
    """A TCP port to listen on: 0..65535, where 0 asks the system for any free port."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise UserError(f"{what} {port!r} is not a TCP port: use 0..65535 (0: any free port)")
    return port


def check_timeout(seconds, what: str) -> float:
    """A timeout in seconds: positive and at most MAX_TIMEOUT_S (inf and nan are refused)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise UserError(f"{what} {seconds!r} is not a number of seconds")
    if not 0 < seconds <= MAX_TIMEOUT_S:
        raise UserError(f"{what} {seconds:g} is not a timeout: use seconds > 0 and at most {MAX_TIMEOUT_S:.0f}")
    return float(seconds)


# ---- framing ------------------------------------------------------------------------------------
def encode_frame(ftype: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, ftype, 0, len(payload)) + payload


def send_frame(sock: socket.socket, ftype: int, payload: bytes = b"") -> int:
    """Send one frame; return the bytes written to the socket."""
    frame = encode_frame(ftype, payload)
    sock.sendall(frame)
    return len(frame)


def send_json(sock: socket.socket, ftype: int, obj: dict) -> int:
    return send_frame(sock, ftype, json.dumps(obj).encode())


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("frame not complete in time")
            sock.settimeout(remaining)
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise PeerClosed(f"connection closed after {len(buf)} of {n} bytes" if buf else "connection closed")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, max_bytes: int = MAX_FRAME_BYTES, timeout_s: float | None = None) -> tuple[int, bytes]:
    """Read one frame: (type, payload). The whole frame must arrive within timeout_s.

    Raises PeerClosed on end of stream, socket.timeout, and ProtocolError for a bad header or a
    payload over max_bytes (checked before anything is allocated for it).
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    previous = sock.gettimeout()  # restored, so that later sends do not inherit what was left of the deadline
    try:
        header = _recv_exact(sock, HEADER.size, deadline)
        magic, version, ftype, _, length = HEADER.unpack(header)
        if magic != MAGIC:
            raise ProtocolError("bad_frame", f"not a layersplit frame (magic {magic!r}, expected {MAGIC!r})")
        if version != PROTOCOL_VERSION:
            raise ProtocolError("bad_frame", f"protocol version {version}; this edge speaks {PROTOCOL_VERSION}")
        if ftype not in FRAME_NAMES:
            raise ProtocolError("bad_frame", f"unknown frame type {ftype}")
        if length > max_bytes:
            raise ProtocolError("too_large", f"frame of {length} bytes exceeds the limit of {max_bytes} bytes "
                                             "(--max-frame-bytes)")
        return ftype, _recv_exact(sock, length, deadline)
    finally:
        sock.settimeout(previous)


def parse_json(payload: bytes) -> dict:
    try:
        obj = json.loads(payload.decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError("malformed", f"payload is not JSON ({e})") from e
    if not isinstance(obj, dict):
        raise ProtocolError("malformed", "payload is not a JSON object")
    return obj


# ---- the wire format of an activation -------------------------------------------------------------
def wire_bits(wire: str) -> int:
    return 8 * WIRE_DTYPES[wire][0]


def encode_activation(hidden: torch.Tensor, wire: str) -> tuple[np.ndarray, np.ndarray | None]:
    """tokens x d activations -> (the elements' bytes in token-major order, per-token scales for int8)."""
    if wire not in WIRE_DTYPES:
        raise UserError(f"unknown wire dtype {wire!r}: use one of {', '.join(WIRE_DTYPES)}")
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
        scales = scale.squeeze(-1).numpy().astype("<f4")
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8), scales


def decode_activation(data: np.ndarray, scales: np.ndarray | None, tokens: int, hidden_size: int,
                      wire: str) -> torch.Tensor:
    """Inverse of encode_activation: float32 tensor of tokens x hidden_size (zero bytes decode to 0.0)."""
    arr = np.frombuffer(data.tobytes(), dtype=WIRE_DTYPES[wire][1]).reshape(tokens, hidden_size)
    if wire == "bf16":
        return torch.from_numpy(arr.astype(np.int16)).view(torch.bfloat16).float()
    out = torch.from_numpy(arr.astype(np.float32))
    if wire == "int8":
        out *= torch.from_numpy(scales.astype(np.float32))[:, None]
    return out


def n_packets(tokens: int, hidden_size: int, elements_per_packet: int) -> int:
    return math.ceil(tokens * hidden_size / elements_per_packet)


def packet_rows(data: np.ndarray, total: int, packet_bytes: int) -> np.ndarray:
    """The element bytes cut into `total` packets of packet_bytes, the last one zero-padded."""
    rows = np.zeros(total * packet_bytes, dtype=np.uint8)
    rows[: data.size] = data
    return rows.reshape(total, packet_bytes)


def pack_activation(step: int, tokens: int, hidden_size: int, rows: np.ndarray, kept: np.ndarray,
                    scales: np.ndarray | None) -> bytes:
    """ACTIVATION payload carrying the packets `kept` (increasing indices into rows)."""
    seqs = kept.astype("<u4").view(np.uint8).reshape(-1, 4)
    body = np.concatenate([seqs, rows[kept]], axis=1) if len(kept) else np.zeros((0, 4 + rows.shape[1]), np.uint8)
    head = ACT_HEADER.pack(step, tokens, hidden_size, rows.shape[0], len(kept))
    return head + (scales.tobytes() if scales is not None else b"") + body.tobytes()


def unpack_activation(payload: bytes, hidden_size: int, wire: str, elements_per_packet: int):
    """Parse an ACTIVATION payload and zero-fill the packets that did not arrive.

    Returns (step, tokens, element bytes, scales, packets in total, packets missing). Raises
    ProtocolError("malformed") on any inconsistency: wrong hidden size, packet count, lengths or
    sequence numbers out of order or range.
    """
    if len(payload) < ACT_HEADER.size:
        raise ProtocolError("malformed", f"activation of {len(payload)} bytes is shorter than its header")
    step, tokens, d, total, sent = ACT_HEADER.unpack_from(payload)
    if d != hidden_size:
        raise ProtocolError("malformed", f"activation of width {d}; this model's hidden size is {hidden_size}")
    if tokens < 1 or total != n_packets(tokens, d, elements_per_packet) or sent > total:
        raise ProtocolError("malformed", f"activation of {tokens} tokens in {total} packets ({sent} sent) does not "
                                         f"match packets of {elements_per_packet} elements")
    elem_bytes = WIRE_DTYPES[wire][0]
    packet_bytes = elements_per_packet * elem_bytes
    scale_bytes = 4 * tokens if wire == "int8" else 0
    expected = ACT_HEADER.size + scale_bytes + sent * (SEQ.size + packet_bytes)
    if len(payload) != expected:
        raise ProtocolError("malformed", f"activation payload of {len(payload)} bytes, expected {expected}")
    scales = None
    if wire == "int8":
        scales = np.frombuffer(payload, dtype="<f4", count=tokens, offset=ACT_HEADER.size)
        if not np.all(np.isfinite(scales)):
            raise ProtocolError("malformed", "int8 scales are not finite")
    body = np.frombuffer(payload, dtype=np.uint8, offset=ACT_HEADER.size + scale_bytes).reshape(sent, SEQ.size + packet_bytes)
    seqs = body[:, :SEQ.size].copy().view("<u4").reshape(-1).astype(np.int64)
    if sent and (seqs[-1] >= total or np.any(np.diff(seqs) <= 0)):
        raise ProtocolError("malformed", "packet sequence numbers out of order or out of range")
    rows = np.zeros((total, packet_bytes), dtype=np.uint8)
    rows[seqs] = body[:, SEQ.size:]
    data = rows.reshape(-1)[: tokens * d * elem_bytes]
    return step, tokens, data, scales, total, total - sent


# ---- the simulated uplink -------------------------------------------------------------------------
def step_rng(seed: int, request: int, step: int) -> np.random.Generator:
    """The generator of one transfer: the same (seed, request, step) gives the same losses anywhere."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(request), int(step)]))


@dataclass(frozen=True)
class Uplink:
    """What the air interface does to the packets of one transfer.

    mode none: every packet arrives intact. erasure: each packet is lost (fails its CRC) with
    probability packet_error_rate(cfg) and never reaches the edge. bitflip: no CRC; every payload
    bit of every packet flips with the fade-averaged BER (a stress test). `template` holds the
    modulation, fading, packet size and bandwidth; the SNR and the bits per element (from the wire
    dtype) are set per request. An infinite SNR is a loss-free link.
    """

    mode: str = "erasure"
    template: channel.LinkConfig = channel.LinkConfig()
    seed: int = 0

    def __post_init__(self):
        if self.mode not in LINKS:
            raise UserError(f"unknown link {self.mode!r}: use one of {', '.join(LINKS)}")

    def config(self, snr_db: float, wire: str) -> channel.LinkConfig | None:
        """The operating point of a request, or None when the link cannot lose anything."""
        if self.mode == "none" or math.isinf(snr_db) and snr_db > 0:
            return None
        try:
            return replace(self.template, snr_db=float(snr_db), bits_per_element=wire_bits(wire))
        except ValueError as e:
            raise UserError(str(e)) from e

    def loss(self, snr_db: float, wire: str) -> tuple[float, float]:
        """(packet error rate, bit error rate) at this SNR; (0, 0) when loss-free."""
        cfg = self.config(snr_db, wire)
        if cfg is None:
            return 0.0, 0.0
        if self.mode == "erasure":
            return channel.packet_error_rate(cfg), 0.0
        return 0.0, channel.average_ber(cfg.modulation, cfg.snr_db, cfg.fading, cfg.nakagami_m)

    def transmit(self, rows: np.ndarray, snr_db: float, wire: str, request: int, step: int) -> tuple[np.ndarray, int]:
        """(indices of the packets that arrive, bits flipped); bitflip alters `rows` in place."""
        total = rows.shape[0]
        per, ber = self.loss(snr_db, wire)
        if per == 0.0 and ber == 0.0:
            return np.arange(total), 0
        rng = step_rng(self.seed, request, step)
        if self.mode == "erasure":
            return np.flatnonzero(rng.random(total) >= per), 0
        flat = rows.reshape(-1)
        flips = np.flatnonzero(rng.random(flat.size * 8) < ber)
        np.bitwise_xor.at(flat, flips // 8, (1 << (flips % 8)).astype(np.uint8))
        return np.arange(total), int(flips.size)

    def air(self, snr_db: float, wire: str, tokens: int, hidden_size: int) -> tuple[int, float]:
        """(bits on air, seconds on air) of one transfer: whole packets with headers, plus the int8
        scales (32 bits per token); (0, 0) for a link without a physical operating point."""
        cfg = self.config(snr_db, wire)
        if cfg is None:
            return 0, 0.0
        bits = channel.payload_bits(cfg, tokens, hidden_size) + (32 * tokens if wire == "int8" else 0)
        return bits, bits / channel.achievable_rate_bps(cfg)


# ---- model segments -------------------------------------------------------------------------------
class SegmentCache(DynamicCache):
    """A KV cache for decoder layers [start, stop) of a model, indexed locally from 0.

    Attention layers index the cache by their global layer_idx; this cache shifts it, so
    get_seq_length() (which reads its layer 0, giving the positions) and the causal mask see the
    segment's own first layer. Built from the model config, so per-layer cache types (sliding
    window, ...) are those of the segment's layers.
    """

    def __init__(self, config, start: int, stop: int):
        super().__init__(config=config)
        if len(self.layers) >= stop:
            self.layers = self.layers[start:stop]
        self.offset = start

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return super().update(key_states, value_states, layer_idx - self.offset, *args, **kwargs)


def _module_path(model: torch.nn.Module, target: torch.nn.Module) -> list[str]:
    for name, module in model.named_modules():
        if module is target:
            return name.split(".")
    raise UserError(f"cannot locate the decoder layers inside {type(model).__name__}")


def segment_view(model: torch.nn.Module, start: int, stop: int, ue: bool) -> torch.nn.Module:
    """A shallow copy of `model` that shares all parameters but runs only decoder layers [start, stop).

    ue=True: the decoder (no LM head) with its final norm replaced by Identity, so its
    last_hidden_state is the raw output of layer stop - 1. ue=False: the whole causal LM (LM head
    included), fed with inputs_embeds. Nothing of `model` is modified.
    """
    layers = find_decoder_layers(model)
    path = _module_path(model, layers)
    root = copy.copy(model)
    root._modules = dict(model._modules)
    parent = root
    for part in path[:-1]:
        child = copy.copy(parent._modules[part])
        child._modules = dict(child._modules)
        parent._modules[part] = child
        parent = child
    parent._modules[path[-1]] = torch.nn.ModuleList(layers[start:stop])
    if not ue:
        return root
    norms = [n for n in FINAL_NORM_NAMES if n in parent._modules]
    if not norms:
        raise UserError(f"cannot split {type(model).__name__} for serving: no final norm named one of "
                        f"{', '.join(FINAL_NORM_NAMES)} next to its decoder layers")
    parent._modules[norms[0]] = torch.nn.Identity()
    return parent


def _cache_kwarg(module: torch.nn.Module) -> str:
    """transformers 5.x calls the cache argument `cache` (formerly `past_key_values`)."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def model_fingerprint(model: torch.nn.Module) -> dict:
    """What both sides must agree on: architecture and shapes (not the weights' dtype)."""
    cfg = model.config
    return {"model_type": getattr(cfg, "model_type", type(model).__name__),
            "n_layers": len(find_decoder_layers(model)), "hidden_size": cfg.hidden_size,
            "vocab_size": cfg.vocab_size, "name": getattr(cfg, "_name_or_path", "")}


class SplitModel:
    """One loaded model, run as UE segments [0, split) and edge segments [split, L) + LM head."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.n_layers = len(find_decoder_layers(model))
        if self.n_layers < 2:
            raise UserError(f"a model of {self.n_layers} decoder layer cannot be split")
        self.hidden_size = model.config.hidden_size
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.fingerprint = model_fingerprint(model)
        self._views: dict[tuple[str, int], tuple[torch.nn.Module, str]] = {}
        self._lock = threading.Lock()

    def validate_split(self, split) -> int:
        if isinstance(split, bool) or not isinstance(split, (int, np.integer)) or not 1 <= split < self.n_layers:
            raise UserError(f"split {split!r} is not a number of layers on the UE: valid 1..{self.n_layers - 1} "
                            f"(of {self.n_layers} decoder layers; the rest run on the edge)")
        return int(split)

    def _view(self, side: str, split: int):
        with self._lock:
            key = (side, split)
            if key not in self._views:
                start, stop = (0, split) if side == "ue" else (split, self.n_layers)
                view = segment_view(self.model, start, stop, ue=side == "ue")
                self._views[key] = (view, _cache_kwarg(view))
            return self._views[key]

    def new_cache(self, side: str, split: int) -> SegmentCache:
        start, stop = (0, split) if side == "ue" else (split, self.n_layers)
        return SegmentCache(self.model.config, start, stop)

    @torch.no_grad()
    def ue_forward(self, split: int, input_ids: torch.Tensor, cache: SegmentCache) -> torch.Tensor:
        """Hidden state after layer split - 1 for the new tokens (1 x tokens x d)."""
        view, kw = self._view("ue", split)
        return view(input_ids=input_ids.to(self.device), use_cache=True, **{kw: cache}).last_hidden_state

    @torch.no_grad()
    def edge_logits(self, split: int, hidden: torch.Tensor, cache: SegmentCache) -> torch.Tensor:
        """Logits of the last position after layers split.. and the LM head (vocabulary,)."""
        view, kw = self._view("edge", split)
        out = view(inputs_embeds=hidden.to(self.device, self.dtype), use_cache=True, logits_to_keep=1, **{kw: cache})
        return out.logits[0, -1]


@torch.no_grad()
def check_composition(split_model: SplitModel, split: int | None = None, tokens: int = 8) -> float:
    """Largest |logit| difference between UE + edge segments and one full forward, over a prompt
    and one cached decoding step; raises UserError when the segments do not reproduce the model."""
    split = split or split_model.n_layers // 2
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, split_model.model.config.vocab_size, (1, tokens + 1), generator=gen)
    model, kw = split_model.model, _cache_kwarg(split_model.model)
    full_cache = DynamicCache(config=model.config)
    ue_cache, edge_cache = split_model.new_cache("ue", split), split_model.new_cache("edge", split)
    worst = scale = 0.0
    for chunk in (ids[:, :tokens], ids[:, tokens:]):
        ref = model(input_ids=chunk.to(split_model.device), use_cache=True, logits_to_keep=1, **{kw: full_cache}).logits[0, -1]
        got = split_model.edge_logits(split, split_model.ue_forward(split, chunk, ue_cache), edge_cache)
        worst = max(worst, float((ref.float() - got.float()).abs().max()))
        scale = max(scale, float(ref.float().abs().max()) + 1.0)
    if not worst <= 1e-3 * scale:
        raise UserError(f"{type(model).__name__} cannot be served split: its segments differ from a full forward by "
                        f"{worst:.3g} in the logits (this architecture does something outside its decoder layers)")
    return worst


def eos_ids(model, tokenizer) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = getattr(tokenizer, "eos_token_id", None)
    if ids is None:
        return set()
    return set(ids) if isinstance(ids, (list, tuple)) else {int(ids)}


# ---- the edge -------------------------------------------------------------------------------------
@dataclass
class EdgeSession:
    """One request on the edge: its split, wire format and KV cache."""

    id: int
    split: int
    wire: str
    elements_per_packet: int
    cache: SegmentCache
    step: int = 0  # the next ACTIVATION step expected
    context: int = 0  # tokens in the KV cache
    bytes_in: int = 0
    packets: int = 0
    packets_missing: int = 0
    edge_s: float = 0.0


class EdgeServer:
    """The edge: accepts UE connections, serves up to max_sessions at once, queues max_queue more.

    A connection first sends its OPEN, within handshake_timeout_s (per frame) or it is closed; at
    most max_handshakes connections wait for theirs, a newer one pushing the oldest out. Only a
    valid OPEN takes a session slot, which the connection keeps until it closes; when all are taken
    it waits in the queue, and beyond the queue it is refused with an ERROR "busy" (at once when it
    connects to an edge that is already full that way). A thread per connection, so at most
    max_handshakes + max_queue + max_sessions threads. Forward passes of all sessions take turns on
    one lock (on a CPU one forward already uses every core). Every way a session can end (CLOSE,
    disconnect, bad frame, timeout, server fault) frees its KV cache.
    """

    def __init__(self, model: torch.nn.Module, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 splits: list[int] | None = None, max_sessions: int = MAX_SESSIONS, max_queue: int = MAX_QUEUE,
                 queue_timeout_s: float = QUEUE_TIMEOUT_S, idle_timeout_s: float = IDLE_TIMEOUT_S,
                 max_frame_bytes: int = MAX_FRAME_BYTES, max_context: int = MAX_CONTEXT,
                 handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S, max_handshakes: int = MAX_HANDSHAKES,
                 check: bool = True):
        self.split_model = model if isinstance(model, SplitModel) else SplitModel(model)
        n = self.split_model.n_layers
        self.splits = sorted(set(splits)) if splits else list(range(1, n))
        for s in self.splits:
            self.split_model.validate_split(s)
        for name, value in (("max_sessions", max_sessions), ("max_frame_bytes", max_frame_bytes),
                            ("max_context", max_context), ("max_handshakes", max_handshakes)):
            if value < 1:
                raise UserError(f"{name} must be at least 1, got {value}")
        if max_queue < 0:
            raise UserError(f"max_queue must be >= 0, got {max_queue}")
        check_port(port)
        self.max_sessions, self.max_queue, self.max_handshakes = max_sessions, max_queue, max_handshakes
        self.queue_timeout_s = check_timeout(queue_timeout_s, "queue_timeout_s")
        self.idle_timeout_s = check_timeout(idle_timeout_s, "idle_timeout_s")
        self.handshake_timeout_s = check_timeout(handshake_timeout_s, "handshake_timeout_s")
        self.max_frame_bytes, self.max_context = max_frame_bytes, max_context
        if check:
            check_composition(self.split_model, self.splits[len(self.splits) // 2])
        try:
            self._listener = socket.create_server((host, port), backlog=64)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}): choose another --port or --host") from e
        self.host, self.port = self._listener.getsockname()[:2]
        self._state = threading.Condition()
        self._active = 0  # connections holding a session slot
        self._waiting = 0  # connections queued for one (after a valid OPEN)
        self._pending: dict[socket.socket, tuple] = {}  # connections waiting for their OPEN -> peer, oldest first
        self._compute = threading.Lock()
        self._stopping = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._conns: set[socket.socket] = set()  # open connections, shut down by stop()
        self._next_session = 0
        self.sessions: dict[int, EdgeSession] = {}  # open sessions (each holds a KV cache)
        self._caches = weakref.WeakSet()  # every KV cache not yet garbage-collected (tests check it empties)
        self.stats = {"connections": 0, "refused_busy": 0, "handshakes_dropped": 0, "sessions_opened": 0,
                      "sessions_closed": 0, "errors": 0, "steps": 0}
        self._accept_thread: threading.Thread | None = None

    # --- life cycle ---
    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "EdgeServer":
        """Accept connections in a background thread."""
        self._accept_thread = threading.Thread(target=self.serve_forever, name="edge-accept", daemon=True)
        self._accept_thread.start()
        return self

    def serve_forever(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                conn, peer = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            self._admit(conn, peer)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._state:
            self._state.notify_all()
            conns = list(self._conns)
        for conn in conns:  # wakes their threads from recv
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._accept_thread is not None and self._accept_thread is not threading.current_thread():
            self._accept_thread.join(timeout_s)
        with self._state:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout_s)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def live_caches(self) -> int:
        """KV caches still in memory (open sessions, and ended ones not yet collected)."""
        return len(self._caches)

    # --- admission ---
    def _busy_message(self) -> str:
        return (f"busy: {self._active} sessions are being served and {self._waiting} are waiting "
                f"(limits: {self.max_sessions} sessions, {self.max_queue} queued); try again later")

    def _admit(self, conn: socket.socket, peer) -> None:
        pushed_out = None
        with self._state:
            self.stats["connections"] += 1
            # Only connections that sent a valid OPEN are counted here, so idle ones never cause this.
            full = self._active >= self.max_sessions and self._waiting >= self.max_queue
            if full:
                self.stats["refused_busy"] += 1
                message = self._busy_message()
            else:
                if len(self._pending) >= self.max_handshakes:
                    # the oldest is the likeliest to be idle: a real UE sends its OPEN as soon as it connects
                    pushed_out = next(iter(self._pending))
                    pushed_peer = self._pending.pop(pushed_out)
                    self.stats["handshakes_dropped"] += 1
                self._pending[conn] = peer
                t = threading.Thread(target=self._connection, args=(conn, peer), daemon=True,
                                     name=f"edge-{peer[0]}:{peer[1]}")
                self._threads.add(t)
                self._conns.add(conn)
        if full:
            log.info("refused %s:%s: %s", *peer[:2], message)
            self._refuse(conn, message)
            return
        if pushed_out is not None:
            log.info("dropped %s:%s: no OPEN yet and %d newer connections waiting for theirs",
                     *pushed_peer[:2], self.max_handshakes)
            try:
                pushed_out.shutdown(socket.SHUT_RDWR)  # its thread wakes from recv and closes it
            except OSError:
                pass
        t.start()

    @staticmethod
    def _refuse(conn: socket.socket, message: str) -> None:
        try:
            conn.settimeout(1.0)
            send_json(conn, ERROR, {"code": "busy", "message": message})
        except OSError:
            pass
        finally:
            _lingering_close(conn, linger_s=0.05)

    def _slot_free(self) -> bool:
        with self._state:
            return self._active < self.max_sessions

    def _take_slot(self, conn: socket.socket) -> bool:
        """After a valid OPEN: leave the handshakes and take a session slot, after a wait in the queue
        when all are taken. False when refused (the ERROR is sent) or pushed out meanwhile."""
        queued = False
        with self._state:
            if conn not in self._pending:  # pushed out by newer connections: its socket is shut down
                return False
            del self._pending[conn]
            if self._active < self.max_sessions:
                self._active += 1
                return True
            if self._waiting < self.max_queue:
                self._waiting += 1
                queued = True
            else:
                self.stats["refused_busy"] += 1
                message = self._busy_message()
        if queued:
            if self._wait_for_slot():
                return True
            self._count("refused_busy")
            message = f"busy: no session free after {self.queue_timeout_s:g} s in the queue; try again later"
        self._send_error(conn, "busy", message)
        return False

    def _wait_for_slot(self) -> bool:
        deadline = time.monotonic() + self.queue_timeout_s
        with self._state:
            while self._active >= self.max_sessions and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._waiting -= 1
                    return False
                self._state.wait(remaining)
            self._waiting -= 1
            if self._stopping.is_set():
                return False
            self._active += 1
            return True

    def _recv_before_open(self, conn: socket.socket) -> tuple[int, bytes] | None:
        """The next frame of a connection that holds no session slot yet, or None when it timed out
        (the ERROR is sent). It must come within handshake_timeout_s; when all slots are taken, within
        queue_timeout_s if that is shorter, as a queued connection would be refused as busy by then."""
        wait_s = self.handshake_timeout_s
        if not self._slot_free():
            wait_s = min(wait_s, self.queue_timeout_s)
        try:
            return recv_frame(conn, min(self.max_frame_bytes, MAX_OPEN_FRAME_BYTES), wait_s)
        except ProtocolError as e:
            if e.code == "too_large" and self.max_frame_bytes > MAX_OPEN_FRAME_BYTES:  # not --max-frame-bytes
                raise ProtocolError("too_large", f"a frame before OPEN may have at most {MAX_OPEN_FRAME_BYTES} "
                                                 "bytes (send OPEN first)") from e
            raise
        except socket.timeout:
            if self._slot_free():
                self._count("handshakes_dropped")
                self._send_error(conn, "timeout", f"no OPEN within {wait_s:g} s; closing")
            else:
                self._count("refused_busy")
                self._send_error(conn, "busy", f"busy: no session free after {wait_s:g} s in the queue; "
                                               "try again later")
            return None

    # --- one connection ---
    def _connection(self, conn: socket.socket, peer) -> None:
        holding = False  # a session slot: taken with the first valid OPEN, kept until the connection ends
        session: EdgeSession | None = None
        conn.settimeout(self.handshake_timeout_s)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while not self._stopping.is_set():
                try:
                    if holding:
                        ftype, payload = recv_frame(conn, self.max_frame_bytes, self.idle_timeout_s)
                    else:
                        frame = self._recv_before_open(conn)
                        if frame is None:
                            break
                        ftype, payload = frame
                        if ftype == OPEN:  # checked before it takes a slot: a refused OPEN never waits
                            params = self._check_open(parse_json(payload))
                            if not self._take_slot(conn):
                                break
                            holding = True
                            conn.settimeout(self.idle_timeout_s)  # sends to a UE that stopped reading give up too
                            session = self._open(conn, params)
                            continue
                    session = self._handle(conn, ftype, payload, session)
                except ProtocolError as e:
                    self._count("errors")
                    log.info("%s:%s: %s: %s", *peer[:2], e.code, e)
                    self._send_error(conn, e.code, str(e))
                    if ERROR_CODES[e.code]:
                        break
                    session = self._end(session)
        except PeerClosed as e:
            if session is not None:
                log.info("%s:%s: %s in session %d at step %d", *peer[:2], e, session.id, session.step)
        except socket.timeout:
            self._count("errors")
            self._send_error(conn, "timeout", f"no complete frame in {self.idle_timeout_s:g} s; closing")
        except OSError as e:  # reset by peer, broken pipe
            log.info("%s:%s: connection error %s", *peer[:2], e)
        except Exception as e:  # a fault of this server: report it, keep serving others
            self._count("errors")
            log.exception("%s:%s: internal error", *peer[:2])
            self._send_error(conn, "internal", f"{type(e).__name__}: {e}")
        finally:
            self._end(session)
            _lingering_close(conn)
            with self._state:
                self._pending.pop(conn, None)
                if holding:
                    self._active -= 1
                self._state.notify_all()
                self._threads.discard(threading.current_thread())
                self._conns.discard(conn)

    def _count(self, key: str) -> None:
        with self._state:
            self.stats[key] += 1

    def _send_error(self, conn: socket.socket, code: str, message: str) -> None:
        try:
            conn.settimeout(1.0)
            send_json(conn, ERROR, {"code": code, "message": message})
        except OSError:
            pass

    def _end(self, session: EdgeSession | None) -> None:  # returns None so that `session = self._end(session)`
        """Forget a session: its KV cache is freed with the last reference."""
        if session is not None:
            with self._state:
                if self.sessions.pop(session.id, None) is not None:
                    self.stats["sessions_closed"] += 1
        return None

    def _handle(self, conn: socket.socket, ftype: int, payload: bytes, session: EdgeSession | None):
        if ftype == OPEN:
            if session is not None:
                raise ProtocolError("malformed", "OPEN inside an open session (send CLOSE first)")
            return self._open(conn, self._check_open(parse_json(payload)))
        if ftype == ACTIVATION:
            if session is None:
                raise ProtocolError("no_session", "ACTIVATION outside a session (send OPEN first)")
            token, missing, seconds = self._step(session, payload)
            send_frame(conn, TOKEN, TOKEN_BODY.pack(session.step - 1, token, missing, seconds))
            return session
        if ftype == CLOSE:
            if session is None:
                raise ProtocolError("no_session", "CLOSE outside a session")
            totals = {"session": session.id, "steps": session.step, "context": session.context,
                      "bytes_in": session.bytes_in, "packets": session.packets,
                      "packets_missing": session.packets_missing, "edge_s": session.edge_s}
            self._end(session)
            send_json(conn, CLOSED, totals)
            return None
        raise ProtocolError("bad_frame", f"a UE does not send {FRAME_NAMES[ftype]} frames")

    def _check_open(self, req: dict) -> tuple[int, str, int]:
        """(split, wire dtype, elements per packet) of an OPEN this edge serves; ProtocolError otherwise."""
        if req.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError("malformed", f"OPEN for protocol {req.get('protocol')!r}; this edge speaks {PROTOCOL_VERSION}")
        mine = self.split_model.fingerprint
        theirs = req.get("model")
        if not isinstance(theirs, dict) or any(theirs.get(k) != mine[k] for k in ("model_type", "n_layers", "hidden_size", "vocab_size")):
            raise ProtocolError("bad_model", f"the UE runs {theirs!r}; this edge serves {mine}")
        split, wire, k = req.get("split"), req.get("wire"), req.get("elements_per_packet")
        if isinstance(split, bool) or not isinstance(split, int) or split not in self.splits:
            raise ProtocolError("bad_split", f"split {split!r} cannot be served: this edge serves "
                                             f"{format_splits(self.splits)} layers on the UE (of {mine['n_layers']})")
        if wire not in WIRE_DTYPES:
            raise ProtocolError("malformed", f"unknown wire dtype {wire!r}: use one of {', '.join(WIRE_DTYPES)}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_ELEMENTS_PER_PACKET:
            raise ProtocolError("malformed", f"elements_per_packet {k!r} outside 1..{MAX_ELEMENTS_PER_PACKET}")
        return split, wire, k

    def _open(self, conn: socket.socket, params: tuple[int, str, int]) -> EdgeSession:
        """Start a session for a checked OPEN and answer READY."""
        split, wire, k = params
        with self._state:
            self._next_session += 1
            session = EdgeSession(self._next_session, split, wire, k, self.split_model.new_cache("edge", split))
            self.sessions[session.id] = session
            self._caches.add(session.cache)
            self.stats["sessions_opened"] += 1
        log.info("session %d: split %d (%d layers on the UE, %d here), %s wire, packets of %d elements",
                 session.id, split, split, self.split_model.n_layers - split, wire, k)
        try:
            send_json(conn, READY, {"session": session.id, "split": split, "n_layers": self.split_model.n_layers,
                                    "max_frame_bytes": self.max_frame_bytes, "max_context": self.max_context})
        except BaseException:
            self._end(session)  # the UE never learnt of it, so nothing else would end it
            raise
        return session

    def _step(self, session: EdgeSession, payload: bytes) -> tuple[int, int, float]:
        step, tokens, data, scales, total, missing = unpack_activation(
            payload, self.split_model.hidden_size, session.wire, session.elements_per_packet)
        if step != session.step:
            raise ProtocolError("malformed", f"activation for step {step}; step {session.step} was expected")
        if session.context + tokens > self.max_context:
            raise ProtocolError("too_long", f"the session would hold {session.context + tokens} tokens; this edge "
                                            f"keeps at most {self.max_context} per session (--max-context)")
        hidden = decode_activation(data, scales, tokens, self.split_model.hidden_size, session.wire)[None]
        with self._compute:
            start = time.perf_counter()
            token = int(self.split_model.edge_logits(session.split, hidden, session.cache).argmax())
            seconds = time.perf_counter() - start
        session.step += 1
        session.context += tokens
        session.bytes_in += HEADER.size + len(payload)
        session.packets += total
        session.packets_missing += missing
        session.edge_s += seconds
        self._count("steps")
        return token, missing, seconds


def _lingering_close(conn: socket.socket, linger_s: float = 0.2, drain_bytes: int = 1 << 16) -> None:
    """Close after an ERROR so that the peer reads it: a socket closed with unread input sends a
    reset that can destroy the frame in flight. Reads (and drops) at most drain_bytes for linger_s."""
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(linger_s)
        deadline, drained = time.monotonic() + linger_s, 0
        while drained < drain_bytes and time.monotonic() < deadline:
            chunk = conn.recv(min(4096, drain_bytes - drained))
            if not chunk:
                break
            drained += len(chunk)
    except OSError:
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


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


def parse_splits(text: str, n_layers: int) -> list[int]:
    """'all' (1..L-1) or layers-on-the-UE and ranges like '1-9,15'."""
    return sweep.parse_splits(text, n_layers, first=1, what="layers on the UE")


# ---- the UE ---------------------------------------------------------------------------------------
def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    try:
        port_n = int(port)
    except ValueError as e:
        raise UserError(f"--connect {text!r}: use HOST:PORT") from e
    if not 0 < port_n < 65536:
        raise UserError(f"--connect {text!r}: port outside 1..65535")
    return host.strip("[]") or DEFAULT_HOST, port_n


@dataclass
class RequestReport:
    """What the UE measured for one request (seconds of wall clock; bytes through the socket)."""

    request: int
    prompt: str
    text: str
    tokens: list[int]
    prompt_tokens: int
    split: int  # decoder layers on the UE
    layers_on_edge: int
    snr_db: float
    link: str
    wire: str
    packet_error_rate: float
    bit_error_rate: float
    ttft_s: float  # request start (OPEN) to the first token received
    tpot_s: float  # mean time between later tokens (nan with one token)
    tokens_per_s: float  # new tokens over the whole request time
    total_s: float
    ue_compute_s: float  # UE layers and encoding, all steps
    edge_compute_s: float  # edge layers and LM head, all steps, as reported by the edge
    ue_prefill_s: float  # the same for the prompt's step alone
    edge_prefill_s: float
    uplink_bytes: int  # UE -> edge, frames included
    downlink_bytes: int  # edge -> UE
    uplink_bytes_prefill: int  # the prompt's ACTIVATION frame
    uplink_bytes_per_token: float  # mean ACTIVATION frame of a decoding step (nan with one token)
    packets: int  # packets of all activations (sent or lost)
    packets_lost: int  # as counted by the edge from the sequence numbers
    bits_flipped: int
    air_bits: int  # bits on air for the physical link (whole packets, headers, int8 scales)
    air_s: float  # their transmission time at the link rate (slept only with sleep_air)

    @property
    def wire_bytes(self) -> int:
        return self.uplink_bytes + self.downlink_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "wire_bytes": self.wire_bytes}


SplitChoice = Callable[[float], int]  # split_for_snr(snr_db) -> decoder layers on the UE


class UEClient:
    """The UE: runs layers [0, split), sends activations through the simulated uplink, receives tokens.

    `split` is a fixed number of layers on the UE or a callable split_for_snr(snr_db) -> layers on
    the UE, asked once per request with that request's SNR. The SNR of request r is step r of
    `snr` (an channel.SnrProcess; None: a fixed infinite SNR, loss-free). One connection serves
    the client's requests one after the other.
    """

    def __init__(self, model, tokenizer, address: str | tuple[str, int], split: int | SplitChoice = 5,
                 wire: str = "fp16", uplink: Uplink | None = None, snr: channel.SnrProcess | None = None,
                 timeout_s: float = CLIENT_TIMEOUT_S, sleep_air: bool = False):
        self.split_model = model if isinstance(model, SplitModel) else SplitModel(model)
        self.tokenizer = tokenizer
        self.address = parse_address(address) if isinstance(address, str) else tuple(address)
        if wire not in WIRE_DTYPES:
            raise UserError(f"unknown wire dtype {wire!r}: use one of {', '.join(WIRE_DTYPES)}")
        self.wire = wire
        self.uplink = uplink or Uplink("none")
        self.snr = snr
        self.timeout_s = check_timeout(timeout_s, "timeout_s")
        self.sleep_air = sleep_air
        if callable(split):
            self.split_for_snr = split
        else:
            fixed = self.split_model.validate_split(split)
            self.split_for_snr = lambda snr_db: fixed
        self.eos = eos_ids(self.split_model.model, tokenizer)
        self.requests = 0
        self.sock: socket.socket | None = None

    # --- connection ---
    def connect(self) -> "UEClient":
        if self.sock is None:
            try:
                self.sock = socket.create_connection(self.address, timeout=self.timeout_s)
            except OSError as e:
                raise UserError(f"cannot connect to the edge at {self.address[0]}:{self.address[1]} ({e}); "
                                f"start it with `python serve.py edge --port {self.address[1]}`") from e
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def _drop_if_stale(self) -> None:
        """Between requests the edge sends nothing, unless it drops this connection (its handshake or
        idle timeout ran out while the UE was idle): anything readable, its ERROR or the end of the
        stream, means a new connection is needed."""
        if self.sock is None:
            return
        try:
            self.sock.setblocking(False)
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:  # nothing to read: still open
            self.sock.settimeout(self.timeout_s)
            return
        except OSError:  # reset
            pass
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.close()

    def _expect(self, wanted: int) -> tuple[bytes, int]:
        try:
            ftype, payload = recv_frame(self.sock, max(MAX_FRAME_BYTES, 1 << 20), self.timeout_s)
        except PeerClosed as e:
            self.close()
            raise UserError(f"the edge closed the connection ({e})") from e
        except socket.timeout as e:
            self.close()
            raise UserError(f"the edge did not answer within {self.timeout_s:g} s") from e
        except ProtocolError as e:
            self.close()
            raise UserError(f"the edge sent a bad frame: {e}") from e
        if ftype == ERROR:
            err = parse_json(payload)
            if ERROR_CODES.get(err.get("code"), True):
                self.close()
            raise EdgeError(str(err.get("code")), str(err.get("message")))
        if ftype != wanted:
            self.close()
            raise UserError(f"the edge sent {FRAME_NAMES.get(ftype, ftype)} where {FRAME_NAMES[wanted]} was expected")
        return payload, HEADER.size + len(payload)

    # --- one request ---
    def next_snr(self) -> float:
        """The SNR of the next request: step `requests` of the SNR process."""
        if self.snr is None:
            return math.inf
        return self.snr.snr_db if self.requests == 0 else self.snr.step()

    def generate(self, prompt: str, max_new_tokens: int = 32) -> RequestReport:
        """Greedy generation of up to max_new_tokens (stops after an end-of-sequence token)."""
        if max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        request = self.requests
        snr_db = self.next_snr()
        self.requests += 1
        split = self.split_model.validate_split(self.split_for_snr(snr_db))
        per, ber = self.uplink.loss(snr_db, self.wire)
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        if ids.shape[1] == 0:
            raise UserError("the prompt is empty after tokenisation")
        k = self.uplink.template.elements_per_packet
        d, wire = self.split_model.hidden_size, self.wire
        packet_bytes = k * WIRE_DTYPES[wire][0]
        self._drop_if_stale()
        self.connect()
        up = down = 0
        start = time.perf_counter()
        up += send_json(self.sock, OPEN, {"protocol": PROTOCOL_VERSION, "model": self.split_model.fingerprint,
                                          "split": split, "wire": wire, "elements_per_packet": k,
                                          "request": request})
        payload, n = self._expect(READY)
        down += n
        ready = parse_json(payload)
        cache = self.split_model.new_cache("ue", split)
        x = ids
        tokens, times, step_bytes = [], [], []
        ue_s = edge_s = air_s = 0.0
        packets = lost = flipped = air_bits = 0
        try:
            for step in range(max_new_tokens):
                t = time.perf_counter()
                hidden = self.split_model.ue_forward(split, x, cache)[0]
                data, scales = encode_activation(hidden, wire)
                ue_s += time.perf_counter() - t
                rows = packet_rows(data, n_packets(hidden.shape[0], d, k), packet_bytes)
                kept, bits = self.uplink.transmit(rows, snr_db, wire, request, step)
                frame = pack_activation(step, hidden.shape[0], d, rows, kept, scales)
                if HEADER.size + len(frame) > ready["max_frame_bytes"]:
                    raise UserError(f"the prompt's activation ({len(frame)} bytes) exceeds the edge's frame limit "
                                    f"of {ready['max_frame_bytes']} bytes: use a shorter prompt or --max-frame-bytes")
                b, s = self.uplink.air(snr_db, wire, hidden.shape[0], d)
                air_bits, air_s = air_bits + b, air_s + s
                if self.sleep_air and s > 0:
                    time.sleep(s)
                sent = send_frame(self.sock, ACTIVATION, frame)
                up += sent
                step_bytes.append(sent)
                payload, n = self._expect(TOKEN)
                down += n
                _, token, missing, seconds = TOKEN_BODY.unpack(payload)
                times.append(time.perf_counter())
                tokens.append(token)
                packets += rows.shape[0]
                lost += missing
                flipped += bits
                edge_s += seconds
                if step == 0:
                    prefill = (ue_s, edge_s)
                if token in self.eos:
                    break
                x = torch.tensor([[token]])
            up += send_frame(self.sock, CLOSE)
            _, n = self._expect(CLOSED)
            down += n
        except BaseException:
            self.close()  # a half-finished session must not linger: the edge frees it on disconnect
            raise
        total = times[-1] - start
        n_tok = len(tokens)
        return RequestReport(
            request=request, prompt=prompt, text=self.tokenizer.decode(tokens, skip_special_tokens=True),
            tokens=tokens, prompt_tokens=int(ids.shape[1]), split=split,
            layers_on_edge=self.split_model.n_layers - split, snr_db=snr_db, link=self.uplink.mode, wire=wire,
            packet_error_rate=per, bit_error_rate=ber, ttft_s=times[0] - start,
            tpot_s=(times[-1] - times[0]) / (n_tok - 1) if n_tok > 1 else math.nan,
            tokens_per_s=n_tok / total, total_s=total, ue_compute_s=ue_s, edge_compute_s=edge_s,
            ue_prefill_s=prefill[0], edge_prefill_s=prefill[1],
            uplink_bytes=up, downlink_bytes=down, uplink_bytes_prefill=step_bytes[0],
            uplink_bytes_per_token=float(np.mean(step_bytes[1:])) if n_tok > 1 else math.nan,
            packets=packets, packets_lost=lost, bits_flipped=flipped, air_bits=air_bits, air_s=air_s,
        )


@torch.no_grad()
def generate_single_process(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[list[int], list[float], float]:
    """The reference: greedy tokens of the whole model in one process, with a KV cache.

    Returns (tokens, arrival times, start time) measured like UEClient.generate, so that time to
    first token and time per output token compare like for like. Stops after an end-of-sequence token.
    """
    device = next(model.parameters()).device
    kw = _cache_kwarg(model)
    eos = eos_ids(model, tokenizer)
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    cache = DynamicCache(config=model.config)
    tokens, times = [], []
    start = time.perf_counter()
    x = ids
    for _ in range(max_new_tokens):
        logits = model(input_ids=x, use_cache=True, logits_to_keep=1, **{kw: cache}).logits[0, -1]
        token = int(logits.argmax())
        times.append(time.perf_counter())
        tokens.append(token)
        if token in eos:
            break
        x = torch.tensor([[token]], device=device)
    return tokens, times, start
