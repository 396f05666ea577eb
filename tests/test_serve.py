"""Split inference over a real socket (layersplit.serving, serve.py): wire format, uplink, exactness,
and an edge that survives bad clients. Mechanics on the tiny random Llama over loopback; one test
on the embedded SmolLM2."""

from __future__ import annotations

import gc
import json
import math
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import serve
from conftest import ROOT, TINY_LAYERS, wait_until
from layersplit import UserError, channel, protect_arq, segments
from layersplit.serving import protocol
from layersplit.uplink import protected
from layersplit.serving.simulated_uplink import Uplink
from layersplit.serving.ue import UEClient, generate_single_process
from layersplit.serving.edge import EdgeServer
from layersplit.wire import WIRE_FORMATS, decode, encode, n_packets

PROMPT = "The wireless uplink carries the hidden state"
K = 16  # elements per packet in the raw-socket tests (the tiny model's hidden size is 64)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread for these tests


def reference_tokens(model, tokenizer, prompt, n):
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[0, ids.shape[1] :].tolist()


def caches_freed(server):
    """A condition for wait_until: no KV cache left after a collection. A handler thread may still hold
    its ended session for a moment after leaving server.sessions, so this is polled, not asserted once."""

    def check():
        gc.collect()
        return server.live_caches() == 0

    return check


# --- raw clients: what a misbehaving UE sends ---------------------------------------------------------
def connect(server) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send_open(sock, split_model, split=2, wire="fp32", k=K):
    protocol.send_json(
        sock,
        protocol.OPEN,
        {
            "protocol": protocol.PROTOCOL_VERSION,
            "model": split_model.fingerprint,
            "split": split,
            "wire": wire,
            "elements_per_packet": k,
        },
    )


def answer(sock, timeout_s=5.0):
    ftype, payload = protocol.recv_frame(sock, timeout_s=timeout_s)
    return ftype, (json.loads(payload) if ftype in (protocol.READY, protocol.ERROR, protocol.CLOSED) else payload)


def open_session(server, split_model, split=2):
    sock = connect(server)
    send_open(sock, split_model, split)
    assert answer(sock)[0] == protocol.READY
    return sock


def activation(split_model, split=2, tokens=5, step=0, wire="fp32", k=K):
    ids = torch.arange(3, 3 + tokens)[None]
    hidden = split_model.ue_forward(split, ids, split_model.new_cache("ue", split))[0]
    data, scales = encode(hidden, wire)
    rows = protocol.packet_rows(data, n_packets(tokens * split_model.hidden_size, k), k * WIRE_FORMATS[wire][0])
    return protocol.pack_activation(step, tokens, split_model.hidden_size, rows, np.arange(len(rows)), scales)


def still_serves(server, split_model, tokenizer):
    """A well-behaved UE still gets a full, correct answer."""
    with UEClient(split_model, tokenizer, server.address, split=2, wire="fp32") as ue:
        report = ue.generate(PROMPT, 4)
    assert report.tokens == reference_tokens(split_model.model, tokenizer, PROMPT, 4)
    return report


# --- the wire format ----------------------------------------------------------------------------------
@pytest.mark.parametrize("wire", list(WIRE_FORMATS))
def test_activations_round_trip_in_every_wire_dtype(wire):
    torch.manual_seed(0)
    x = torch.randn(5, 64) * torch.logspace(-2, 2, 5)[:, None]  # tokens of very different magnitudes
    data, scales = encode(x, wire)
    assert data.size == x.numel() * WIRE_FORMATS[wire][0]
    y = decode(data, scales, (5, 64), wire)
    if wire == "fp32":
        assert torch.equal(x, y)
    elif wire == "int8":  # per-token absmax scale: error at most half a step of that token's scale
        step = x.abs().amax(1, keepdim=True) / 127
        assert scales is not None and scales.shape == (5,)
        assert bool(((x - y).abs() <= step / 2 + 1e-6 * step).all())
    else:
        assert torch.allclose(x, y, rtol=1e-2 if wire == "bf16" else 1e-3, atol=0)


def test_lost_packets_are_zero_filled_and_the_rest_arrive_exact():
    x = torch.randn(3, 64)
    data, _ = encode(x, "fp32")
    total = n_packets(3 * 64, 20)  # 192 elements in 10 packets of 20, the last one padded
    rows = protocol.packet_rows(data, total, 20 * 4)
    kept = np.array([0, 2, 3, 9])
    payload = protocol.pack_activation(7, 3, 64, rows, kept, None)
    step, tokens, got, scales, n_total, missing = protocol.unpack_activation(payload, 64, "fp32", 20)
    assert (step, tokens, n_total, missing) == (7, 3, 10, 6)
    y = decode(got, scales, (3, 64), "fp32").reshape(-1)
    for i in range(total):
        part = slice(20 * i, min(20 * (i + 1), 192))
        expected = x.reshape(-1)[part] if i in kept else torch.zeros(part.stop - part.start)
        assert torch.equal(y[part], expected), i


