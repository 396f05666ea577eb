"""Run a model in segments: the UE's layers, then the edge's, without touching the loaded model.

A *view* of the model shares every parameter but holds only its segment of the decoder list (and,
without the head, no final norm and no LM head), so one loaded model serves every split, the sweep
walks the splits, and concurrent sessions never mutate shared modules. Views run through the
model's own forward (no copied model code). Splits are 0-based as everywhere in this project:
split n runs layers 0..n on the UE (n + 1 layers) and layers n + 1.. and the LM head on the edge.

`SegmentCache` gives each side a KV cache whose layer indices are local to its segment.
`check_composition` is the one check that UE + edge segments reproduce the full model.
"""
from __future__ import annotations

import copy
import inspect
import threading

import torch
from transformers import DynamicCache

from . import UserError
from .models import find_decoder_layers
from .perplexity import chunked_nll, token_nll_and_correct

FINAL_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm")  # the decoder's last norm
COMPOSITION_RTOL = 1e-3  # largest logit difference, relative to the logits' scale, that counts as the same model


class SegmentCache(DynamicCache):
    """A KV cache for decoder layers [start, stop) of a model, indexed locally from 0.

    Attention layers index the cache by their global layer_idx; this cache shifts it, so
    get_seq_length() (which reads its layer 0, giving the positions) and the causal mask see the
    segment's own first layer. Built from the model config, so per-layer cache types (sliding
    window, ...) are those of the segment's layers.
    """

    def __init__(self, config, start: int, stop: int):
        super().__init__(config=config)
        if len(self.layers) >= stop:
            self.layers = self.layers[start:stop]
        self.offset = start

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return super().update(key_states, value_states, layer_idx - self.offset, *args, **kwargs)


def _module_path(model: torch.nn.Module, target: torch.nn.Module) -> list[str]:
    for name, module in model.named_modules():
        if module is target:
            return name.split(".")
    raise UserError(f"cannot locate the decoder layers inside {type(model).__name__}")


def segment_view(model: torch.nn.Module, start: int, stop: int, head: bool) -> torch.nn.Module:
    """A shallow copy of `model` that shares all parameters but runs only decoder layers [start, stop).

    head=False: the decoder (no LM head) with its final norm replaced by Identity, so its
    last_hidden_state is the raw output of layer stop - 1. head=True: the whole causal LM (LM head
    included), fed with inputs_embeds. Nothing of `model` is modified.
    """
    layers = find_decoder_layers(model)
    path = _module_path(model, layers)
    root = copy.copy(model)
    root._modules = dict(model._modules)
    parent = root
    for part in path[:-1]:
        child = copy.copy(parent._modules[part])
        child._modules = dict(child._modules)
        parent._modules[part] = child
        parent = child
    parent._modules[path[-1]] = torch.nn.ModuleList(layers[start:stop])
    if head:
        return root
    norms = [n for n in FINAL_NORM_NAMES if n in parent._modules]
    if not norms:
        raise UserError(f"cannot split {type(model).__name__}: no final norm named one of "
                        f"{', '.join(FINAL_NORM_NAMES)} next to its decoder layers")
    parent._modules[norms[0]] = torch.nn.Identity()
    return parent


