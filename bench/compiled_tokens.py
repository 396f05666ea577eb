"""Which decoding set-ups give eager decoding's greedy tokens: split eager, static and compiled, with the
compiled steps in one thread, in a worker thread, and with the edge's steps in a second thread (as an
in-process edge server runs them).

    python bench/compiled_tokens.py --device cuda --dtype bfloat16    # results/gpu/compiled_tokens.txt

A tiny random Llama with larger weights than the default init (clear top-1 margins), a random prompt;
each set-up decodes three times (warm-up, recording, replay) and each time is compared with the whole
model's eager tokens: "same", or the first step where it differs.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor


import torch

from layersplit import cli

NEW_TOKENS = 24  # greedy tokens per decoding
PROMPT_TOKENS = 12  # random prompt tokens
SPLIT = 1  # the UE runs decoder layers 0..SPLIT
INIT_RANGE = 0.2  # the tiny model's weight scale (the default 0.02 leaves near ties that any rounding flips)
REPEATS = 3  # decodings per set-up: warm-up, recording, replay


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where the model runs")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"), help="model dtype")
    p.add_argument("--seed", type=cli.seed, default=0, help="seeds the model and the prompt")
    args = p.parse_args(argv)
    return cli.run_main("compiled_tokens.py", lambda: run(args))


def run(args) -> int:
    from transformers import LlamaForCausalLM

    from layersplit.models import tiny_config
    from layersplit.segments import SplitModel

    torch.manual_seed(args.seed)
    dev = args.device
    model = LlamaForCausalLM(tiny_config(initializer_range=INIT_RANGE)).eval().to(dev, getattr(torch, args.dtype))
    ids = torch.randint(0, model.config.vocab_size, (1, PROMPT_TOKENS), device=dev)
    print("torch", torch.__version__, flush=True)

    @torch.no_grad()
    def whole_model_eager() -> list[int]:
        out, x, past = [], ids, None
        for _ in range(NEW_TOKENS):
            r = model(input_ids=x, past_key_values=past, use_cache=True)
            past, t = r.past_key_values, int(r.logits[0, -1].argmax())
            out.append(t)
            x = torch.tensor([[t]], device=dev)
        return out

    def split_greedy(sm, decode, edge_call=lambda f, *a: f(*a)) -> list[int]:
        capacity = None if decode == "eager" else PROMPT_TOKENS + NEW_TOKENS + 8
        ue, edge = sm.new_cache("ue", SPLIT, decode, capacity), sm.new_cache("edge", SPLIT, decode, capacity)
        out, x = [], ids
        for _ in range(NEW_TOKENS):
            t = int(edge_call(sm.edge_logits, SPLIT, sm.ue_forward(SPLIT, x, ue), edge).argmax())
            out.append(t)
            x = torch.tensor([[t]], device=dev)
        sm.release(ue)
        sm.release(edge)
        return out

    reference = whole_model_eager()

    def report(name: str, decode) -> None:
        try:
            got = [decode() for _ in range(REPEATS)]
        except Exception as e:  # a set-up that fails is a finding: say which and go on
            print(f"{name}: {type(e).__name__}: {str(e)[:200]}", flush=True)
            traceback.print_exc()
            return
        first_diff = [next((i for i, (a, b) in enumerate(zip(g, reference)) if a != b), None) for g in got]
        print(f"{name}: " + ", ".join("same" if d is None else f"differs at {d}" for d in first_diff), flush=True)

    one, edge_thread = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    report("split eager, main thread", lambda: split_greedy(SplitModel(model), "eager"))
    report("split static, main thread", lambda: split_greedy(SplitModel(model), "static"))
    sm = SplitModel(model)
    report("split compiled, main thread", lambda: split_greedy(sm, "compiled"))
    sm_worker = SplitModel(model)
    report("split compiled, all in one worker thread", lambda: one.submit(split_greedy, sm_worker, "compiled").result())
    sm_two = SplitModel(model)
    report(
        "split compiled, UE main + edge in a worker thread",
        lambda: split_greedy(sm_two, "compiled", lambda f, *a: edge_thread.submit(f, *a).result()),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
