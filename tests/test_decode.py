"""Decoding modes (segments.DECODE_MODES): a static KV cache and a compiled decoding step give the
greedy tokens of eager decoding, in one process and over the socket, and a static cache that is too
short is refused clearly. On the tiny random Llama; torch.compile runs on the CPU too (inductor),
so only the CUDA graphs need the gpu marker. One model for the whole module: its compiled steps
(about 10 s each on 2 cores) are compiled once and reused by every test."""

from __future__ import annotations

import gc
import json
import re
import signal
import subprocess
import sys

import pytest
import torch
from transformers import LlamaForCausalLM

import serve
from conftest import ROOT, TINY_LAYERS, tiny_config, wait_until
from layersplit import UserError, segments
from layersplit.segments import DECODE_MODES, SplitModel, StaticSegmentCache, resolve_decode, static_capacity
from layersplit.serving import protocol
from layersplit.serving.edge import EdgeServer
from layersplit.serving.simulated_uplink import Uplink
from layersplit.serving.ue import UEClient, generate_single_process

PROMPT = "The wireless uplink carries the hidden state"
N = 10  # greedy tokens per request
CONTEXT = 64  # the edge's --max-context: the static caches' length, the same on both sides (one shape to compile)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shared() -> SplitModel:
    torch.manual_seed(0)
    return SplitModel(LlamaForCausalLM(tiny_config()).eval())


@pytest.fixture(scope="module")
def eager_tokens(shared, tokenizer) -> list[int]:
    return generate_single_process(shared.model, tokenizer, PROMPT, N)[0]


def test_modes_capacities_and_the_cli_choices():
    assert serve.DECODE_CHOICES == ("auto", *DECODE_MODES)
    assert resolve_decode("auto", "cpu") == "eager" and resolve_decode("auto", "cuda:0") == "compiled"
    assert resolve_decode("static", "cpu") == "static"
    with pytest.raises(UserError, match="unknown decoding mode 'fast'"):
        resolve_decode("fast", "cpu")
    assert [static_capacity(t) for t in (1, 64, 65, 200, 1024)] == [64, 64, 128, 256, 1024]


@pytest.mark.parametrize("decode", ["static", "compiled"])
def test_static_segment_caches_compose_into_the_full_model(shared, decode):
    splits = range(TINY_LAYERS) if decode == "static" else [1]  # compiled: one split, as in the other tests
    for split in splits:
        assert segments.check_composition(shared, split, decode=decode) <= 1e-5  # float32 rounding at most
    assert shared.idle_caches() >= 2  # both sides' caches were given back for reuse


@pytest.mark.parametrize("decode", ["static", "compiled"])
def test_static_and_compiled_decoding_give_the_eager_tokens_in_one_process(shared, tokenizer, eager_tokens, decode):
    for _ in range(2):  # the second request reuses the first one's cache (and compiled step)
        tokens, times, start = generate_single_process(shared, tokenizer, PROMPT, N, decode)
        assert tokens == eager_tokens and len(times) == N and times[0] > start
    key = (0, TINY_LAYERS, static_capacity(len(tokenizer(PROMPT).input_ids) + N), decode == "compiled")
    assert len(shared._idle[key]) == 1
    assert ((0, TINY_LAYERS, True) in shared._steps) == (decode == "compiled")  # the compiled step ran


@pytest.mark.parametrize(
    "ue_decode,edge_decode", [("static", "static"), ("compiled", "compiled"), ("eager", "compiled")]
)
def test_static_and_compiled_decoding_give_the_eager_tokens_over_the_socket(
    shared, tokenizer, eager_tokens, ue_decode, edge_decode
):
    server = EdgeServer(shared, port=0, splits=[1], max_context=CONTEXT, decode=edge_decode).start()
    try:
        with UEClient(
            shared, tokenizer, server.address, split=1, wire="fp32", uplink=Uplink("none"), decode=ue_decode
        ) as ue:
            for _ in range(2):
                assert ue.generate(PROMPT, N).tokens == eager_tokens
        assert wait_until(lambda: not server.sessions)
        gc.collect()
        assert server.live_caches() == 0  # every session gave its static cache back
        assert (
            len(shared._idle[(2, TINY_LAYERS, CONTEXT, edge_decode == "compiled")]) == 1
        )  # and the next one reused it
    finally:
        server.stop()