def test_malformed_activations_are_rejected():
    x = torch.randn(2, 64)
    data, _ = encode(x, "fp16")
    rows = protocol.packet_rows(data, 8, 32)
    good = protocol.pack_activation(0, 2, 64, rows, np.arange(8), None)
    protocol.unpack_activation(good, 64, "fp16", 16)
    bad = {
        "truncated": good[:-1],
        "wrong width": protocol.ACT_HEADER.pack(0, 2, 65, 8, 8) + good[protocol.ACT_HEADER.size :],
        "packet count": protocol.ACT_HEADER.pack(0, 2, 64, 9, 8) + good[protocol.ACT_HEADER.size :],
        "out of order": protocol.pack_activation(0, 2, 64, rows, np.array([1, 0, 2, 3, 4, 5, 6, 7]), None),
        "short header": good[:5],
    }
    for name, payload in bad.items():
        with pytest.raises(protocol.ProtocolError) as e:
            protocol.unpack_activation(payload, 64, "fp16", 16)
        assert e.value.code == "malformed", name


# --- the uplink ---------------------------------------------------------------------------------------
def test_erasure_losses_follow_the_per_and_are_seeded():
    link = Uplink("erasure", channel.LinkConfig(), seed=3)
    per, _ = link.loss(15.0, "fp16")
    assert per == pytest.approx(channel.packet_error_rate(channel.LinkConfig(snr_db=15.0, bits_per_element=16)))
    data = np.zeros(20000 * 128, dtype=np.uint8)
    kept, _ = link.transmit(data, 20000, 15.0, "fp16", link.stream(0))
    lost = 1 - len(kept) / 20000
    assert abs(lost - per) < 4 * math.sqrt(per * (1 - per) / 20000), (lost, per)
    again, _ = link.transmit(data, 20000, 15.0, "fp16", link.stream(0))
    stream = link.stream(0)
    first, _ = link.transmit(data, 20000, 15.0, "fp16", stream)
    second, _ = link.transmit(data, 20000, 15.0, "fp16", stream)  # the request's next step draws afresh
    other, _ = link.transmit(data, 20000, 15.0, "fp16", link.stream(1))
    assert np.array_equal(kept, again) and np.array_equal(kept, first)
    assert not np.array_equal(kept, second) and not np.array_equal(kept, other)
    # the wire dtype sets the bits per element, so the packet length and the PER
    assert link.loss(15.0, "int8")[0] < per < link.loss(15.0, "fp32")[0]
    for loss_free in (Uplink("none"), link):
        snr = math.inf if loss_free is link else 0.0
        assert len(loss_free.transmit(data, 20000, snr, "fp16", link.stream(0))[0]) == 20000
    assert link.air(math.inf, "fp16", 5, 64) == (0, 0.0)
    bits, seconds = link.air(15.0, "int8", 5, 64)
    cfg = channel.LinkConfig(snr_db=15.0, bits_per_element=8)
    assert bits == channel.payload_bits(cfg, 5, 64) + 5 * 32
    assert seconds == pytest.approx(bits / channel.achievable_rate_bps(cfg))


def test_bitflip_flips_payload_bits_at_the_ber():
    link = Uplink("bitflip", channel.LinkConfig(fading="awgn"), seed=0)
    _, ber = link.loss(6.0, "fp16")
    data = np.zeros(500 * 128, dtype=np.uint8)
    kept, flipped = link.transmit(data, 500, 6.0, "fp16", link.stream(0))
    n_bits = data.size * 8
    assert len(kept) == 500  # no CRC: nothing is dropped
    assert int(np.unpackbits(data).sum()) == flipped
    assert abs(flipped / n_bits - ber) < 5 * math.sqrt(ber / n_bits)


# --- split inference over loopback --------------------------------------------------------------------
def test_segments_reproduce_the_full_model(split_model):
    for split in range(TINY_LAYERS):  # split L - 1: every layer on the UE, the edge runs the LM head alone
        assert segments.check_composition(split_model, split) == 0.0


@pytest.mark.parametrize("split", range(TINY_LAYERS))
def test_a_loss_free_link_gives_exactly_the_single_process_tokens(start_edge, split_model, tokenizer, split):
    server = start_edge()
    expected = reference_tokens(split_model.model, tokenizer, PROMPT, 12)
    single, _, _ = generate_single_process(split_model.model, tokenizer, PROMPT, 12)
    assert single == expected
    for link in (Uplink("none"), Uplink("erasure")):  # erasure at an infinite SNR loses nothing
        with UEClient(split_model, tokenizer, server.address, split=split, wire="fp32", uplink=link) as ue:
            report = ue.generate(PROMPT, 12)
        assert report.tokens == expected
        assert report.packets_lost == 0 and report.split == split and report.layers_on_edge == TINY_LAYERS - split - 1
        assert report.ttft_s > 0 and report.tpot_s > 0 and report.tokens_per_s > 0
        # default packets of 64 elements: one per token of the tiny model (d = 64), each with its sequence number
        headers = protocol.HEADER.size + protocol.ACT_HEADER.size
        assert report.uplink_bytes_per_token == headers + (4 + 64 * 4)
        assert report.uplink_bytes_prefill == headers + len(tokenizer(PROMPT).input_ids) * (4 + 64 * 4)
        assert report.wire_bytes == report.uplink_bytes + report.downlink_bytes


