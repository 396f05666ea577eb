"""Compute and latency of a split forward pass: FLOPs per layer, device throughputs, and the
seconds spent on the UE, on air and on the edge.

Splits are 0-based as everywhere in this project: split n puts decoder layers 0..n (n + 1 layers)
on the UE and the rest, with the LM head, on the edge. Compute time is FLOPs over a sustained
throughput (UE_FLOPS, EDGE_FLOPS); air time is the link's (links.Link.tx_s). The one latency table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import channel, links, protect_arq

# ---- devices (sustained dense fp16 matmul throughput, not peak) --------------------------------
# Phone-class UE: flagship mobile GPUs/NPUs (e.g. Adreno 740, Apple A17) peak at a few TFLOP/s
# fp16 and sustain roughly a third of that under thermal limits.
UE_FLOPS = 1e12
# Edge GPU: an A100 peaks at 312 TFLOP/s bf16 dense; LLM prefill typically reaches ~30-50 %.
EDGE_FLOPS = 1e14


@dataclass(frozen=True)
class ModelDims:
    """The shapes of a Llama-style decoder that set its FLOPs and activation size."""

    n_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int


def model_dims(config) -> ModelDims:
    """ModelDims of a Hugging Face model config (Llama-style attribute names)."""
    heads = config.num_attention_heads
    return ModelDims(
        n_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        vocab_size=config.vocab_size,
    )


SMOLLM2_135M = ModelDims(30, 576, 1536, 9, 3, 64, 49152)  # the embedded default model
LLAMA2_7B = ModelDims(32, 4096, 11008, 32, 32, 128, 32000)  # the paper's model
TABLE_MODELS = {"smollm2-135m": SMOLLM2_135M, "llama2-7b": LLAMA2_7B}  # the rows of the latency and protect tables


def decoder_layer_flops(
    hidden_size: int,
    intermediate_size: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    tokens: int,
    context_len: int,
) -> float:
    """FLOPs (2 per multiply-accumulate) of one decoder layer for `tokens` new tokens that each
    attend to `context_len` keys. Prefill: context_len = tokens (the full T x T score matrix, as
    dense kernels compute it); decode: tokens = 1, context_len = cached + 1. Norms, RoPE and the
    softmax are O(tokens x hidden) and left out.
    """
    q_dim, kv_dim = num_heads * head_dim, num_kv_heads * head_dim
    projections = 2 * tokens * hidden_size * (2 * q_dim + 2 * kv_dim)  # q, o; k, v (GQA)
    mlp = 2 * tokens * 3 * hidden_size * intermediate_size  # gate, up, down
    attention = 2 * 2 * tokens * context_len * q_dim  # scores Q K^T and weights x V
    return float(projections + mlp + attention)


def lm_head_flops(hidden_size: int, vocab_size: int, tokens: int) -> float:
    return 2.0 * tokens * hidden_size * vocab_size


def latency_breakdown(
    link: links.Link | channel.LinkConfig,
    model: ModelDims,
    split: int,
    tokens: int,
    phase: str = "prefill",
    context_len: int | None = None,
    ue_flops: float = UE_FLOPS,
    edge_flops: float = EDGE_FLOPS,
    withheld: float = 0.0,
    protect: int = 0,
) -> dict[str, float]:
    """Seconds spent on the UE, on air and on the edge for one forward pass, run in sequence.

    split: 0-based, split + 1 decoder layers on the UE (0..n_layers - 1). prefill: `tokens` prompt
    tokens cross the link and the LM head scores all of them (as in perplexity evaluation); decode:
    one new token with a KV cache of `context_len` - 1 (default: the prompt, context_len = tokens + 1).
    `withheld`: share of the activation the UE deliberately does not send (shortens air time only);
    `protect`: the K elements per token also sent over the protected path (Link.protected_cost).
    `link`: the air time is its tx_s (a bare LinkConfig: the uncoded erasure link's; the original's: nan).
    Compute time is FLOPs over sustained throughput; decode is memory-bound in practice, so it is a
    lower bound there.
    """
    if not 0 <= split < model.n_layers:
        raise ValueError(f"split must be between 0 and n_layers - 1 = {model.n_layers - 1}, got {split}")
    if phase not in ("prefill", "decode"):
        raise ValueError(f"phase must be 'prefill' or 'decode', got {phase!r}")
    if tokens < 1:
        raise ValueError(f"tokens must be >= 1, got {tokens}")
    new = tokens if phase == "prefill" else 1
    context = tokens if phase == "prefill" else (context_len or tokens + 1)
    dims = (model.hidden_size, model.intermediate_size, model.num_heads, model.num_kv_heads, model.head_dim)
    layer = decoder_layer_flops(*dims, tokens=new, context_len=context)
    ue = (split + 1) * layer / ue_flops
    edge = ((model.n_layers - split - 1) * layer + lm_head_flops(model.hidden_size, model.vocab_size, new)) / edge_flops
    if not isinstance(link, links.Link):
        link = links.ErasureLink(link)
    tx = link.tx_s(new, model.hidden_size, withheld, protect)
    return {"ue_compute_s": ue, "tx_s": tx, "edge_compute_s": edge, "total_s": ue + tx + edge}


def latency_table(
    snr_db_list: list[float],
    models: dict[str, ModelDims],
    tokens: int,
    link: links.Link = links.ErasureLink(),
) -> list[dict[str, float | int | str]]:
    """One row per (model, phase, Es/N0, split 0..n_layers - 1): latency_breakdown's UE
    compute, air time and edge compute for prefill of `tokens` prompt tokens and for one decoding
    step after them, over `link` at each Es/N0 of snr_db_list, with the columns the link describes
    itself by (Link.table_columns)."""
    rows = []
    for name, dims, phase, new_tokens, at_snr in operating_points(snr_db_list, models, tokens, link):
        columns = at_snr.table_columns(new_tokens, dims.hidden_size)
        for split in range(dims.n_layers):
            rows.append(
                {
                    "model": name,
                    "n_layers": dims.n_layers,
                    "hidden_size": dims.hidden_size,
                    "phase": phase,
                    "tokens": tokens,
                    "new_tokens": new_tokens,
                    "snr_db": at_snr.cfg.snr_db,
                    **columns,
                    "split": split,
                    "layers_on_ue": split + 1,
                    **latency_breakdown(at_snr, dims, split, tokens, phase=phase),
                    "ue_flops": UE_FLOPS,
                    "edge_flops": EDGE_FLOPS,
                }
            )
    return rows


def operating_points(snr_db_list: list[float], models: dict[str, ModelDims], tokens: int, link: links.Link):
    """(model name, dims, phase, new tokens, `link` at that Es/N0) of the tables: prefill of `tokens` tokens
    and one decoding step, for each model and Es/N0."""
    for name, dims in models.items():
        for phase in ("prefill", "decode"):
            for snr_db in snr_db_list:
                yield name, dims, phase, tokens if phase == "prefill" else 1, link.at(snr_db)


def protect_table(
    snr_db_list: list[float],
    models: dict[str, ModelDims],
    ks,
    tokens: int,
    link: channel.LinkConfig = channel.LinkConfig(),
) -> list[dict[str, float | int | str]]:
    """What the protected path (--protect K) adds in the design in use (protect_arq.PROTECT_PATH), per (model,
    phase, Es/N0, K): the pairs' payload bits, their expected bits on air and mean latency, and the share of its
    packets (TBs) lost, beside the ordinary path's bits and air time, for prefill of `tokens` tokens and one
    decoding step."""
    rows = []
    for name, dims, phase, new_tokens, at_snr in operating_points(snr_db_list, models, tokens, links.ErasureLink(link)):
        cfg = at_snr.cfg
        ordinary_bits = channel.payload_bits(cfg, new_tokens, dims.hidden_size)
        ordinary_s = channel.tx_latency_s(cfg, new_tokens, dims.hidden_size)
        for k in ks:
            cost = at_snr.protected_cost(new_tokens, k, dims.hidden_size)
            air_bits, air_s = cost.air_bits, cost.air_s
            rows.append(
                {
                    "model": name,
                    "hidden_size": dims.hidden_size,
                    "phase": phase,
                    "new_tokens": new_tokens,
                    "snr_db": cfg.snr_db,
                    "modulation": cfg.modulation,
                    "fading": cfg.fading,
                    "packet_error_rate": channel.packet_error_rate(cfg),
                    "protect": k,
                    "protect_path": protect_arq.PROTECT_PATH,
                    "pair_bits": math.ceil(math.log2(dims.hidden_size)) + cfg.bits_per_element,
                    "protected_payload_bits": channel.protected_payload_bits(
                        new_tokens, k, dims.hidden_size, cfg.bits_per_element
                    ),
                    "protected_air_bits": air_bits,
                    "ordinary_air_bits": ordinary_bits,
                    "extra_bits_share": air_bits / ordinary_bits,
                    "protected_tx_s": air_s,
                    "ordinary_tx_s": ordinary_s,
                    "extra_time_share": air_s / ordinary_s,
                    "unit_loss": cost.unit_loss if k else 0.0,
                    "unit_loss_bound": cost.unit_loss_bound if k else 0.0,
                }
            )
    return rows