def test_a_static_cache_too_short_is_refused_clearly(shared, tokenizer):
    cache = shared.new_cache("ue", 1, "static", 8)
    assert isinstance(cache, StaticSegmentCache)
    ids = torch.arange(6)[None]
    shared.ue_forward(1, ids, cache)
    with pytest.raises(UserError, match="holds 8 tokens and already has 6: 3 more do not fit"):
        shared.ue_forward(1, ids[:, :3], cache)
    shared.release(cache)
    # the edge's static caches hold --max-context tokens: a longer session is refused before any forward
    prompt_tokens = len(tokenizer(PROMPT).input_ids)
    server = EdgeServer(shared, port=0, splits=[1], max_context=prompt_tokens + 4, decode="static").start()
    try:
        with UEClient(shared, tokenizer, server.address, split=1, decode="static") as ue:
            with pytest.raises(protocol.EdgeError, match=f"at most {prompt_tokens + 4}"):
                ue.generate(PROMPT, 20)
            assert len(ue.generate(PROMPT, 3).tokens) == 3  # the session after it is served
        assert wait_until(lambda: not server.sessions)
    finally:
        server.stop()


def test_cli_sides_each_take_their_decoding_mode(tiny_model_dir, tokenizer, capsys):
    from layersplit.models import load_model

    model, tok = load_model(str(tiny_model_dir))
    expected = generate_single_process(model, tok, PROMPT, 6)[0]
    edge = subprocess.Popen(
        [
            sys.executable,
            "serve.py",
            "edge",
            "--port",
            "0",
            "--model",
            str(tiny_model_dir),
            "--decode",
            "static",
            "--max-context",
            "64",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = edge.stdout.readline()
        match = re.search(r"listening on (\S+):(\d+)", line)
        assert match and "static decoding" in line, line + edge.stderr.read()
        argv = [
            "ue",
            "--connect",
            f"{match[1]}:{match[2]}",
            "--model",
            str(tiny_model_dir),
            "--max-new-tokens",
            "6",
            "--prompt",
            PROMPT,
            "--split",
            "1",
            "--link",
            "none",
            "--wire",
            "fp32",
            "--json",
        ]
        for decode in ("auto", "static"):  # auto: eager on this CPU
            assert serve.main([*argv, "--decode", decode]) == 0
            out = json.loads(capsys.readouterr().out)
            assert out["decode"] == ("eager" if decode == "auto" else "static")
            assert out["requests"][0]["tokens"] == expected
    finally:
        edge.send_signal(signal.SIGTERM)
        edge.communicate(timeout=30)
    with pytest.raises(SystemExit) as e:
        serve.parse_args(["edge", "--decode", "fast"])
    assert e.value.code == 2


@pytest.mark.gpu
def test_compiled_decoding_on_cuda_in_bf16_gives_the_eager_tokens(tokenizer):
    """CUDA graphs (torch.compile mode reduce-overhead) over a static cache, in bfloat16: the same
    greedy tokens as eager decoding, in one process and over the socket."""
    torch.manual_seed(0)
    # larger weights than the default init: clear top-1 margins, so bf16 rounding cannot flip a near tie
    model = LlamaForCausalLM(tiny_config(initializer_range=0.2)).eval().to("cuda", torch.bfloat16)
    sm = SplitModel(model)
    eager = generate_single_process(model, tokenizer, PROMPT, N)[0]
    for _ in range(3):  # warm-up, recording, replay
        assert generate_single_process(sm, tokenizer, PROMPT, N, "compiled")[0] == eager
    server = EdgeServer(sm, port=0, splits=[1], max_context=CONTEXT, decode="auto").start()
    try:
        assert server.decode == "compiled"
        with UEClient(sm, tokenizer, server.address, split=1, wire="bf16", uplink=Uplink("none"), decode="auto") as ue:
            assert ue.decode == "compiled"
            for _ in range(3):
                assert ue.generate(PROMPT, N).tokens == eager
    finally:
        server.stop()


def test_compiled_split_decoding_in_bf16_gives_the_eager_tokens_on_the_cpu():
    """COMPILED_ROUNDS_LIKE_EAGER: the compiled UE and edge steps round bf16 as eager does, so a split
    Llama's greedy tokens are the whole model's eager ones (in fp32 intermediates they left them after
    3 steps here; bench/compiled_tokens.py shows every set-up, also on a GPU)."""
    assert segments.COMPILED_ROUNDS_LIKE_EAGER
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(initializer_range=0.2)).eval().to(torch.bfloat16)
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    with torch.no_grad():
        eager, x, past = [], ids, None
        for _ in range(24):
            out = model(input_ids=x, past_key_values=past, use_cache=True)
            past, x = out.past_key_values, out.logits[:, -1:].argmax(-1)
            eager.append(int(x))
    sm = SplitModel(model)
    for _ in range(2):  # compiling, then the compiled steps reused
        ue, edge = (sm.new_cache(side, 1, "compiled", static_capacity(40)) for side in ("ue", "edge"))
        tokens, x = [], ids
        for _ in range(24):
            x = sm.edge_logits(1, sm.ue_forward(1, x, ue), edge).argmax().view(1, 1)
            tokens.append(int(x))
        sm.release(ue)
        sm.release(edge)
        assert tokens == eager