def test_every_wire_dtype_and_the_bytes_per_token(start_edge, split_model, tokenizer):
    server = start_edge()
    per_token = {}
    for wire in WIRE_FORMATS:
        with UEClient(split_model, tokenizer, server.address, split=2, wire=wire) as ue:
            report = ue.generate(PROMPT, 6)
        assert len(report.tokens) == 6
        per_token[wire] = report.uplink_bytes_per_token
    overhead = protocol.HEADER.size + protocol.ACT_HEADER.size + 4  # one 64-element packet and its sequence number
    assert per_token == {
        "fp32": overhead + 256,
        "fp16": overhead + 128,
        "bf16": overhead + 128,
        "int8": overhead + 64 + 4,
    }  # int8: one float32 scale per token


def test_a_policy_chooses_each_requests_split_from_its_snr(start_edge, split_model, tokenizer):
    server = start_edge()
    seen = []

    def split_for_snr(snr_db):
        seen.append(snr_db)
        return 1 if snr_db > 20 else 3

    snr = channel.SnrProcess(20.0, 6.0, 0.5, seed=1)
    uplink = Uplink("erasure", channel.LinkConfig(), seed=1)
    with UEClient(split_model, tokenizer, server.address, split=split_for_snr, uplink=uplink, snr=snr) as ue:
        reports = [ue.generate(PROMPT, 3) for _ in range(6)]
    path = channel.snr_path(20.0, 6.0, 0.5, 6, seed=1)
    assert [r.snr_db for r in reports] == pytest.approx(list(path)) == seen
    assert [r.split for r in reports] == [1 if s > 20 else 3 for s in path]
    assert {r.split for r in reports} == {1, 3}
    assert all(r.packet_error_rate == pytest.approx(uplink.loss(r.snr_db, "fp16")[0]) for r in reports)


def test_a_protect_policy_chooses_each_requests_split_and_k(start_edge, split_model, tokenizer):
    server = start_edge()

    def choose(snr_db):  # what policies.split_chooser returns
        return (1, 4) if snr_db > 20 else (3, 0)

    snr = channel.SnrProcess(20.0, 6.0, 0.5, seed=1)
    uplink = Uplink("erasure", channel.LinkConfig(), seed=1)
    with UEClient(split_model, tokenizer, server.address, split=choose, uplink=uplink, snr=snr, protect=2) as ue:
        reports = [ue.generate(PROMPT, 2) for _ in range(6)]
    assert [(r.split, r.protect) for r in reports] == [choose(r.snr_db) for r in reports]
    assert {r.protect for r in reports} == {0, 4}  # the policy's K, not the client's default of 2
    assert all((r.protected_air_bits > 0) == (r.protect > 0) for r in reports)


def test_packet_losses_are_counted_by_the_edge_and_reproducible(start_edge, split_model, tokenizer):
    server = start_edge()
    runs = []
    for _ in range(2):
        uplink = Uplink("erasure", channel.LinkConfig(elements_per_packet=8), seed=5)
        with UEClient(
            split_model,
            tokenizer,
            server.address,
            split=2,
            uplink=uplink,
            snr=channel.SnrProcess(12.0, 0.0, 0.0, seed=5),
        ) as ue:
            runs.append(ue.generate(PROMPT, 8))
    a, b = runs
    assert a.tokens == b.tokens and a.packets_lost == b.packets_lost
    assert 0 < a.packets_lost < a.packets and a.air_bits > 0 and a.air_s > 0
    # fewer bytes cross the socket than without losses: lost packets never leave the UE
    with UEClient(split_model, tokenizer, server.address, split=2) as ue:
        clean = ue.generate(PROMPT, 8)
    assert clean.packets_lost == 0 and a.uplink_bytes_prefill < clean.uplink_bytes_prefill


def nr_snr_with_losses() -> float:
    """An Es/N0 where the NR link loses some TBs and delivers others (from the committed BLER table)."""
    from layersplit import nr

    return next(float(s) for s in np.arange(-10.0, 20.0, 0.5) if 0.2 < nr.operating_point(float(s)).residual < 0.8)


