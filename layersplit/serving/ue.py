"""The UE: runs the UE's layers, sends activations through the simulated uplink (simulated_uplink.py),
receives tokens; the single-process reference it is compared with."""

from __future__ import annotations

import math
import socket
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from transformers import DynamicCache

from .. import UserError, channel
from ..uplink import protected, protected_arrived
from ..wire import WIRE_FORMATS, encode, n_packets
from ..segments import SplitModel, cache_kwarg, resolve_decode, static_capacity
from .protocol import (
    ACTIVATION,
    CLIENT_TIMEOUT_S,
    CLOSE,
    CLOSED,
    ERROR,
    ERROR_CODES,
    FRAME_NAMES,
    HEADER,
    MAX_FRAME_BYTES,
    OPEN,
    PROTOCOL_VERSION,
    READY,
    TOKEN,
    TOKEN_BODY,
    EdgeError,
    PeerClosed,
    ProtocolError,
    check_timeout,
    check_token,
    pack_activation,
    pack_protected,
    packet_rows,
    parse_json,
    parse_address,
    recv_frame,
    send_frame,
    send_json,
)
from .simulated_uplink import Uplink


def eos_ids(model, tokenizer) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = getattr(tokenizer, "eos_token_id", None)
    if ids is None:
        return set()
    return set(ids) if isinstance(ids, (list, tuple)) else {int(ids)}


@dataclass
class RequestReport:
    """What the UE measured for one request (seconds of wall clock; bytes through the socket)."""

    request: int
    prompt: str
    text: str
    tokens: list[int]
    stop_reason: str  # eos, max_new_tokens, or the code of the edge's ERROR that ended the request (too_long, ...)
    stop_message: str  # that ERROR's message; empty when the request ended on this side
    prompt_tokens: int
    split: int  # 0-based: split + 1 decoder layers on the UE
    layers_on_edge: int
    snr_db: float
    link: str
    wire: str
    protect: int  # K: each token's largest-magnitude elements on the protected path
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
    air_bits: float  # bits on air for the physical link (whole packets, headers, int8 scales, protected path)
    air_s: float  # their transmission time at the link rate (slept only with sleep_air)
    protected_air_bits: float  # the protected path's share of air_bits (expected: retransmissions included)

    @property
    def wire_bytes(self) -> int:
        return self.uplink_bytes + self.downlink_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "wire_bytes": self.wire_bytes}


SplitChoice = Callable[[float], "int | tuple[int, int]"]  # split_for_snr(snr_db) -> the 0-based split, or (split, K)


