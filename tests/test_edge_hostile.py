"""The edge against hostile or greedy clients: headers that claim huge activations, strangers
without the edge's token, sessions that hold a slot and say nothing, long prefills that would hold
up everyone else; and the UE keeping what it generated when the edge ends a request. Mechanics on
the tiny random Llama over loopback, with small timeouts so that the tests take seconds."""
from __future__ import annotations

import json
import socket
import tracemalloc

import pytest

from conftest import wait_until
from layersplit.serving import protocol
from layersplit.serving.ue import UEClient
from layersplit.wire import n_packets

PROMPT = "The wireless uplink carries the hidden state"
K = protocol.MAX_ELEMENTS_PER_PACKET  # the largest packets an OPEN may ask for: the fewest packets per claim


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread for these tests


def connect(server) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def open_msg(split_model, split=2, wire="fp32", k=16, **extra) -> dict:
    return {"protocol": protocol.PROTOCOL_VERSION, "model": split_model.fingerprint, "split": split, "wire": wire,
            "elements_per_packet": k, **extra}


def answer(sock, timeout_s=10.0):
    ftype, payload = protocol.recv_frame(sock, timeout_s=timeout_s)
    return ftype, (json.loads(payload) if ftype in (protocol.READY, protocol.ERROR, protocol.CLOSED) else payload)


def serves(server, split_model, tokenizer, **kwargs):
    with UEClient(split_model, tokenizer, server.address, split=2, wire="fp32", timeout_s=10.0, **kwargs) as ue:
        report = ue.generate(PROMPT, 4)
    assert len(report.tokens) == 4
    return report


# --- an activation header is checked before anything is allocated for it --------------------------------
@pytest.mark.parametrize("claimed", [2**32 - 1, 10**6])
def test_a_header_claiming_huge_token_counts_is_refused_before_allocating(start_edge, split_model, tokenizer,
                                                                          claimed):
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