@pytest.mark.parametrize(
    "link,protect,path", [("erasure", 0, "coded"), ("erasure", 4, "coded"), ("erasure", 4, "arq"), ("nr", 0, "coded")]
)
def test_add_noise_and_serve_impair_the_same_elements(
    start_edge, split_model, tokenizer, tiny_model_dir, monkeypatch, capsys, link, protect, path
):
    """One impairment engine, one seeding scheme: at the same seed, SNR, link and prompt, the split hook of
    add_noise.py --generate and serve.py's uplink lose the same elements at every step, and with
    --protect K both keep the same K elements of each token, and lose the same of them on the protected path
    (arq: uncoded ARQ in a block fade loses many). nr: whole TBs, sized by the MCS at that SNR."""
    import add_noise
    from layersplit.link import SplitLink

    monkeypatch.setattr(protect_arq, "PROTECT_PATH", path)  # add_noise.py sets it from --protect-path
    from layersplit.serving import edge

    seed, snr_db, k, split, steps = 7, 12.0 if link == "erasure" else nr_snr_with_losses(), 8, 1, 4
    hook_lost, real_transmit = [], SplitLink.transmit

    def record_hook(self, hidden):
        received = real_transmit(self, hidden)
        if self.mode == link:  # not the clean reference generation
            hook_lost.append((received == 0).flatten())
        return received

    monkeypatch.setattr(SplitLink, "transmit", record_hook)
    assert (
        add_noise.main(
            [
                "--model",
                str(tiny_model_dir),
                "--generate",
                PROMPT,
                "--split",
                str(split),
                "--snr-db",
                str(snr_db),
                "--elements-per-packet",
                str(k),
                "--seed",
                str(seed),
                "--link",
                link,
                "--max-new-tokens",
                str(steps),
                "--protect",
                str(protect),
                "--protect-path",
                path,
                "--json",
            ]
        )
        == 0
    )
    capsys.readouterr()
    edge_lost, real_decode = [], edge.decode

    def record_edge(*args):
        received = real_decode(*args)
        edge_lost.append((received == 0).flatten())
        return received

    monkeypatch.setattr(edge, "decode", record_edge)
    server = start_edge()
    uplink = Uplink(link, channel.LinkConfig(elements_per_packet=k), seed=seed)
    with UEClient(
        split_model,
        tokenizer,
        server.address,
        split=split,
        wire="fp16",
        uplink=uplink,
        snr=channel.SnrProcess(snr_db, 0.0, 0.0),
        protect=protect,
    ) as ue:
        report = ue.generate(PROMPT, steps)
    assert len(hook_lost) == len(edge_lost) == steps == len(report.tokens)
    assert (
        hook_lost[0].numel() == len(tokenizer(PROMPT).input_ids) * split_model.hidden_size
    )  # the prompt, then a token a step
    for step, (a, b) in enumerate(zip(hook_lost, edge_lost)):
        assert torch.equal(a, b), step
    zeroed = int(sum(m.sum() for m in edge_lost))
    if protect:  # protected elements of lost packets arrive all the same
        assert 0 < zeroed < report.packets_lost * k
    elif link == "nr":  # packets are TBs of the MCS at this SNR, the last of each transfer partly filled
        from layersplit import nr

        per_tb = nr.elements_per_tb(nr.operating_point(snr_db), 16)
        assert report.packets == sum(math.ceil(m.numel() / per_tb) for m in edge_lost)
        assert 0 < report.packets_lost < report.packets and 0 < zeroed <= report.packets_lost * per_tb
    else:
        assert 0 < zeroed == report.packets_lost * k


# --- the protected path (--protect K) -----------------------------------------------------------------
def protected_activation(x, wire, protect, k=K, kept=None):
    """(ACTIVATION payload of x with each token's `protect` largest elements protected and only the
    packets `kept` delivered (default: none), the flags of the protected elements, x as the wire carries it)."""
    tokens, d = x.shape
    data, scales = encode(x, wire)
    flags = protected(x, protect)
    section = protocol.pack_protected(data, flags.nonzero()[:, 1].reshape(tokens, protect).numpy(), d, wire)
    exact = decode(data, scales, (tokens, d), wire)
    data ^= 0xFF  # whatever the air does to the packets afterwards cannot reach the protected copies
    rows = protocol.packet_rows(data, n_packets(tokens * d, k), k * WIRE_FORMATS[wire][0])
    kept = np.arange(0) if kept is None else kept
    return protocol.pack_activation(3, tokens, d, rows, kept, scales, section), flags, exact


@pytest.mark.parametrize("wire", list(WIRE_FORMATS))
def test_protected_elements_arrive_exact_when_every_packet_is_lost(wire):
    torch.manual_seed(0)
    x = torch.randn(5, 64) * torch.logspace(-1, 1, 64)
    payload, flags, exact = protected_activation(x, wire, protect=6)
    # the frame: header, int8 scales, per token 6 uint16 indices and 6 elements, no packets
    scale_bytes = 5 * 4 if wire == "int8" else 0
    assert len(payload) == protocol.ACT_HEADER.size + scale_bytes + 5 * 6 * (2 + WIRE_FORMATS[wire][0])
    step, tokens, data, scales, total, missing = protocol.unpack_activation(payload, 64, wire, K, protect=6)
    assert (step, tokens, total, missing) == (3, 5, 20, 20)
    y = decode(data, scales, (5, 64), wire)
    assert int(flags.sum()) == 30
    assert torch.equal(y[flags], exact[flags]) and torch.equal(y[~flags], torch.zeros(5 * 64 - 30))
    if wire == "fp32":
        assert torch.equal(y[flags], x[flags])
    # delivered packets (here with every bit flipped) are overwritten at the protected positions only
    payload, _, _ = protected_activation(x, wire, protect=6, kept=np.arange(20))
    y = decode(*protocol.unpack_activation(payload, 64, wire, K, protect=6)[2:4], (5, 64), wire)
    assert torch.equal(y[flags], exact[flags]) and not torch.equal(y[~flags], exact[~flags])


def test_malformed_protected_sections_are_refused():
    torch.manual_seed(0)
    x = torch.randn(2, 64)
    good, _, _ = protected_activation(x, "fp16", protect=3)
    protocol.unpack_activation(good, 64, "fp16", K, protect=3)
    head = protocol.ACT_HEADER.size
    index = lambda token, i: head + token * 3 * (2 + 2) + 2 * i  # noqa: E731 (byte offset of an index)

    def with_index(token, i, value):
        b = bytearray(good)
        b[index(token, i) : index(token, i) + 2] = int(value).to_bytes(2, "little")
        return bytes(b)

    first = int.from_bytes(good[index(1, 0) : index(1, 0) + 2], "little")
    bad = {
        "index = d": with_index(1, 2, 64),
        "index beyond d": with_index(0, 2, 65535),
        "repeated index": with_index(1, 1, first),
        "truncated": good[:-1],
        "one byte more": good + b"\x00",
    }
    for name, payload in bad.items():
        with pytest.raises(protocol.ProtocolError) as e:
            protocol.unpack_activation(payload, 64, "fp16", K, protect=3)
        assert e.value.code == "malformed", name
    for session_protect in (0, 2, 4):  # a section of another K does not fit this session's frame
        with pytest.raises(protocol.ProtocolError, match="expected"):
            protocol.unpack_activation(good, 64, "fp16", K, protect=session_protect)
    assert protocol.protected_index_dtype(65536) == "<u2" and protocol.protected_index_dtype(65537) == "<u4"


