"""Real split inference across two processes: the UE and the edge server over a socket (serve.py).

The UE (user equipment) runs the embeddings and decoder layers 0..split (split + 1 layers, 0-based
like everywhere in this project) and sends the hidden state of each step to the edge as packets in
a wire dtype (fp32, fp16, bf16, or int8 with a per-token absmax scale). A simulated uplink, the
impairment engine's (layersplit/uplink.py) on the request's seeded stream, decides which packets
are lost (erasure: each packet with the channel's packet error rate at the request's SNR) or which
bits flip (bitflip: no CRC); lost packets never cross the socket, and the edge zero-fills them from
the sequence numbers it did receive. The edge runs the remaining layers and the LM head and returns
the greedy next token. Both sides keep a KV cache (segments.py), so after the prompt each step sends
one token's activation.

    protocol          frames, limits, an activation's packets (the wire protocol, version PROTOCOL_VERSION)
    edge              EdgeServer: connections, sessions, timeouts, the edge's forward passes
    admission         the edge's session slots: handshakes, the queue, eviction of silent sessions
    session           an edge session (EdgeSession) and the checks of the OPEN that starts one
    turns             TakeTurns: the compute thread the sessions' forward passes take turns on
    ue                UEClient and its request reports; the single-process reference
    simulated_uplink  Uplink: what the air does to a request's packets, bits and seconds on air
    roles             serve.py's edge and UE, run from its checked arguments (and the UE's printed reports)

One connection carries any number of requests, one at a time; it takes one of the edge's session
slots with its first valid OPEN, which must come within a short handshake timeout, and keeps it
until it closes, or until it has been silent for a few seconds while another connection waits
(it is then evicted). Bad framing, an oversized frame, a malformed activation, an OPEN without the
edge's token, an idle timeout, an eviction or a server fault close the connection; a refused OPEN
(a split this edge does not serve, another model) or a session over the context limit ends only
that request.
"""