class UEClient:
    """The UE: runs layers 0..split, sends activations through the simulated uplink, receives tokens.

    `split` is a fixed 0-based split (split + 1 layers on the UE) or a callable
    split_for_snr(snr_db) -> split or (split, K), asked once per request with that request's SNR (a
    policy of LayerSplit-Protect-v0 chooses K too: policies.split_chooser). The SNR of request r is step r of
    `snr` (an channel.SnrProcess; None: a fixed infinite SNR, loss-free). One connection serves
    the client's requests one after the other. `protect` (K, 0..hidden size): each token's K
    largest-magnitude elements also cross the protected path (protect_arq.PROTECT_PATH's design; a pair
    it loses carries what the ordinary path delivered), unless the split's callable returns its own K for
    the request. `decode` (segments.DECODE_MODES, or auto):
    how the UE's layers decode; a static cache holds the prompt and max_new_tokens (at most the edge's
    max_context), rounded up to a power of two. The edge decodes its own way: nothing of it crosses
    the socket. `token`: the edge's shared secret, sent in every OPEN (None: the edge has none).
    """

    def __init__(
        self,
        model,
        tokenizer,
        address: str | tuple[str, int],
        split: int | SplitChoice = 4,
        wire: str = "fp16",
        uplink: Uplink | None = None,
        snr: channel.SnrProcess | None = None,
        timeout_s: float = CLIENT_TIMEOUT_S,
        sleep_air: bool = False,
        protect: int = 0,
        decode: str = "eager",
        token: str | None = None,
    ):
        self.split_model = model if isinstance(model, SplitModel) else SplitModel(model)
        self.decode = resolve_decode(decode, self.split_model.device)
        self.tokenizer = tokenizer
        self.address = parse_address(address) if isinstance(address, str) else tuple(address)
        if wire not in WIRE_FORMATS:
            raise UserError(f"unknown wire dtype {wire!r}: use one of {', '.join(WIRE_FORMATS)}")
        self.wire = wire
        self.uplink = uplink or Uplink("none")
        self.snr = snr
        self.timeout_s = check_timeout(timeout_s, "timeout_s")
        self.sleep_air = sleep_air
        self.token = check_token(token, "token")
        self.protect = self.check_protect(protect)
        if callable(split):
            self.split_for_snr = split
        else:
            fixed = self.split_model.validate_split(split)
            self.split_for_snr = lambda snr_db: fixed
        self.eos = eos_ids(self.split_model.model, tokenizer)
        self.requests = 0
        self.sock: socket.socket | None = None

    def check_protect(self, k) -> int:
        """K of --protect: a whole number of elements per token, 0..hidden size."""
        d = self.split_model.hidden_size
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= d:
            raise UserError(
                f"--protect {k!r}: give a number of elements per token from 0 to {d} (the model's hidden size)"
            )
        self.uplink.kind.check_protect(k)
        return int(k)

    # --- connection ---
    def connect(self) -> "UEClient":
        if self.sock is None:
            try:
                self.sock = socket.create_connection(self.address, timeout=self.timeout_s)
            except OSError as e:
                raise UserError(
                    f"cannot connect to the edge at {self.address[0]}:{self.address[1]} ({e}); "
                    f"start it with `python serve.py edge --port {self.address[1]}`"
                ) from e
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

    def _protected_section(self, flags, original, rows, kept, snr_db, wire, stream) -> bytes:
        """The protected section of a transfer whose element bytes were `original` before the air and arrive
        as the packets `rows` at indices `kept`: each token's flagged elements from `original`, but those of
        pairs the protected path loses (uplink.protected_arrived, from the request stream's side stream after
        the ordinary packets, as the split hook draws) as the ordinary path delivered them, so that the edge's
        overwrite gives what add_noise.py's split hook gives."""
        d, protect = flags.shape[-1], int(flags[0].sum())
        arrived = protected_arrived(flags, self.uplink.link(snr_db, wire), protect, stream)
        values = original
        if not torch.equal(arrived, flags):
            delivered = np.zeros_like(rows)
            delivered[kept] = rows[kept]
            elem_bytes = WIRE_FORMATS[wire][0]
            lost = np.repeat((flags & ~arrived).flatten().cpu().numpy(), elem_bytes)
            values = original.copy()
            values[lost] = delivered.reshape(-1)[: original.size][lost]
        indices = flags.nonzero()[:, 1].reshape(-1, protect).cpu().numpy()
        return pack_protected(values, indices, d, wire)

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
        """Greedy generation of up to max_new_tokens (stops after an end-of-sequence token).

        When the edge ends the request with an ERROR after some tokens (too_long: the context limit;
        evicted, timeout, internal), the EdgeError raised carries them: its `report` is the request
        so far, with the edge's code as stop_reason."""
        if max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        request = self.requests
        snr_db = self.next_snr()
        self.requests += 1
        choice = self.split_for_snr(snr_db)
        split, protect = choice if isinstance(choice, tuple) else (choice, self.protect)
        split, protect = self.split_model.validate_split(split), self.check_protect(protect)
        per, ber = self.uplink.loss(snr_db, self.wire)  # once: every step of the request has this SNR
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        if ids.shape[1] == 0:
            raise UserError("the prompt is empty after tokenisation")
        k = self.uplink.packet_elements(snr_db, self.wire)
        d, wire = self.split_model.hidden_size, self.wire
        packet_bytes = k * WIRE_FORMATS[wire][0]
        stream = self.uplink.stream(request)
        self._drop_if_stale()
        self.connect()
        up = down = 0
        start = time.perf_counter()
        up += send_json(
            self.sock,
            OPEN,
            {
                "protocol": PROTOCOL_VERSION,
                "model": self.split_model.fingerprint,
                "split": split,
                "wire": wire,
                "elements_per_packet": k,
                "protect": protect,
                "request": request,
                **({"token": self.token} if self.token is not None else {}),
            },
        )
        payload, n = self._expect(READY)
        down += n
        ready = parse_json(payload)
        # a static cache for the prompt and the new tokens, or what the edge keeps if less, plus the
        # step it refuses as too_long: that refusal, not this cache, ends the request
        room = min(ids.shape[1] + max_new_tokens, max(ids.shape[1], ready["max_context"] + 1))
        cache = self.split_model.new_cache("ue", split, self.decode, static_capacity(room))
        x = ids
        tokens, times, step_bytes = [], [], []
        ue_s = edge_s = air_s = 0.0
        packets = lost = flipped = air_bits = protected_bits = 0
        stop, ended = "max_new_tokens", None  # ended: the edge's ERROR that ended the request
        try:
            for step in range(max_new_tokens):
                t = time.perf_counter()
                hidden = self.split_model.ue_forward(split, x, cache)[0]
                data, scales = encode(hidden, wire)
                if protect:  # taken before the air flips any bit: the protected path has its own CRC
                    flags = protected(hidden, protect)
                    original = data.copy()
                ue_s += time.perf_counter() - t
                total = n_packets(hidden.numel(), k)
                kept, bits = self.uplink.transmit(data, total, snr_db, wire, stream, loss=(per, ber))
                rows = packet_rows(data, total, packet_bytes)
                section = self._protected_section(flags, original, rows, kept, snr_db, wire, stream) if protect else b""
                frame = pack_activation(step, hidden.shape[0], d, rows, kept, scales, section)
                if HEADER.size + len(frame) > ready["max_frame_bytes"]:
                    raise UserError(
                        f"the prompt's activation ({len(frame)} bytes) exceeds the edge's frame limit "
                        f"of {ready['max_frame_bytes']} bytes: use a shorter prompt or --max-frame-bytes"
                    )
                b, s = self.uplink.air(snr_db, wire, hidden.shape[0], d, protect)
                air_bits, air_s = air_bits + b, air_s + s
                protected_bits += self.uplink.protected_air(snr_db, wire, hidden.shape[0], d, protect)[0]
                if self.sleep_air and s > 0:
                    time.sleep(s)
                sent = send_frame(self.sock, ACTIVATION, frame)
                up += sent
                step_bytes.append(sent)
                try:
                    payload, n = self._expect(TOKEN)
                except EdgeError as e:
                    if not tokens:
                        raise
                    stop, ended = e.code, e  # the edge ended its session: keep what came before
                    break
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
                    stop = "eos"
                    break
                x = torch.tensor([[token]])
            if ended is None:
                up += send_frame(self.sock, CLOSE)
                _, n = self._expect(CLOSED)
                down += n
        except BaseException:
            self.close()  # a half-finished session must not linger: the edge frees it on disconnect
            raise
        finally:
            self.split_model.release(cache)
        total = times[-1] - start
        n_tok = len(tokens)
        report = RequestReport(
            request=request,
            prompt=prompt,
            text=self.tokenizer.decode(tokens, skip_special_tokens=True),
            tokens=tokens,
            stop_reason=stop,
            stop_message="" if ended is None else ended.message,
            prompt_tokens=int(ids.shape[1]),
            split=split,
            layers_on_edge=self.split_model.n_layers - split - 1,
            snr_db=snr_db,
            link=self.uplink.mode,
            wire=wire,
            protect=protect,
            packet_error_rate=per,
            bit_error_rate=ber,
            ttft_s=times[0] - start,
            tpot_s=(times[-1] - times[0]) / (n_tok - 1) if n_tok > 1 else math.nan,
            tokens_per_s=n_tok / total,
            total_s=total,
            ue_compute_s=ue_s,
            edge_compute_s=edge_s,
            ue_prefill_s=prefill[0],
            edge_prefill_s=prefill[1],
            uplink_bytes=up,
            downlink_bytes=down,
            uplink_bytes_prefill=step_bytes[0],
            uplink_bytes_per_token=float(np.mean(step_bytes[1:])) if n_tok > 1 else math.nan,
            packets=packets,
            packets_lost=lost,
            bits_flipped=flipped,
            air_bits=air_bits,
            air_s=air_s,
            protected_air_bits=protected_bits,
        )
        if ended is not None:
            raise EdgeError(ended.code, ended.message, report)
        return report


