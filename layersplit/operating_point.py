"""The impaired evaluation at one operating point (add_noise.py without --sweep): the same text (or
prompt) through the clean and the impaired link, and what to report about the link.

The link is one of links.py's at the CLI's operating point (the original's p, or a physical link at
--snr-db), set on the split hook (link.SplitLink); its report adds the latency terms of a prefill and a
decoding step (compute.latency_breakdown). add_noise.py parses the arguments and prints the report.
"""

from __future__ import annotations

import argparse
import time

from . import links


def configure_link(link, args: argparse.Namespace, model, tokens: int) -> dict:
    """Set the impaired link (a link.SplitLink) from the arguments; return what to report about it."""
    from .compute import latency_breakdown, model_dims

    link.set_protect(args.protect)
    chosen = links.make_link(args.link, getattr(args, "channel", None), args.dropout or 0.0)
    link.set_link(chosen)
    if not chosen.physical:
        return {"link": chosen.name, "snr_db": None, "element_loss": args.dropout, "protect": args.protect}
    link.set_withheld(args.withheld_share)
    dims = model_dims(model.config)
    report = {
        "link": chosen.name,
        "protect": args.protect,
        "dropout": link.dropout,
        "withheld": link.withheld,
        "element_loss": link.element_loss,
        **chosen.describe(),
    }
    for phase in ("prefill", "decode"):
        times = latency_breakdown(
            chosen, dims, args.split, tokens, phase=phase, withheld=link.withheld, protect=args.protect
        )
        report.update({f"{key.removesuffix('_s')}_{phase}_s": value for key, value in times.items()})
    report["tx_latency_prefill_s"], report["tx_latency_decode_s"] = (
        report.pop("tx_prefill_s"),
        report.pop("tx_decode_s"),
    )
    report["latency_tokens"] = tokens
    return report


def generate(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    import torch

    device = next(model.parameters()).device
    inputs = tokenizer(prompt, return_tensors="pt").to(device)
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)


def run(args: argparse.Namespace) -> dict:
    """The report of one operating point: clean and impaired perplexity and token accuracy (or, with
    --generate, the greedy text of each), with the link's set-up, losses, bits and latency terms."""
    import torch

    from .data import load_text, tokenize
    from .link import SplitLink
    from .models import load_model
    from .perplexity import ORIGINAL_PROTOCOL, evaluate
    from .uplink import stream_seed

    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    stream = stream_seed(args.seed, 0)  # the run's stream: serve.py's first request at this seed draws the same
    link = SplitLink(model, split=args.split, dropout=0.0, seed=stream, sleep=args.sleep_delay)
    report = {
        "model": args.model,
        "n_layers": link.n_layers,
        "split": args.split,
        "layers_on_ue": args.split + 1,
        "dropout": args.dropout,
        "seed": args.seed,
        "device": str(next(model.parameters()).device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    if args.generate is not None:
        report["prompt"] = args.generate
        report["generated_clean"] = generate(model, tokenizer, args.generate, args.max_new_tokens)
        report.update(configure_link(link, args, model, len(tokenizer(args.generate).input_ids)))
        link.reseed(stream)
        link.reset_stats()
        report["generated"] = generate(model, tokenizer, args.generate, args.max_new_tokens)
        report["transfers"] = len(link.transfers)
        report["elements_impaired_fraction"] = link.impaired_fraction
        return report

    protocol = (
        dict(ORIGINAL_PROTOCOL)
        if args.original_window
        else {"context_length": args.context_length, "stride": args.stride, "weighting": "token"}
    )
    ids = tokenize(tokenizer, load_text(args.dataset), args.max_tokens or None)
    report.update(dataset=args.dataset, tokens=len(ids), **protocol)
    for label in ("clean", "impaired"):
        if label == "clean":
            link.set_dropout(0.0)
        else:
            report.update(configure_link(link, args, model, protocol["context_length"]))
        link.reseed(stream)
        link.reset_stats()
        start = time.perf_counter()
        result = evaluate(model, ids, progress=not args.no_progress, desc=label, **protocol)
        suffix = "_clean" if label == "clean" else ""
        report.update(
            {
                f"ppl{suffix}": result.ppl,
                f"nll{suffix}": result.nll,
                f"token_accuracy{suffix}": result.token_accuracy,
                f"scored_tokens{suffix}": result.tokens,
                f"nonfinite_windows{suffix}": result.nonfinite_windows,
                f"elapsed_s{suffix}": time.perf_counter() - start,
            }
        )
    report.update(
        transfers=len(link.transfers),
        elements_impaired_fraction=link.impaired_fraction,
        link_bits=sum(t.bits for t in link.transfers),
        link_delay_s=link.total_delay_s,
        delay_slept=args.sleep_delay,
    )
    return report
