"""The edge against hostile or greedy clients: headers that claim huge activations, strangers
without the edge's token, sessions that hold a slot and say nothing, long prefills that would hold
up everyone else; and the UE keeping what it generated when the edge ends a request. Mechanics on
the tiny random Llama over loopback, with small timeouts so that the tests take seconds."""

from __future__ import annotations

import json
import socket
import threading
import time
import tracemalloc

import numpy as np
import pytest
import torch

from conftest import wait_until
from layersplit.serving import protocol
from layersplit.serving.ue import UEClient
from layersplit.wire import WIRE_FORMATS, encode, n_packets

PROMPT = "The wireless uplink carries the hidden state"
K = protocol.MAX_ELEMENTS_PER_PACKET  # the largest packets an OPEN may ask for: the fewest packets per claim


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread for these tests


def connect(server) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def open_msg(split_model, split=2, wire="fp32", k=16, **extra) -> dict:
    return {
        "protocol": protocol.PROTOCOL_VERSION,
        "model": split_model.fingerprint,
        "split": split,
        "wire": wire,
        "elements_per_packet": k,
        **extra,
    }


def answer(sock, timeout_s=10.0):
    ftype, payload = protocol.recv_frame(sock, timeout_s=timeout_s)
    return ftype, (json.loads(payload) if ftype in (protocol.READY, protocol.ERROR, protocol.CLOSED) else payload)


def activation(split_model, split=2, tokens=5, step=0, k=16) -> bytes:
    """A loss-free fp32 ACTIVATION payload of `tokens` tokens, computed by the UE's layers."""
    ids = torch.arange(3, 3 + tokens)[None] % split_model.model.config.vocab_size
    hidden = split_model.ue_forward(split, ids, split_model.new_cache("ue", split))[0]
    data, _ = encode(hidden, "fp32")
    rows = protocol.packet_rows(data, n_packets(tokens * split_model.hidden_size, k), k * WIRE_FORMATS["fp32"][0])
    return protocol.pack_activation(step, tokens, split_model.hidden_size, rows, np.arange(len(rows)), None)


def serves(server, split_model, tokenizer, **kwargs):
    with UEClient(split_model, tokenizer, server.address, split=2, wire="fp32", timeout_s=10.0, **kwargs) as ue:
        report = ue.generate(PROMPT, 4)
    assert len(report.tokens) == 4
    return report


# --- an activation header is checked before anything is allocated for it --------------------------------
@pytest.mark.parametrize("claimed", [2**32 - 1, 10**6])
def test_a_header_claiming_huge_token_counts_is_refused_before_allocating(start_edge, split_model, tokenizer, claimed):
    """A header alone (no packets sent: every one 'lost') claims `claimed` tokens: unpacking it would
    zero-fill claimed x 64 fp32 elements, 1 TiB for 2^32 - 1 tokens and 256 MB for 10^6."""
    server = start_edge()
    sock = connect(server)
    protocol.send_json(sock, protocol.OPEN, open_msg(split_model, k=K))
    assert answer(sock)[0] == protocol.READY
    d = split_model.hidden_size
    header = protocol.ACT_HEADER.pack(0, claimed, d, n_packets(claimed * d, K), 0)
    tracemalloc.start()
    try:
        protocol.send_frame(sock, protocol.ACTIVATION, header)
        ftype, err = answer(sock)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ftype == protocol.ERROR and err["code"] == "too_long", err
    assert f"would hold {claimed} tokens" in err["message"] and "at most 2048" in err["message"]
    assert peak < 16 * 2**20, peak  # this process hosts the edge: nothing near the claim was allocated
    assert wait_until(lambda: not server.sessions)
    protocol.send_json(sock, protocol.OPEN, open_msg(split_model))  # too_long ends the request, not the connection
    assert answer(sock)[0] == protocol.READY
    sock.close()
    serves(server, split_model, tokenizer)


# --- a shared token keeps strangers off the edge ------------------------------------------------------
TOKEN = "a-token-for-the-tests_0123456789"


def test_an_edge_with_a_token_serves_only_ues_that_send_it(start_edge, split_model, tokenizer):
    server = start_edge(token=TOKEN, splits=[1, 2])
    for extra in ({}, {"token": TOKEN[:-1] + "X"}, {"token": TOKEN[:16]}, {"token": 12345}, {"token": None}):
        sock = connect(server)  # split 3 is not served, but the token is checked first
        protocol.send_json(sock, protocol.OPEN, open_msg(split_model, split=3, **extra))
        ftype, err = answer(sock)
        assert ftype == protocol.ERROR and err["code"] == "unauthorized", (extra, err)
        assert "split" not in err["message"] and "llama" not in err["message"]  # nothing about what it serves
        assert sock.recv(1) == b""  # and the connection is closed
        sock.close()
    with pytest.raises(protocol.EdgeError, match=f"give it with --token or {protocol.TOKEN_ENV}") as e:
        serves(server, split_model, tokenizer)
    assert e.value.code == "unauthorized"
    assert server.stats["unauthorized"] == 6 and server.stats["sessions_opened"] == 0
    serves(server, split_model, tokenizer, token=TOKEN)
    serves(start_edge(), split_model, tokenizer, token=TOKEN)  # an edge without a token ignores one