def test_every_element_protected_crosses_a_dead_link_exactly(start_edge, split_model, tokenizer, monkeypatch):
    """K = d: everything crosses the protected path (the "counted" design, which loses nothing), so at -5 dB,
    where nearly every packet is lost (erasure) or a fifth of the bits flip (bitflip), the tokens are the
    loss-free ones; K = 0 there gives other tokens."""
    monkeypatch.setattr(protect_arq, "PROTECT_PATH", "counted")
    server = start_edge()
    d = split_model.hidden_size
    for wire in ("fp32", "int8"):
        with UEClient(split_model, tokenizer, server.address, split=1, wire=wire) as ue:
            clean = ue.generate(PROMPT, 6).tokens
        if wire == "fp32":
            assert clean == reference_tokens(split_model.model, tokenizer, PROMPT, 6)
        for link in ("erasure", "bitflip"):
            reports = {}
            for protect in (0, d):
                uplink = Uplink(link, channel.LinkConfig(elements_per_packet=64), seed=2)
                with UEClient(
                    split_model,
                    tokenizer,
                    server.address,
                    split=1,
                    wire=wire,
                    uplink=uplink,
                    snr=channel.SnrProcess(-5.0, 0.0, 0.0),
                    protect=protect,
                ) as ue:
                    reports[protect] = ue.generate(PROMPT, 6)
            lost, kept = reports[0], reports[d]
            if link == "erasure":
                assert kept.packets_lost > 0.9 * kept.packets and kept.packet_error_rate > 0.9
            else:
                assert kept.bits_flipped > 0.1 * 8 * WIRE_FORMATS[wire][0] * d * (kept.prompt_tokens + 5)
            assert kept.tokens == clean, (wire, link)
            assert lost.tokens != clean, (wire, link)


def test_protect_zero_is_todays_frame_and_k_adds_its_section(start_edge, split_model, tokenizer):
    """K = 0 sends what an unprotected UE sends; K = 4 loses the same packets (the ordinary path's
    draws do not depend on it) and adds, per token, 4 uint16 indices and 4 fp16 elements to the frame."""
    server = start_edge()
    reports = {}
    for protect in (None, 0, 4):
        uplink = Uplink("erasure", channel.LinkConfig(elements_per_packet=8), seed=5)
        kwargs = {} if protect is None else {"protect": protect}
        with UEClient(
            split_model,
            tokenizer,
            server.address,
            split=2,
            uplink=uplink,
            snr=channel.SnrProcess(12.0, 0.0, 0.0),
            **kwargs,
        ) as ue:
            reports[protect] = ue.generate(PROMPT, 8)
    plain, zero, four = reports[None], reports[0], reports[4]
    assert len(plain.tokens) == len(four.tokens) == 8  # same steps, so the same packets drawn
    for field in ("tokens", "uplink_bytes", "uplink_bytes_prefill", "packets", "packets_lost", "air_bits", "air_s"):
        assert getattr(zero, field) == getattr(plain, field), field
    assert zero.protect == 0 and zero.protected_air_bits == 0
    assert 0 < four.packets_lost == plain.packets_lost and four.packets == plain.packets
    assert four.uplink_bytes_prefill == plain.uplink_bytes_prefill + 24 * 4 * (2 + 2)  # 24 prompt tokens
    assert four.uplink_bytes_per_token == plain.uplink_bytes_per_token + 4 * (2 + 2)


def test_the_report_counts_the_protected_bits_on_air(start_edge, split_model, tokenizer, monkeypatch):
    monkeypatch.setattr(protect_arq, "PROTECT_PATH", "counted")  # the hand-worked design
    server = start_edge()
    reports = {}
    for protect in (0, 4):
        uplink = Uplink("erasure", channel.LinkConfig(elements_per_packet=16), seed=1)
        with UEClient(
            split_model,
            tokenizer,
            server.address,
            split=2,
            wire="fp16",
            uplink=uplink,
            snr=channel.SnrProcess(12.0, 0.0, 0.0),
            protect=protect,
        ) as ue:
            reports[protect] = ue.generate(PROMPT, 5)
    r, plain = reports[4], reports[0]
    assert r.prompt_tokens == 24 and len(r.tokens) == len(plain.tokens) == 5
    # d = 64: a 6-bit index and a 16-bit fp16 value, 22 bits a pair. Prompt: 24 tokens x 4 pairs = 2112 bits
    # in packets of 16 x 16 = 256 payload bits: 9 packets; each later step 88 bits: 1 packet. 13 packets of
    # 256 + 32 header bits, each sent 1 / (1 - PER) times on average.
    cfg = channel.LinkConfig(snr_db=12.0, bits_per_element=16, elements_per_packet=16)
    per = channel.packet_error_rate(cfg)
    assert r.packet_error_rate == per and 0.01 < per < 0.5
    assert r.protect == 4 and r.protected_air_bits == pytest.approx(13 * 288 / (1 - per), rel=1e-12)
    assert r.protected_air_bits == pytest.approx(
        channel.protected_air_bits(cfg, 24, 4, 64) + 4 * channel.protected_air_bits(cfg, 1, 4, 64), rel=1e-12
    )
    assert r.air_bits == pytest.approx(plain.air_bits + r.protected_air_bits, rel=1e-12)
    assert r.air_s == pytest.approx(plain.air_s + r.protected_air_bits / channel.achievable_rate_bps(cfg), rel=1e-12)
    assert Uplink("erasure").air(math.inf, "fp16", 24, 64, protect=4) == (0, 0.0)  # a loss-free link: no air