@torch.no_grad()
def generate_single_process(
    model, tokenizer, prompt: str, max_new_tokens: int, decode: str = "eager"
) -> tuple[list[int], list[float], float]:
    """The reference: greedy tokens of the whole model in one process, with a KV cache.

    Returns (tokens, arrival times, start time) measured like UEClient.generate, so that time to
    first token and time per output token compare like for like. Stops after an end-of-sequence token.
    decode eager: the model's forward with a DynamicCache (the reference itself); static or compiled
    (segments.DECODE_MODES; auto as resolve_decode): a static cache sized like the UE's. `model`
    may be a SplitModel: pass the same one on every call, so that its compiled steps and cache are
    reused.
    """
    split_model = model if isinstance(model, SplitModel) else None
    model = model.model if split_model is not None else model
    device = next(model.parameters()).device
    decode = resolve_decode(decode, device)
    eos = eos_ids(model, tokenizer)
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    if decode == "eager":
        kw, cache = cache_kwarg(model), DynamicCache(config=model.config)

        def forward(x):
            return model(input_ids=x, use_cache=True, logits_to_keep=1, **{kw: cache}).logits[0, -1]
    else:
        split_model = split_model or SplitModel(model)
        cache = split_model.new_cache("full", None, decode, static_capacity(ids.shape[1] + max_new_tokens))

        def forward(x):
            return split_model.logits(x, cache)

    tokens, times = [], []
    start = time.perf_counter()
    x = ids
    try:
        for _ in range(max_new_tokens):
            token = int(forward(x).argmax())
            times.append(time.perf_counter())
            tokens.append(token)
            if token in eos:
                break
            x = torch.tensor([[token]], device=device)
    finally:
        if split_model is not None:
            split_model.release(cache)
    return tokens, times, start
