"""The wire protocol between the UE and the edge: frames, limits, and an activation's packets.

Every frame: HEADER = magic b"LSPL", version, frame type, 2 reserved bytes, payload length (uint32,
little-endian), then the payload.
    UE -> edge  OPEN        JSON: protocol, model fingerprint, split, wire dtype, elements per packet,
                            protect (K elements per token on the protected path; absent: 0), token
                            (the edge's shared secret, when it has one; absent otherwise)
    edge -> UE  READY       JSON: session id, the edge's frame and context limits
    UE -> edge  ACTIVATION  ACT_HEADER (step, tokens, hidden size, packets in total, packets sent),
                            then per-token float32 scales (int8 only), then the protected section
                            (K > 0 only), then each delivered packet as its uint32 sequence number
                            and k elements (the last one zero-padded)
    edge -> UE  TOKEN       TOKEN_BODY: step, next token, packets missing, edge compute seconds
    UE -> edge  CLOSE       (empty) the request is over: the edge frees the session's KV cache
    edge -> UE  CLOSED      JSON: the session's totals
    edge -> UE  ERROR       JSON: code, message (see ERROR_CODES)
`split` in OPEN is 0-based like everywhere in this project: split n puts n + 1 layers on the UE.

An edge started with a token (check_token) serves only OPENs that carry it and answers any other
with ERROR "unauthorized", before it looks at anything else of the OPEN: a stranger learns neither
the model nor the splits. The token crosses the socket in clear, like the activations: it keeps
strangers off an edge's compute, not eavesdroppers off a network.

The protected section (version 3) carries each token's K largest-magnitude elements, which crossed
the air on a path with CRC and retransmission (layersplit/uplink.py, --protect K), so they are
never lost or flipped: for each token in order, its K element indices in increasing order (uint16
little-endian when the hidden size d <= 65536, else uint32: protected_index_dtype) and then the K
elements themselves, in the wire format's bytes as in the packets (int8: the codes; the token's
scale is the one sent above). The edge writes them over the zero-filled packets before decoding.
"""

from __future__ import annotations

import ipaddress
import json
import select
import socket
import struct
import time

import numpy as np

from .. import UserError
from ..wire import WIRE_FORMATS, n_packets

# ---- protocol ---------------------------------------------------------------------------------
PROTOCOL_VERSION = 3  # bumped on any incompatible change of the frames below (2: 0-based splits;
# 3: protected pairs, the OPEN's "protect" and an ACTIVATION's protected section)
MAGIC = b"LSPL"  # first bytes of every frame: a stray client or a desynchronised stream is caught at once
HEADER = struct.Struct("<4sBBHI")  # magic, version, frame type, reserved, payload length
ACT_HEADER = struct.Struct("<IIIII")  # step, tokens, hidden size, packets in total, packets sent
TOKEN_BODY = struct.Struct("<IiIf")  # step, next token, packets missing, edge compute seconds
SEQ = struct.Struct("<I")  # a packet's sequence number
OPEN, READY, ACTIVATION, TOKEN, CLOSE, CLOSED, ERROR = range(1, 8)  # frame types
FRAME_NAMES = {
    OPEN: "OPEN",
    READY: "READY",
    ACTIVATION: "ACTIVATION",
    TOKEN: "TOKEN",
    CLOSE: "CLOSE",
    CLOSED: "CLOSED",
    ERROR: "ERROR",
}
ERROR_CODES = {  # code -> does the edge close the connection after it
    "busy": True,
    "bad_frame": True,
    "too_large": True,
    "malformed": True,
    "timeout": True,
    "internal": True,
    "unauthorized": True,
    "evicted": True,
    "bad_split": False,
    "bad_model": False,
    "too_long": False,
    "no_session": False,
}

# ---- limits and defaults ------------------------------------------------------------------------
DEFAULT_HOST = "127.0.0.1"  # loopback: the edge is reachable from this machine only unless told otherwise
DEFAULT_PORT = 8765  # TCP port of the edge (0: any free port, printed at start-up)
# The largest frame the edge reads. It bounds the memory one connection can make the edge allocate;
# 16 MiB holds a 2048-token prompt of SmolLM2 (d = 576) even in fp32 (4.7 MB). Wider models with
# long fp32 prompts need a larger --max-frame-bytes.
MAX_FRAME_BYTES = 16 * 2**20
MAX_CONTEXT = 2048  # tokens (prompt + generated) per session: bounds each session's KV cache
# The edge runs a prompt's activation in chunks of this many tokens, taking turns with the other
# sessions' chunks and decoding steps, so that a session waits for at most one chunk of each other
# session, not for their whole prompts (on 2 CPU cores, three SmolLM2 prompts of 2048 tokens held
# the next UE's first token for about 26 s). 256 tokens take a fraction of a second there, and as
# the chunks fill the same KV cache, the tokens are those of one forward up to float rounding.
# 0: each prompt in one forward.
PREFILL_CHUNK = 256
MAX_SESSIONS = 4  # sessions served at once; their steps interleave on the one model
MAX_QUEUE = 8  # connections waiting for a free session beyond that; the rest are refused as busy
QUEUE_TIMEOUT_S = 30.0  # a queued connection that waits longer is refused as busy
IDLE_TIMEOUT_S = 60.0  # the edge drops a connection that sends no complete frame for this long
# While a connection waits in the queue, a session slot whose UE has been silent this long (from the
# edge's last answer to the first byte of the UE's next frame: neither the edge's compute nor a long
# upload counts) is taken from it (ERROR "evicted"). A UE answers a TOKEN after one step of its own
# layers, milliseconds to a second or two, so idle sessions free their slots within seconds; it must
# stay below QUEUE_TIMEOUT_S, or a waiting UE would be refused before any idle session is evicted.
EVICT_IDLE_S = 5.0
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
TOKEN_ENV = "LAYERSPLIT_EDGE_TOKEN"  # serve.py's --token, when not given, on both sides (not visible in ps)
# A token's length: 16 characters of [A-Za-z0-9_-] are 96 bits, beyond guessing over a socket; the
# upper bound keeps an OPEN small (MAX_OPEN_FRAME_BYTES).
MIN_TOKEN_CHARS, MAX_TOKEN_CHARS = 16, 1024