def test_bad_protect_values_are_refused(start_edge, split_model, tokenizer, tiny_model_dir, capsys):
    with socket.socket() as s:  # a port where nothing listens: the errors come before any connection
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["ue", "--connect", f"127.0.0.1:{port}", "--model", str(tiny_model_dir), "--split", "1"]
    for k, message in (
        ("-1", "serve.py ue: error: argument --protect: -1 must be an integer >= 0"),  # its type
        ("65", "serve.py: error: --protect 65: give a number of elements per token from 0 to 64"),
    ):
        try:
            code = serve.main([*common, "--protect", k])
        except SystemExit as e:  # argparse's refusal
            code = e.code
        assert code == 2
        err = capsys.readouterr().err  # (the model's loading bar before the 65's)
        assert err.strip().splitlines()[-1].startswith(message) and "Traceback" not in err, err
    with pytest.raises(UserError, match="from 0 to 64"):
        UEClient(split_model, tokenizer, "127.0.0.1:1", protect=True)
    server = start_edge()  # the edge checks the OPEN's K itself
    for k in (65, -1, True, "4", 2.5):
        sock = connect(server)
        protocol.send_json(
            sock,
            protocol.OPEN,
            {
                "protocol": protocol.PROTOCOL_VERSION,
                "split": 2,
                "wire": "fp16",
                "model": split_model.fingerprint,
                "elements_per_packet": K,
                "protect": k,
            },
        )
        ftype, err = answer(sock)
        assert ftype == protocol.ERROR and err["code"] == "malformed" and "protect" in err["message"], (k, err)
        sock.close()
    assert wait_until(lambda: not server.sessions)
    still_serves(server, split_model, tokenizer)


# --- reliability --------------------------------------------------------------------------------------
def test_a_client_that_disconnects_mid_generation_frees_its_session(start_edge, split_model, tokenizer):
    server = start_edge()
    sock = open_session(server, split_model)
    protocol.send_frame(sock, protocol.ACTIVATION, activation(split_model))
    assert answer(sock)[0] == protocol.TOKEN
    assert len(server.sessions) == 1 and server.live_caches() == 1
    sock.close()  # gone in the middle of a generation
    assert wait_until(lambda: not server.sessions)
    assert wait_until(caches_freed(server))
    still_serves(server, split_model, tokenizer)


def test_a_ue_client_interrupted_mid_generation_is_cleaned_up(start_edge, split_model, tokenizer, monkeypatch):
    server = start_edge()
    ue = UEClient(split_model, tokenizer, server.address, split=2)
    calls = {"n": 0}
    real = Uplink.transmit

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # e.g. Ctrl-C in the third step
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Uplink, "transmit", failing)
    with pytest.raises(KeyboardInterrupt):
        ue.generate(PROMPT, 10)
    monkeypatch.undo()
    assert ue.sock is None  # the UE dropped the connection
    assert wait_until(lambda: not server.sessions)
    still_serves(server, split_model, tokenizer)


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        protocol.HEADER.pack(protocol.MAGIC, 99, protocol.OPEN, 0, 0),
        protocol.HEADER.pack(protocol.MAGIC, protocol.PROTOCOL_VERSION, 42, 0, 0),
    ],
    ids=["http", "version", "type"],
)
def test_a_malformed_frame_is_refused_and_the_edge_keeps_serving(start_edge, split_model, tokenizer, garbage):
    server = start_edge()
    sock = connect(server)
    sock.sendall(garbage)
    ftype, err = answer(sock)
    assert ftype == protocol.ERROR and err["code"] == "bad_frame"
    assert sock.recv(1) == b""  # and the edge closed that connection
    still_serves(server, split_model, tokenizer)


def test_malformed_payloads_inside_a_session(start_edge, split_model, tokenizer):
    server = start_edge()
    for payload in (activation(split_model)[:-3], activation(split_model, step=4), b"\x00" * 3):
        sock = open_session(server, split_model)
        protocol.send_frame(sock, protocol.ACTIVATION, payload)
        ftype, err = answer(sock)
        assert ftype == protocol.ERROR and err["code"] == "malformed", err
        sock.close()
    sock = connect(server)
    protocol.send_frame(sock, protocol.OPEN, b"{not json")
    assert answer(sock)[1]["code"] == "malformed"
    assert wait_until(lambda: not server.sessions)
    still_serves(server, split_model, tokenizer)


