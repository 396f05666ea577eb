"""The edge against connections that never say anything, and serve.py against numbers out of range.

Idle sockets (a port scan, a client that hangs after connecting) used to take the edge's session
slots until the 60 s idle timeout, so that a real UE was queued and then refused as busy. Now a
connection takes a slot only with a valid OPEN, which must come within the handshake timeout, and
connections waiting for their OPEN are bounded. Mechanics on the tiny random Llama over loopback.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

import serve
from conftest import run_script, wait_until
from layersplit import UserError, cli
from layersplit.serving import protocol
from layersplit.serving.ue import UEClient
from layersplit.serving.edge import EdgeServer

PROMPT = "The wireless uplink carries the hidden state"
UE_DEADLINE_S = 10.0  # a generous bound: before the fix a UE behind idle sockets waited 30 s, then was refused


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread for these tests


@pytest.fixture
def idle_sockets():
    """Raw connections that send nothing; closed at the end of the test."""
    opened = []

    def open_idle(server, n):
        for _ in range(n):
            opened.append(socket.create_connection((server.host, server.port), timeout=10))
        assert wait_until(lambda: server.stats["connections"] >= n), "the edge did not accept them"
        return opened[-n:]

    yield open_idle
    for sock in opened:
        sock.close()


def timed_request(server, split_model, tokenizer):
    """(seconds, report) of one request of a well-behaved UE that gives up after UE_DEADLINE_S."""
    start = time.monotonic()
    with UEClient(split_model, tokenizer, server.address, split=2, wire="fp32", timeout_s=UE_DEADLINE_S) as ue:
        report = ue.generate(PROMPT, 4)
    return time.monotonic() - start, report


def read_until_closed(sock, timeout_s=10.0):
    """What the edge sent before it closed the connection: (frames as (type, payload), seconds waited)."""
    start = time.monotonic()
    frames = []
    sock.settimeout(timeout_s)
    while True:
        try:
            ftype, payload = protocol.recv_frame(sock, timeout_s=timeout_s)
        except protocol.PeerClosed:
            return frames, time.monotonic() - start
        frames.append((ftype, json.loads(payload) if ftype == protocol.ERROR else payload))


# --- idle connections hold no session ------------------------------------------------------------------
@pytest.mark.parametrize("n_idle", [4, 20])
def test_idle_connections_do_not_keep_a_ue_waiting(start_edge, split_model, tokenizer, idle_sockets, n_idle):
    server = start_edge()  # the default limits: 4 sessions, 8 queued, a 5 s handshake timeout
    idle_sockets(server, n_idle)
    seconds, report = timed_request(server, split_model, tokenizer)
    assert len(report.tokens) == 4
    assert seconds < UE_DEADLINE_S
    assert server.stats["sessions_opened"] == 1 and server.stats["refused_busy"] == 0


def test_connections_without_open_are_closed_after_the_handshake_timeout(
    start_edge, split_model, tokenizer, idle_sockets
):
    server = start_edge(handshake_timeout_s=0.5)
    opened = time.monotonic()
    idle = idle_sockets(server, 20)
    seconds, _ = timed_request(server, split_model, tokenizer)  # served while they wait
    assert seconds < UE_DEADLINE_S
    for sock in idle:
        frames, _ = read_until_closed(sock)
        assert [(ftype, err["code"]) for ftype, err in frames] == [(protocol.ERROR, "timeout")]
        assert "no OPEN within 0.5 s" in frames[0][1]["message"]
    closed = time.monotonic() - opened
    assert 0.5 <= closed < 5.0  # not before the handshake timeout, and not at the 60 s idle timeout
    assert wait_until(lambda: server.stats["handshakes_dropped"] == 20)
    assert wait_until(lambda: not server._pending and server._active == 0)
    timed_request(server, split_model, tokenizer)


def test_a_flood_of_idle_connections_costs_bounded_threads(start_edge, split_model, tokenizer, idle_sockets):
    server = start_edge(max_handshakes=8, handshake_timeout_s=30.0)
    threads_before = threading.active_count()
    idle = idle_sockets(server, 100)
    # a newer connection pushes the oldest waiting one out: the first 92 are closed at once, not after 30 s
    for sock in idle[:92]:
        frames, waited = read_until_closed(sock, timeout_s=5.0)
        assert frames == [] and waited < 5.0
    assert wait_until(lambda: threading.active_count() <= threads_before + 8)
    assert len(server._pending) == 8
    seconds, report = timed_request(server, split_model, tokenizer)  # pushes one more out, and is served
    assert len(report.tokens) == 4 and seconds < UE_DEADLINE_S
    assert server.stats["handshakes_dropped"] == 93


def test_a_refused_open_takes_no_session(start_edge, split_model, tokenizer):
    server = start_edge(max_sessions=1, max_queue=0, splits=[1, 2])
    sock = socket.create_connection((server.host, server.port), timeout=5)
    protocol.send_json(
        sock,
        protocol.OPEN,
        {
            "protocol": protocol.PROTOCOL_VERSION,
            "model": split_model.fingerprint,
            "split": 3,
            "wire": "fp32",
            "elements_per_packet": 16,
        },
    )
    ftype, payload = protocol.recv_frame(sock, timeout_s=5)
    assert ftype == protocol.ERROR and json.loads(payload)["code"] == "bad_split"
    seconds, report = timed_request(server, split_model, tokenizer)  # the one session is still free
    assert len(report.tokens) == 4 and seconds < UE_DEADLINE_S
    sock.close()


def test_a_ue_idle_before_its_first_request_reconnects(start_edge, split_model, tokenizer):
    server = start_edge(handshake_timeout_s=0.3)
    with UEClient(split_model, tokenizer, server.address, split=2, wire="fp32", timeout_s=UE_DEADLINE_S) as ue:
        assert wait_until(lambda: server.stats["handshakes_dropped"] == 1)  # connected, then said nothing
        time.sleep(0.3)  # the edge's ERROR and end of stream reach the UE
        assert len(ue.generate(PROMPT, 4).tokens) == 4  # on a new connection
    assert server.stats["connections"] == 2


def test_a_large_frame_before_open_is_refused_at_once(start_edge):
    server = start_edge()  # frames of up to 16 MiB in a session, but a stranger gets 64 KiB
    sock = socket.create_connection((server.host, server.port), timeout=5)
    sock.sendall(protocol.HEADER.pack(protocol.MAGIC, protocol.PROTOCOL_VERSION, protocol.ACTIVATION, 0, 10**6))
    frames, _ = read_until_closed(sock, timeout_s=5.0)
    assert [(ftype, err["code"]) for ftype, err in frames] == [(protocol.ERROR, "too_large")]
    assert f"at most {protocol.MAX_OPEN_FRAME_BYTES} bytes" in frames[0][1]["message"]
    sock.close()


def test_limits_out_of_range_are_user_errors(split_model, tokenizer):
    for kwargs in (
        {"port": 99999},
        {"port": -1},
        {"idle_timeout_s": float("inf")},
        {"handshake_timeout_s": 0},
        {"queue_timeout_s": float("nan")},
        {"max_handshakes": 0},
        {"evict_idle_s": 0},
        {"evict_idle_s": protocol.QUEUE_TIMEOUT_S},
        {"queue_timeout_s": 2.0},  # evict_idle_s 5 s >= 2 s
        {"prefill_chunk": -1},
        {"prefill_chunk": 2.5},
        {"prefill_chunk": True},
    ):
        with pytest.raises(UserError):
            EdgeServer(split_model, check=False, **{"port": 0, **kwargs})
    with pytest.raises(UserError, match="timeout_s inf is not a timeout"):
        UEClient(split_model, tokenizer, "127.0.0.1:1", split=2, timeout_s=float("inf"))


# --- serve.py: bad numbers are one line and exit status 2 -------------------------------------------
@pytest.mark.parametrize("port", ["99999", "-1"])
def test_cli_port_out_of_range_is_one_line(port):
    result = run_script("serve.py", "edge", "--port", port, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"serve.py: error: --port {port} is not a TCP port: use 0..65535 (0: any free port)"
    ]


@pytest.mark.parametrize(
    "argv, valid",
    [
        (["edge", "--idle-timeout", "inf"], "at most 1000000"),
        (["edge", "--queue-timeout", "1e300"], "at most 1000000"),
        (["edge", "--handshake-timeout", "1e10"], "at most 1000000"),
        (["edge", "--evict-idle", "inf"], "at most 1000000"),
        (["edge", "--evict-idle", "30"], "shorter than --queue-timeout 30"),
        (["edge", "--queue-timeout", "4"], "--evict-idle 5 must be shorter than --queue-timeout 4"),
        (["edge", "--threads", "1000000"], f"0 (torch's default) to {cli.cpu_count()}"),
        (["ue", "--threads", "-1"], f"0 (torch's default) to {cli.cpu_count()}"),
        (["ue", "--timeout", "inf"], "at most 1000000"),
        (["ue", "--seed", "-1"], "0..4294967295"),
        (["ue", "--seed", "4294967296"], "0..4294967295"),
        (["ue", "--elements-per-packet", "99999999999"], f"1..{protocol.MAX_ELEMENTS_PER_PACKET}"),
        (["ue", "--snr-db", "1e308"], "-50..100 dB, or inf"),  # 10^(SNR/10) overflowed
        (["ue", "--snr-mean", "-100"], "-50..100 dB, or inf"),
        (["ue", "--snr-std", "1e300"], "0..30 dB"),
        (["ue", "--snr-rho", "nan"], "not a finite number"),
        (["ue", "--nakagami-m", "1e308", "--fading", "nakagami"], "0.5..1e+06"),  # a division by zero
    ],
)
def test_cli_numbers_out_of_range_are_one_line(argv, valid, capsys, monkeypatch):
    """Refused by the option's type (argparse: SystemExit 2, 'serve.py ROLE: error: argument ...') or by
    serve.check_numbers (main returns 2, 'serve.py: error: ...'), never past them."""

    def not_checked(*args, **kwargs):  # and not an edge serving forever in this process
        raise AssertionError(f"{argv} got past the checks to loading a model")

    from layersplit import models

    monkeypatch.setattr(models, "load_model", not_checked)  # serve.py imports it where it loads
    try:
        code = serve.main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(("serve.py: error: ", f"serve.py {argv[0]}: error: ")), err
    assert argv[1] in err[-1] and valid in err[-1], err
    assert sum("error:" in line for line in err) == 1, err