# ---- errors -------------------------------------------------------------------------------------
class ProtocolError(Exception):
    """A frame the edge cannot accept; `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class PeerClosed(ConnectionError):
    """The other side closed the connection (between frames or in the middle of one)."""


class EdgeError(UserError):
    """The edge answered a request with an ERROR frame. `report`: what the UE had generated when the
    edge ended the request (serving.ue.RequestReport, its stop_reason the code), None before any token."""

    def __init__(self, code: str, message: str, report=None):
        super().__init__(f"the edge refused ({code}): {message}")
        self.code, self.message, self.report = code, message, report


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


def check_token(token, what: str = "--token") -> str | None:
    """A shared secret for OPEN (None: no token): 16..1024 printable ASCII characters, no spaces."""
    if token is None:
        return None
    if (
        not isinstance(token, str)
        or not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS
        or not all("!" <= c <= "~" for c in token)
    ):
        shown = f"of {len(token)} characters" if isinstance(token, str) else f"of type {type(token).__name__}"
        raise UserError(
            f"{what}: the token {shown} is not {MIN_TOKEN_CHARS}..{MAX_TOKEN_CHARS} printable ASCII "
            'characters without spaces (make one with python -c "import secrets; '
            'print(secrets.token_urlsafe(24))")'
        )
    return token


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one, reachable from this machine only; a name
    that does not resolve, or the empty host (every interface), is not."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP) if host else []
    except (OSError, UnicodeError):
        return False
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    return bool(addresses) and all(
        a.is_loopback or getattr(a, "ipv4_mapped", None) is not None and a.ipv4_mapped.is_loopback for a in addresses
    )


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


def recv_frame(
    sock: socket.socket, max_bytes: int = MAX_FRAME_BYTES, timeout_s: float | None = None
) -> tuple[int, bytes]:
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
            raise ProtocolError(
                "too_large", f"frame of {length} bytes exceeds the limit of {max_bytes} bytes (--max-frame-bytes)"
            )
        return ftype, _recv_exact(sock, length, deadline)
    finally:
        sock.settimeout(previous)


def wait_readable(sock: socket.socket, timeout_s: float) -> bool:
    """Whether `sock` has something to read (data, or the end of the stream) within timeout_s."""
    if hasattr(select, "poll"):  # select.select fails on descriptors beyond FD_SETSIZE (1024)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout_s * 1000))))
    return bool(select.select([sock], [], [], timeout_s)[0])


def parse_json(payload: bytes) -> dict:
    try:
        obj = json.loads(payload.decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError("malformed", f"payload is not JSON ({e})") from e
    if not isinstance(obj, dict):
        raise ProtocolError("malformed", "payload is not a JSON object")
    return obj


# ---- an activation's packets in a frame (the wire format itself: wire.py) ---------------------
def packet_rows(data: np.ndarray, total: int, packet_bytes: int) -> np.ndarray:
    """The element bytes cut into `total` packets of packet_bytes, the last one zero-padded."""
    rows = np.zeros(total * packet_bytes, dtype=np.uint8)
    rows[: data.size] = data
    return rows.reshape(total, packet_bytes)


def protected_index_dtype(hidden_size: int) -> str:
    """The protected section's index type: uint16 while every index 0..d-1 fits, else uint32."""
    return "<u2" if hidden_size <= 1 << 16 else "<u4"


def pack_protected(data: np.ndarray, indices: np.ndarray, hidden_size: int, wire: str) -> bytes:
    """The protected section: per token, its K indices (tokens x K, increasing along each row) and
    then those elements' bytes, taken from `data` (the activation's wire bytes, before the air alters
    any of them)."""
    tokens, k = indices.shape
    elem_bytes = WIRE_FORMATS[wire][0]
    idx = indices.astype(protected_index_dtype(hidden_size)).view(np.uint8).reshape(tokens, -1)
    values = data.reshape(tokens, hidden_size, elem_bytes)[np.arange(tokens)[:, None], indices]
    return np.concatenate([idx, values.reshape(tokens, k * elem_bytes)], axis=1).tobytes()