@pytest.mark.parametrize("token", ["short", "x" * 1025, "sixteen chars ok", "caf\u00e9-" * 4, ""])
def test_a_malformed_token_is_a_user_error(split_model, tokenizer, token):
    from layersplit import UserError
    from layersplit.serving.edge import EdgeServer

    with pytest.raises(UserError, match="16..1024 printable ASCII characters without spaces"):
        EdgeServer(split_model, port=0, check=False, token=token)
    with pytest.raises(UserError, match="16..1024 printable ASCII"):
        UEClient(split_model, tokenizer, "127.0.0.1:1", split=2, token=token)


class ModelLoaded(Exception):
    """Raised in place of loading a model: serve.py got past its checks."""


@pytest.fixture
def no_model(monkeypatch):
    from layersplit import models

    def load_model(*args, **kwargs):
        raise ModelLoaded

    monkeypatch.setattr(models, "load_model", load_model)  # serve.py imports it where it loads
    monkeypatch.delenv(protocol.TOKEN_ENV, raising=False)
    return monkeypatch


@pytest.mark.parametrize("role", ["edge", "ue"])
def test_cli_refuses_a_malformed_token_in_one_line(no_model, capsys, role):
    import serve

    assert serve.main([role, "--token", "short"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("serve.py: error: --token: the token of 5 characters is not 16..1024")
    for value in ("", "has spaces in it, sixteen+"):
        no_model.setenv(protocol.TOKEN_ENV, value)  # an empty variable is refused too, not taken for no token
        assert serve.main([role]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"serve.py: error: {protocol.TOKEN_ENV}: the token of"), err
    with pytest.raises(ModelLoaded):  # --token wins over the environment's
        serve.main([role, "--token", TOKEN])


def test_cli_warns_when_the_edge_listens_beyond_loopback_without_a_token(no_model, capsys):
    import serve

    for argv, warned in (
        (["--host", "0.0.0.0"], True),
        (["--host", "0.0.0.0", "--token", TOKEN], False),
        ([], False),
        (["--host", "localhost"], False),
    ):
        with pytest.raises(ModelLoaded):  # the warning comes before the model loads, and nothing listens yet
            serve.main(["edge", "--port", "8999", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        expected = [
            "serve.py: warning: the edge listens on 0.0.0.0, beyond loopback, without a token: anyone who "
            f"reaches port 8999 can use it (set {protocol.TOKEN_ENV} or --token)"
        ]
        assert err == (expected if warned else []), (argv, err)
    no_model.setenv(protocol.TOKEN_ENV, TOKEN)
    with pytest.raises(ModelLoaded):
        serve.main(["edge", "--host", "0.0.0.0"])
    assert capsys.readouterr().err == ""


# --- sessions that open and then say nothing ------------------------------------------------------------
EVICT_S = 0.5  # evict_idle_s of these tests: the default 5 s, scaled down


class IdleSessions:
    """Clients that each keep a session open and say nothing in it; one evicted reconnects at once and
    opens another (waiting in the queue if it must), as an attacker keeping the slots would."""

    def __init__(self, server, split_model, n):
        self.server, self.split_model = server, split_model
        self.stop, self.errors, self.opened = threading.Event(), [], 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def run(self):
        while not self.stop.is_set():
            with connect(self.server) as sock:
                protocol.send_json(sock, protocol.OPEN, open_msg(self.split_model))
                self.hold(sock)

    def hold(self, sock):
        """READY (perhaps after the queue), then silence until the edge ends the session."""
        while not self.stop.is_set():
            try:
                ftype, body = answer(sock, timeout_s=0.2)
            except socket.timeout:
                continue
            except (protocol.PeerClosed, OSError):
                return
            with self.lock:
                if ftype == protocol.READY:
                    self.opened += 1
                else:
                    self.errors.append(body["code"])

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(5)


def test_idle_sessions_that_reconnect_do_not_lock_out_a_real_ue(start_edge, split_model, tokenizer):
    """Before eviction, four such sessions held every slot until the 60 s idle timeout, and a real UE
    was refused as busy after the 30 s queue timeout; reconnecting at once kept it out for good."""
    server = start_edge(evict_idle_s=EVICT_S, queue_timeout_s=5.0)  # 4 sessions, as by default
    idle = IdleSessions(server, split_model, 4)
    try:
        assert wait_until(lambda: server._active == 4 and idle.opened == 4)
        for _ in range(3):
            start = time.monotonic()
            serves(server, split_model, tokenizer)  # queued, then given the slot of a silent session
            assert time.monotonic() - start < 5.0  # within the queue timeout: not refused as busy
        # the evicted came back at once and waited in turn (evicting each other meanwhile)
        assert idle.opened > 4 and server.stats["evicted"] >= 3 and server.stats["refused_busy"] == 0
        assert set(idle.errors) == {"evicted"}
    finally:
        idle.close()


def test_a_silent_session_keeps_its_slot_while_nobody_waits(start_edge, split_model, tokenizer):
    server = start_edge(evict_idle_s=0.2, queue_timeout_s=5.0, max_sessions=1)
    sock = connect(server)
    protocol.send_json(sock, protocol.OPEN, open_msg(split_model))
    assert answer(sock)[0] == protocol.READY
    time.sleep(0.6)  # three times evict_idle_s: a slow UE, but nobody wants the slot
    protocol.send_frame(sock, protocol.ACTIVATION, activation(split_model))
    assert answer(sock)[0] == protocol.TOKEN
    assert server.stats["evicted"] == 0
    serves(server, split_model, tokenizer)  # now someone waits: the silent session goes after 0.2 s
    ftype, err = answer(sock)
    assert ftype == protocol.ERROR and err["code"] == "evicted" and "0.2 s" in err["message"]
    assert sock.recv(1) == b""
    sock.close()


def test_a_session_in_the_middle_of_an_upload_is_not_idle(start_edge, split_model):
    server = start_edge(evict_idle_s=0.2, queue_timeout_s=5.0, max_sessions=1)
    sock = connect(server)
    protocol.send_json(sock, protocol.OPEN, open_msg(split_model))
    assert answer(sock)[0] == protocol.READY
    frame = protocol.encode_frame(protocol.ACTIVATION, activation(split_model))
    sock.sendall(frame[:100])  # a slow uplink: the frame has begun
    waiting = connect(server)
    protocol.send_json(waiting, protocol.OPEN, open_msg(split_model))
    time.sleep(0.6)  # three times evict_idle_s, with someone waiting
    assert server.stats["evicted"] == 0
    sock.sendall(frame[100:])
    assert answer(sock)[0] == protocol.TOKEN
    assert answer(waiting)[0] == protocol.READY  # then silent again: evicted for the waiting one
    assert answer(sock)[1]["code"] == "evicted" and server.stats["evicted"] == 1
    for s in (sock, waiting):
        s.close()


# --- long prompts take turns with everyone else's steps ----------------------------------------------------
def test_long_prompts_take_turns_with_a_short_one(start_edge, split_model):
    """Three sessions' 64-token prompts, in line before a fourth session's 5-token one, run in chunks
    of 8 in turn: the short prompt's token comes after one chunk of each (24 of their tokens), not
    after all 192 (prefill_chunk 0 runs each prompt in one forward: then it would). The order is the
    compute thread's (server.turns), not a timing: that thread is held until every prompt is in line."""
    server = start_edge(prefill_chunk=8)
    socks, ids = [], []
    for _ in range(4):
        sock = connect(server)
        protocol.send_json(sock, protocol.OPEN, open_msg(split_model))
        ftype, ready = answer(sock)
        socks.append(sock)
        ids.append(ready["session"])
    gate = threading.Event()
    held = server._compute.call(gate.wait, 10)  # the compute thread busy, as with someone's long forward
    assert wait_until(lambda: len(server._compute) == 0)  # that turn is running
    long = activation(split_model, tokens=64)
    for i, sock in enumerate(socks[:3]):
        protocol.send_frame(sock, protocol.ACTIVATION, long)
        assert wait_until(lambda: len(server._compute) == i + 1)  # in line in this order
    protocol.send_frame(socks[3], protocol.ACTIVATION, activation(split_model, tokens=5))
    assert wait_until(lambda: len(server._compute) == 4)
    gate.set()
    assert held.result(10)
    tokens = []
    for sock in socks:
        ftype, body = answer(sock)
        assert ftype == protocol.TOKEN
        tokens.append(protocol.TOKEN_BODY.unpack(body)[1])
    turns = list(server.turns)
    assert turns[:4] == [(ids[0], 8), (ids[1], 8), (ids[2], 8), (ids[3], 5)]
    assert turns[4:] == [(i, 8) for i in ids[:3]] * 7
    # chunks of one prompt fill one KV cache: the same token as one forward over the whole prompt
    whole = start_edge(prefill_chunk=0)
    sock = connect(whole)
    protocol.send_json(sock, protocol.OPEN, open_msg(split_model))
    assert answer(sock)[0] == protocol.READY
    protocol.send_frame(sock, protocol.ACTIVATION, long)
    ftype, body = answer(sock)
    assert whole.turns[-1][1] == 64 and tokens[:3] == [protocol.TOKEN_BODY.unpack(body)[1]] * 3
    for s in [*socks, sock]:
        s.close()


@pytest.mark.parametrize("decode", ["eager", "static"])
@pytest.mark.parametrize("chunk", [8, 71])  # 72 tokens: 9 chunks of 8, or 71 and a last one of 1
def test_a_prompt_in_chunks_gives_the_single_process_tokens(start_edge, split_model, tokenizer, decode, chunk):
    prompt = PROMPT * 3
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    assert ids.shape[1] == 72
    with torch.no_grad():
        out = split_model.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    server = start_edge(prefill_chunk=chunk, decode=decode, max_context=128)
    with UEClient(split_model, tokenizer, server.address, split=1, wire="fp32") as ue:
        report = ue.generate(prompt, 8)
    assert report.tokens == out[0, ids.shape[1] :].tolist()
    assert [n for _, n in server.turns] == ([8] * 9 if chunk == 8 else [71, 1]) + [1] * 7


# --- the UE keeps what it generated when the edge ends a request ----------------------------------------
@pytest.mark.parametrize("decode", ["eager", "static"])
def test_a_request_the_edge_ends_keeps_its_tokens(start_edge, split_model, tokenizer, decode):
    """The edge keeps 64 tokens per session: a 24-token prompt gets 41 tokens (the 41st computed from
    the 64th in the edge's cache), then the edge refuses the next step as too_long. A static cache on
    the UE holds the refused step too (before, 64 tokens: it failed there itself, losing them all)."""
    prompt_tokens = len(tokenizer(PROMPT).input_ids)
    with UEClient(split_model, tokenizer, start_edge().address, split=2, wire="fp32") as ue:
        full = ue.generate(PROMPT, 60)
    assert full.stop_reason == "max_new_tokens" and full.stop_message == "" and len(full.tokens) == 60
    server = start_edge(max_context=64)
    with UEClient(split_model, tokenizer, server.address, split=2, wire="fp32", decode=decode) as ue:
        with pytest.raises(protocol.EdgeError, match="would hold 65 tokens; this edge keeps at most 64") as e:
            ue.generate(PROMPT, 60)
        report = e.value.report
        assert e.value.code == report.stop_reason == "too_long" and "at most 64" in report.stop_message
        assert len(report.tokens) == 64 - prompt_tokens + 1 and report.tokens == full.tokens[: len(report.tokens)]
        assert report.text == tokenizer.decode(report.tokens, skip_special_tokens=True) != ""
        assert report.ttft_s > 0 and report.tpot_s > 0 and report.prompt_tokens == prompt_tokens
        assert len(ue.generate(PROMPT, 3).tokens) == 3  # too_long ended the request, not the connection
    assert server.stats["connections"] == 1
    with pytest.raises(protocol.EdgeError) as e:  # refused at the prompt: nothing to keep
        with UEClient(split_model, tokenizer, start_edge(max_context=prompt_tokens - 1).address, split=2) as ue:
            ue.generate(PROMPT, 5)
    assert e.value.code == "too_long" and e.value.report is None


@pytest.mark.parametrize("json_out", [False, True])
def test_cli_prints_what_the_ue_generated_before_the_edge_ended_it(
    start_edge, split_model, tokenizer, tiny_model_dir, capsys, json_out
):
    import serve

    prompt_tokens = len(tokenizer(PROMPT).input_ids)
    server = start_edge(max_context=prompt_tokens + 6)
    argv = [
        "ue",
        "--connect",
        server.address,
        "--model",
        str(tiny_model_dir),
        "--link",
        "none",
        "--split",
        "2",
        "--wire",
        "fp32",
        "--max-new-tokens",
        "20",
        "--prompt",
        PROMPT,
        "--prompt",
        "a second prompt",
    ]
    assert serve.main(argv + (["--json"] if json_out else [])) == 2
    out, err = capsys.readouterr()
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"serve.py: error: the edge refused (too_long): the session would hold {prompt_tokens + 7} tokens")
    )
    with UEClient(split_model, tokenizer, start_edge().address, split=2, wire="fp32") as ue:
        expected = ue.generate(PROMPT, 7)
    if json_out:
        requests = json.loads(out)["requests"]
        assert len(requests) == 1 and requests[0]["stop_reason"] == "too_long"
        assert requests[0]["tokens"] == expected.tokens and requests[0]["text"] == expected.text
    else:
        assert "request 0:" in out and "request 1:" not in out  # the run stops there, as before
        assert f"  ended by the edge (too_long) after 7 tokens: the session would hold {prompt_tokens + 7}" in out
        assert f"  text: {expected.text!r}" in out