def cache_kwarg(module: torch.nn.Module) -> str:
    """transformers 5.x calls the cache argument `cache` (formerly `past_key_values`)."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def model_fingerprint(model: torch.nn.Module) -> dict:
    """What both sides of a split must agree on: architecture and shapes (not the weights' dtype)."""
    cfg = model.config
    return {"model_type": getattr(cfg, "model_type", type(model).__name__),
            "n_layers": len(find_decoder_layers(model)), "hidden_size": cfg.hidden_size,
            "vocab_size": cfg.vocab_size, "name": getattr(cfg, "_name_or_path", "")}


class SplitModel:
    """One loaded model, run as segments: the UE's layers 0..split and the edge's split + 1.. + LM head.

    Views are built once per segment and shared (safe across threads: nothing is mutated).
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.n_layers = len(find_decoder_layers(model))
        self.hidden_size = model.config.hidden_size
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.fingerprint = model_fingerprint(model)
        self._views: dict[tuple[int, int, bool], tuple[torch.nn.Module, str]] = {}
        self._head_separable: bool | None = None  # see head_separable()
        self._lock = threading.Lock()

    def validate_split(self, split) -> int:
        if isinstance(split, bool) or not isinstance(split, int) and not hasattr(split, "__index__") \
                or not 0 <= split < self.n_layers:
            raise UserError(f"split {split!r} is outside 0..{self.n_layers - 1} (0-based: split n puts n + 1 of "
                            f"{self.n_layers} decoder layers on the UE)")
        return int(split)

    def view(self, start: int, stop: int, head: bool) -> tuple[torch.nn.Module, str]:
        """(the view running layers [start, stop), with the LM head or not; its cache argument's name)."""
        with self._lock:
            key = (start, stop, head)
            if key not in self._views:
                view = segment_view(self.model, start, stop, head)
                self._views[key] = (view, cache_kwarg(view))
            return self._views[key]

    def _inputs(self, x: torch.Tensor) -> dict:
        return {"input_ids": x.to(self.device)} if x.dtype == torch.long else {"inputs_embeds": x.to(self.device, self.dtype)}

    # --- serving: one side of a split, with its KV cache ---
    def new_cache(self, side: str, split: int) -> SegmentCache:
        start, stop = (0, split + 1) if side == "ue" else (split + 1, self.n_layers)
        return SegmentCache(self.model.config, start, stop)

    @torch.no_grad()
    def ue_forward(self, split: int, input_ids: torch.Tensor, cache: SegmentCache) -> torch.Tensor:
        """Hidden state after layer `split` for the new tokens (1 x tokens x d)."""
        view, kw = self.view(0, split + 1, head=False)
        return view(input_ids=input_ids.to(self.device), use_cache=True, **{kw: cache}).last_hidden_state

    @torch.no_grad()
    def edge_logits(self, split: int, hidden: torch.Tensor, cache: SegmentCache) -> torch.Tensor:
        """Logits of the last position after layers split + 1.. and the LM head (vocabulary,)."""
        view, kw = self.view(split + 1, self.n_layers, head=True)
        out = view(inputs_embeds=hidden.to(self.device, self.dtype), use_cache=True, logits_to_keep=1, **{kw: cache})
        return out.logits[0, -1]

    # --- the sweep: windows without a cache, a split at a time ---
    @torch.no_grad()
    def hidden_after(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The hidden state after layer stop - 1, from token ids (start = 0) or the state before `start`."""
        view, _ = self.view(start, stop, head=False)
        return view(**self._inputs(x), use_cache=False).last_hidden_state

    @torch.no_grad()
    def score_from(self, hidden: torch.Tensor, start: int, targets: torch.Tensor):
        """Per-variant NLL sum (float64) and correct count of `targets` (the window's last tokens),
        running layers start.. and the LM head on a batch of hidden states; left on the model's
        device (reading them is a host sync: the sweep reads once per window). Where the head is
        separable, its logits are made a slice of tokens at a time (perplexity.chunked_nll)."""
        n = len(targets)
        view, _ = self.view(start, self.n_layers, head=True)
        if self.head_separable():
            states = view.get_decoder()(**self._inputs(hidden), use_cache=False).last_hidden_state[:, -n - 1:-1]
            return chunked_nll(states, view.get_output_embeddings(), targets)
        logits = view(**self._inputs(hidden), use_cache=False, logits_to_keep=n + 1).logits[:, :-1]
        nll, correct = token_nll_and_correct(logits, targets.to(logits.device).expand(len(logits), n))
        return nll.double().sum(1), correct.sum(1)

    @torch.no_grad()
    def head_separable(self) -> bool:
        """Whether logits = get_output_embeddings()(get_decoder()'s output), checked once on a short
        random input against the model's own forward: false where the causal LM does more after its
        head (logit soft-capping, scaling), and then the whole forward is used."""
        if self._head_separable is None:
            try:
                ids = torch.randint(0, self.model.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
                ids = ids.to(self.device)
                ref = self.model(input_ids=ids, use_cache=False).logits.float()
                states = self.model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
                got = self.model.get_output_embeddings()(states).float()
                self._head_separable = bool((ref - got).abs().max() <= COMPOSITION_RTOL * (ref.abs().max() + 1.0))
            except (AttributeError, TypeError, NotImplementedError, RuntimeError):
                self._head_separable = False
        return self._head_separable


@torch.no_grad()
def check_composition(split_model: SplitModel, split: int | None = None, tokens: int = 8) -> float:
    """Largest |logit| difference between UE + edge segments and one full forward, over a prompt
    and one cached decoding step; raises UserError when the segments do not reproduce the model."""
    split = split_model.n_layers // 2 if split is None else split
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, split_model.model.config.vocab_size, (1, tokens + 1), generator=gen)
    model, kw = split_model.model, cache_kwarg(split_model.model)
    full_cache = DynamicCache(config=model.config)
    ue_cache, edge_cache = split_model.new_cache("ue", split), split_model.new_cache("edge", split)
    worst = scale = 0.0
    for chunk in (ids[:, :tokens], ids[:, tokens:]):
        ref = model(input_ids=chunk.to(split_model.device), use_cache=True, logits_to_keep=1, **{kw: full_cache}).logits[0, -1]
        got = split_model.edge_logits(split, split_model.ue_forward(split, chunk, ue_cache), edge_cache)
        worst = max(worst, float((ref.float() - got.float()).abs().max()))
        scale = max(scale, float(ref.float().abs().max()) + 1.0)
    if not worst <= COMPOSITION_RTOL * scale:
        raise UserError(f"{type(model).__name__} cannot be run split: its segments differ from a full forward by "
                        f"{worst:.3g} in the logits (this architecture does something outside its decoder layers)")
    return worst