def test_a_truncated_frame_does_not_hurt_the_edge(start_edge, split_model, tokenizer):
    server = start_edge()
    sock = connect(server)  # a header that promises more than ever comes
    sock.sendall(protocol.HEADER.pack(protocol.MAGIC, protocol.PROTOCOL_VERSION, protocol.OPEN, 0, 1000) + b'{"proto')
    sock.close()
    sock = open_session(server, split_model)  # and half an activation inside a session
    frame = protocol.encode_frame(protocol.ACTIVATION, activation(split_model))
    sock.sendall(frame[: len(frame) // 2])
    sock.close()
    assert wait_until(lambda: not server.sessions)
    still_serves(server, split_model, tokenizer)


def test_a_frame_over_the_limit_is_refused(start_edge, split_model, tokenizer):
    server = start_edge(max_frame_bytes=8192)
    sock = open_session(server, split_model)
    sock.sendall(protocol.HEADER.pack(protocol.MAGIC, protocol.PROTOCOL_VERSION, protocol.ACTIVATION, 0, 10**9))
    ftype, err = answer(sock)
    assert ftype == protocol.ERROR and err["code"] == "too_large" and "8192" in err["message"]
    assert sock.recv(1) == b""
    # a UE checks the limit the edge announced before sending a prompt that is too long
    with UEClient(split_model, tokenizer, server.address, split=2, wire="fp32") as ue:
        with pytest.raises(UserError, match="frame limit"):
            ue.generate(PROMPT * 3, 2)
    assert wait_until(lambda: not server.sessions)
    still_serves(server, split_model, tokenizer)


def test_a_split_the_edge_cannot_serve_is_refused_with_a_clear_message(start_edge, split_model, tokenizer):
    server = start_edge(splits=[1, 2])
    splits = iter([3, 2])
    with UEClient(split_model, tokenizer, server.address, split=lambda snr: next(splits)) as ue:
        with pytest.raises(
            protocol.EdgeError, match=r"split 3 cannot be served: this edge serves splits 1-2 \(0-based"
        ) as e:
            ue.generate(PROMPT, 3)
        assert e.value.code == "bad_split"
        assert len(ue.generate(PROMPT, 3).tokens) == 3  # the same connection goes on with a split it serves
    other = split_model.fingerprint | {"hidden_size": 32}
    sock = connect(server)
    protocol.send_json(
        sock,
        protocol.OPEN,
        {"protocol": protocol.PROTOCOL_VERSION, "model": other, "split": 1, "wire": "fp16", "elements_per_packet": 8},
    )
    assert answer(sock)[1]["code"] == "bad_model"
    with pytest.raises(UserError, match=r"outside 0\.\.3"):  # the UE knows the model's own bounds
        UEClient(split_model, tokenizer, server.address, split=TINY_LAYERS)


def test_the_context_limit_bounds_each_session(start_edge, split_model, tokenizer):
    prompt_tokens = len(tokenizer(PROMPT).input_ids)
    server = start_edge(max_context=prompt_tokens + 6)
    with UEClient(split_model, tokenizer, server.address, split=2) as ue:
        with pytest.raises(protocol.EdgeError, match=f"at most {prompt_tokens + 6}") as e:
            ue.generate(PROMPT, 20)
    assert len(e.value.report.tokens) == 7  # what came before (test_edge_hostile.py)
    assert wait_until(lambda: not server.sessions)
    still_serves(server, split_model, tokenizer)


def test_sessions_beyond_the_limit_are_queued_then_refused_as_busy(start_edge, split_model, tokenizer):
    # the queue alone: these sessions stay silent, and evicting them is test_edge_hostile.py's
    server = start_edge(max_sessions=2, max_queue=1, queue_timeout_s=0.6, evict_idle_s=None)
    first, second = open_session(server, split_model), open_session(server, split_model)
    queued = connect(server)
    send_open(queued, split_model)
    time.sleep(0.2)
    refused = connect(server)
    ftype, err = answer(refused)
    assert ftype == protocol.ERROR and err["code"] == "busy"
    assert "2 sessions are being served and 1 are waiting" in err["message"]
    queued.settimeout(0.2)
    with pytest.raises(socket.timeout):
        queued.recv(1)  # still waiting in the queue
    protocol.send_frame(first, protocol.CLOSE)
    assert answer(first)[0] == protocol.CLOSED
    first.close()
    assert answer(queued)[0] == protocol.READY  # the freed slot goes to the queued connection
    late = connect(server)  # queued again, but nobody leaves: refused when the queue timeout expires
    ftype, err = answer(late)
    assert ftype == protocol.ERROR and err["code"] == "busy" and "queue" in err["message"]
    for sock in (second, queued, late):
        sock.close()
    assert wait_until(lambda: not server.sessions)
    assert server.stats["refused_busy"] == 2


def test_many_clients_at_once_all_get_the_right_tokens(start_edge, split_model, tokenizer):
    server = start_edge(max_sessions=2, max_queue=8)
    expected = reference_tokens(split_model.model, tokenizer, PROMPT, 6)
    results, errors = {}, []

    def client(i):
        try:
            with UEClient(split_model, tokenizer, server.address, split=1 + i % 3, wire="fp32") as ue:
                results[i] = ue.generate(PROMPT, 6).tokens
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 6
    assert all(tokens == expected for tokens in results.values())
    assert server.stats["sessions_opened"] == server.stats["sessions_closed"] == 6


def test_an_idle_connection_is_dropped_and_caches_of_ended_sessions_are_freed(start_edge, split_model, tokenizer):
    server = start_edge(idle_timeout_s=1.0)
    sock = open_session(server, split_model)  # opens a session, then says nothing
    ftype, err = answer(sock, timeout_s=5)
    assert ftype == protocol.ERROR and err["code"] == "timeout"
    for _ in range(3):
        still_serves(server, split_model, tokenizer)
    assert wait_until(lambda: not server.sessions)
    assert wait_until(caches_freed(server))
    assert server.stats["sessions_opened"] == server.stats["sessions_closed"] == 4


def test_a_port_in_use_is_a_user_error(split_model):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1"):
            EdgeServer(split_model, port=taken.getsockname()[1])


# --- the CLI ------------------------------------------------------------------------------------------
def test_cli_edge_and_ue_in_two_processes(tiny_model_dir, capsys):
    edge = subprocess.Popen(
        [sys.executable, "serve.py", "edge", "--port", "0", "--model", str(tiny_model_dir), "--max-sessions", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = edge.stdout.readline()
        match = re.search(r"listening on (\S+):(\d+)", line)
        assert match, line + edge.stderr.read()
        address = f"{match[1]}:{match[2]}"
        common = ["--connect", address, "--model", str(tiny_model_dir), "--max-new-tokens", "5"]
        # the UE in this process: the edge is the other one
        assert (
            serve.main(
                [
                    "ue",
                    *common,
                    "--prompt",
                    PROMPT,
                    "--prompt",
                    "Packets",
                    "--split",
                    "3",
                    "--wire",
                    "int8",
                    "--snr-mean",
                    "15",
                    "--protect",
                    "4",
                    "--json",
                ]
            )
            == 0
        )
        out = json.loads(capsys.readouterr().out)
        assert out["n_layers"] == TINY_LAYERS and len(out["requests"]) == 2 and out["protect"] == 4
        for r in out["requests"]:
            assert r["split"] == 3 and r["wire"] == "int8" and r["link"] == "erasure"
            assert r["protect"] == 4 and 0 < r["protected_air_bits"] < r["air_bits"]
            assert (
                len(r["tokens"]) == 5
                and r["ttft_s"] > 0
                and r["wire_bytes"] > 0
                and 0 <= r["packets_lost"] <= r["packets"]
            )
        assert serve.main(["ue", *common, "--prompt", PROMPT, "--split", "2", "--link", "none", "--protect", "2"]) == 0
        text = capsys.readouterr().out
        for expected in (
            "request 0: split 2 (3 layers on the UE, 1 on the edge)",
            "loss-free",
            "fp16 on the wire; 2 elements per token protected",
            "time to first token",
            "time per output token",
            "bytes on the wire",
            "packets lost 0 of",
            "text: ",
        ):
            assert expected in text, text
        assert serve.main(["ue", *common, "--split", str(TINY_LAYERS)]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("serve.py: error: split 4 is outside 0..3")
    finally:
        edge.send_signal(signal.SIGTERM)
        out, err = edge.communicate(timeout=30)
    assert edge.returncode == 0, err
    assert '"sessions_opened": 3' in out and '"sessions_closed": 3' in out


def test_cli_reports_user_errors_in_one_line(tiny_model_dir, capsys):
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert (
        serve.main(
            ["ue", "--connect", f"127.0.0.1:{port}", "--model", str(tiny_model_dir), "--link", "none", "--split", "2"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("serve.py: error: cannot connect to the edge")
    for argv in (
        ["ue", "--wire", "int8", "--bits-per-element", "16"],
        ["ue", "--snr-db", "10", "--snr-std", "2"],
        ["ue", "--connect", "localhost:notaport"],
        ["ue", "--split", "x"],
    ):
        with pytest.raises(SystemExit) as e:
            serve.parse_args(argv)
        assert e.value.code == 2, argv
    args = serve.parse_args(["ue", "--snr-db", "inf"])
    assert (args.snr_mean, args.snr_std) == (math.inf, 0.0)


# --- the real model -----------------------------------------------------------------------------------
@pytest.mark.real_model
def test_real_model_over_the_socket_gives_exactly_its_own_greedy_tokens():
    from layersplit.models import load_model

    model, tokenizer = load_model(device="cpu", dtype="float32")
    split_model = segments.SplitModel(model)
    prompt = "The capital of France is"
    expected = reference_tokens(model, tokenizer, prompt, 10)
    with EdgeServer(split_model, port=0) as server:
        with UEClient(
            split_model,
            tokenizer,
            server.address,
            split=lambda snr: 5 if snr < 30 else 20,
            wire="fp32",
            uplink=Uplink("erasure"),
            snr=None,
        ) as ue:
            report = ue.generate(prompt, 10)  # snr None: an infinite SNR, so the erasure link loses nothing
            assert report.split == 20  # the policy saw SNR = inf
            assert report.tokens == expected and report.packets_lost == 0
            assert "Paris" in report.text
            assert report.uplink_bytes_per_token == protocol.HEADER.size + protocol.ACT_HEADER.size + 9 * (4 + 64 * 4)