def protected_section_bytes(tokens: int, protect: int, hidden_size: int, wire: str) -> int:
    index_bytes = np.dtype(protected_index_dtype(hidden_size)).itemsize
    return tokens * protect * (index_bytes + WIRE_FORMATS[wire][0])


def pack_activation(
    step: int,
    tokens: int,
    hidden_size: int,
    rows: np.ndarray,
    kept: np.ndarray,
    scales: np.ndarray | None,
    protected: bytes = b"",
) -> bytes:
    """ACTIVATION payload carrying the packets `kept` (increasing indices into rows) and the
    protected section `protected` (pack_protected; empty when the session protects nothing)."""
    seqs = kept.astype("<u4").view(np.uint8).reshape(-1, 4)
    body = np.concatenate([seqs, rows[kept]], axis=1) if len(kept) else np.zeros((0, 4 + rows.shape[1]), np.uint8)
    head = ACT_HEADER.pack(step, tokens, hidden_size, rows.shape[0], len(kept))
    return head + (scales.tobytes() if scales is not None else b"") + protected + body.tobytes()


def activation_header(payload: bytes) -> tuple[int, int, int, int, int]:
    """(step, tokens, hidden size, packets in total, packets sent) of an ACTIVATION payload, read
    before anything else of it: the edge checks the step and its context limit on these numbers
    first, since a header may claim any count up to 2^32 - 1 tokens."""
    if len(payload) < ACT_HEADER.size:
        raise ProtocolError("malformed", f"activation of {len(payload)} bytes is shorter than its header")
    return ACT_HEADER.unpack_from(payload)


def unpack_activation(payload: bytes, hidden_size: int, wire: str, elements_per_packet: int, protect: int = 0):
    """Parse an ACTIVATION payload, zero-fill the packets that did not arrive and write the
    protected elements (each token's `protect` of them, the session's K) over them.

    Returns (step, tokens, element bytes, scales, packets in total, packets missing). Raises
    ProtocolError("malformed") on any inconsistency: wrong hidden size, packet count, lengths,
    sequence numbers out of order or range, protected indices out of range or not increasing.
    """
    step, tokens, d, total, sent = activation_header(payload)
    if d != hidden_size:
        raise ProtocolError("malformed", f"activation of width {d}; this model's hidden size is {hidden_size}")
    if tokens < 1 or total != n_packets(tokens * d, elements_per_packet) or sent > total:
        raise ProtocolError(
            "malformed",
            f"activation of {tokens} tokens in {total} packets ({sent} sent) does not "
            f"match packets of {elements_per_packet} elements",
        )
    elem_bytes = WIRE_FORMATS[wire][0]
    packet_bytes = elements_per_packet * elem_bytes
    scale_bytes = 4 * tokens if wire == "int8" else 0
    protected_bytes = protected_section_bytes(tokens, protect, d, wire)
    expected = ACT_HEADER.size + scale_bytes + protected_bytes + sent * (SEQ.size + packet_bytes)
    if len(payload) != expected:
        raise ProtocolError("malformed", f"activation payload of {len(payload)} bytes, expected {expected}")
    scales = None
    if wire == "int8":
        scales = np.frombuffer(payload, dtype="<f4", count=tokens, offset=ACT_HEADER.size)
        if not np.all(np.isfinite(scales)):
            raise ProtocolError("malformed", "int8 scales are not finite")
    offset = ACT_HEADER.size + scale_bytes
    body = np.frombuffer(payload, dtype=np.uint8, offset=offset + protected_bytes).reshape(
        sent, SEQ.size + packet_bytes
    )
    seqs = body[:, : SEQ.size].copy().view("<u4").reshape(-1).astype(np.int64)
    if sent and (seqs[-1] >= total or np.any(np.diff(seqs) <= 0)):
        raise ProtocolError("malformed", "packet sequence numbers out of order or out of range")
    rows = np.zeros((total, packet_bytes), dtype=np.uint8)
    rows[seqs] = body[:, SEQ.size :]
    data = rows.reshape(-1)[: tokens * d * elem_bytes]
    if protect:
        index_type = np.dtype(protected_index_dtype(d))
        section = np.frombuffer(payload, dtype=np.uint8, count=protected_bytes, offset=offset).reshape(tokens, -1)
        indices = section[:, : protect * index_type.itemsize].copy().view(index_type).astype(np.int64)
        if np.any(indices[:, -1] >= d) or np.any(np.diff(indices, axis=1) <= 0):
            raise ProtocolError("malformed", f"protected indices out of 0..{d - 1} or not increasing within a token")
        values = section[:, protect * index_type.itemsize :].reshape(tokens, protect, elem_bytes)
        # after the zero-fill: a protected element arrives even when its packet did not
        data.reshape(tokens, d, elem_bytes)[np.arange(tokens)[:, None], indices] = values
    return step, tokens, data, scales, total, total - sent


# ---- the simulated uplink -------------------------------------------------------------------------


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
