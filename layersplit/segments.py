"""Run a model in segments: the UE's layers, then the edge's, without touching the loaded model.

A *view* of the model shares every parameter but holds only its segment of the decoder list (and,
without the head, no final norm and no LM head), so one loaded model serves every split, the sweep
walks the splits, and concurrent sessions never mutate shared modules. Views run through the
model's own forward (no copied model code). Splits are 0-based as everywhere in this project:
split n runs layers 0..n on the UE (n + 1 layers) and layers n + 1.. and the LM head on the edge.

`SegmentCache` gives each side a KV cache whose layer indices are local to its segment;
`StaticSegmentCache` is its fixed-length twin, whose one-token decoding step can be compiled
(DECODE_MODES). `check_composition` is the one check that UE + edge segments reproduce the full model.
"""

from __future__ import annotations

import copy
import inspect
import threading
from collections import defaultdict

import torch
from transformers import DynamicCache, StaticCache

from . import UserError
from .models import find_decoder_layers
from .perplexity import chunked_nll, token_nll_and_correct

FINAL_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm")  # the decoder's last norm
COMPOSITION_RTOL = 1e-3  # largest logit difference, relative to the logits' scale, that counts as the same model


# How a side decodes. eager: a growing DynamicCache, every step through the model's forward (the
# reference). static: a fixed-length StaticCache (allocated once, written in place), still eager.
# compiled: the static cache with the one-token decoding step compiled by torch.compile, and on CUDA
# captured as a CUDA graph (mode reduce-overhead), so a step is one graph replay instead of hundreds
# of kernel launches from Python. The prompt's step (prefill, of any length) always runs eager.
DECODE_MODES = ("eager", "static", "compiled")
# Compiled decoding rounds every bf16/fp16 intermediate as eager does (inductor's emulate_precision_casts),
# so it gives eager's greedy tokens: with fp32 intermediates (False, a little faster) a bf16 split Llama's
# tokens left eager's after 3 to 5 steps on a CPU and on an H200
COMPILED_ROUNDS_LIKE_EAGER = True
STATIC_MIN_TOKENS = 64  # a static cache holds a power of two of tokens, at least this: few shapes to compile


def resolve_decode(decode: str, device) -> str:
    """auto: compiled on CUDA, where a decoding step is bound by kernel launches and memory; eager
    elsewhere: on a CPU compiling takes tens of seconds per shape and a static cache makes every step
    attend over its whole length, so the CPU keeps today's numbers and behaviour."""
    if decode == "auto":
        return "compiled" if torch.device(device).type == "cuda" else "eager"
    if decode not in DECODE_MODES:
        raise UserError(f"unknown decoding mode {decode!r}: use auto or one of {', '.join(DECODE_MODES)}")
    return decode


def static_capacity(tokens: int) -> int:
    """The static cache length for `tokens`: the next power of two, at least STATIC_MIN_TOKENS."""
    return max(STATIC_MIN_TOKENS, 1 << max(int(tokens) - 1, 0).bit_length())


class _LocalLayers:
    """Keeps the cache layers [start, stop) of a cache built for the whole model and indexes them
    locally from 0: attention layers index the cache by their global layer_idx; this shifts it, so
    get_seq_length() (which reads its layer 0, giving the positions) and the causal mask see the
    segment's own first layer. Built from the model config, so per-layer cache types (sliding
    window, ...) are those of the segment's layers."""

    def _keep(self, start: int, stop: int) -> None:
        if len(self.layers) >= stop:
            self.layers = self.layers[start:stop]
        self.offset = start

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return super().update(key_states, value_states, layer_idx - self.offset, *args, **kwargs)


class SegmentCache(_LocalLayers, DynamicCache):
    """A KV cache for decoder layers [start, stop) of a model, indexed locally from 0 (growing)."""

    def __init__(self, config, start: int, stop: int):
        DynamicCache.__init__(self, config=config)
        self._keep(start, stop)


class StaticSegmentCache(_LocalLayers, StaticCache):
    """A KV cache for decoder layers [start, stop) holding at most `capacity` tokens, allocated at
    the first forward and written in place, so that a compiled decoding step (compiled=True) and its
    CUDA graph find its tensors at the same addresses every step. `tokens` counts what it holds on
    the host (its device counter would cost a synchronisation); SplitModel.release puts it back in
    its SplitModel's pool for the next session of the same shape."""

    def __init__(self, config, start: int, stop: int, capacity: int, compiled: bool = False):
        StaticCache.__init__(self, config=config, max_cache_len=capacity)
        self._keep(start, stop)
        self.start, self.stop, self.capacity, self.tokens = start, stop, capacity, 0
        # a sliding-window layer decides on a Python count of tokens, which would recompile every step
        self.compiled = compiled and not any(self.is_sliding)

    def reserve(self, n: int) -> None:
        """Room for n more tokens, or a UserError (writing past the end would fail inside a kernel)."""
        if self.tokens + n > self.capacity:
            raise UserError(
                f"the static KV cache holds {self.capacity} tokens and already has {self.tokens}: "
                f"{n} more do not fit (size it from the prompt and max_new_tokens, or --max-context)"
            )
        self.tokens += n


def _module_path(model: torch.nn.Module, target: torch.nn.Module) -> list[str]:
    for name, module in model.named_modules():
        if module is target:
            return name.split(".")
    raise UserError(f"cannot locate the decoder layers inside {type(model).__name__}")


def segment_view(model: torch.nn.Module, start: int, stop: int, head: bool, layers=None) -> torch.nn.Module:
    """A shallow copy of `model` that shares all parameters but runs only decoder layers [start, stop).

    head=False: the decoder (no LM head) with its final norm replaced by Identity, so its
    last_hidden_state is the raw output of layer stop - 1. head=True: the whole causal LM (LM head
    included), fed with inputs_embeds. layers: what runs in place of the model's own decoder layers
    (their compiled wrappers). Nothing of `model` is modified.
    """
    own = find_decoder_layers(model)
    path = _module_path(model, own)
    layers = own if layers is None else layers
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
        raise UserError(
            f"cannot split {type(model).__name__}: no final norm named one of "
            f"{', '.join(FINAL_NORM_NAMES)} next to its decoder layers"
        )
    parent._modules[norms[0]] = torch.nn.Identity()
    return parent


def cache_kwarg(module: torch.nn.Module) -> str:
    """transformers 5.x calls the cache argument `cache` (formerly `past_key_values`)."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def model_fingerprint(model: torch.nn.Module) -> dict:
    """What both sides of a split must agree on: architecture and shapes (not the weights' dtype)."""
    cfg = model.config
    return {
        "model_type": getattr(cfg, "model_type", type(model).__name__),
        "n_layers": len(find_decoder_layers(model)),
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "name": getattr(cfg, "_name_or_path", ""),
    }


def _segment_forward(view: torch.nn.Module, kw: str, head: bool, inputs: dict, cache):
    """A view's forward on new tokens with its cache: the last position's logits with the head, else
    the hidden states (eager, and the body of the compiled decoding step)."""
    if head:
        return view(use_cache=True, logits_to_keep=1, **inputs, **{kw: cache}).logits
    return view(use_cache=True, **inputs, **{kw: cache}).last_hidden_state


def _cuda_graph_state_for_this_thread() -> None:
    """Give this thread CUDA graph trees' per-thread state if it has none. Torch before 2.13 set it up only
    in the thread that imported torch._inductor and asserted in any other Python thread (pytorch#123177,
    seen on torch 2.11 on an H200: an edge's compute thread replaying steps first run in the main thread);
    2.13 sets it up lazily itself, so there this finds it in place and does nothing."""
    from torch._inductor import cudagraph_trees as trees

    if not hasattr(trees.local, "tree_manager_containers") and not torch._C._is_key_in_tls("tree_manager_containers"):
        trees.local.tree_manager_containers = {}
        trees.local.tree_manager_locks = defaultdict(threading.Lock)


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
        self._idle: dict[tuple[int, int, int, bool], list[StaticSegmentCache]] = {}  # released static caches
        self._steps: dict[tuple[int, int, bool], object] = {}  # compiled decoding steps per segment
        self._compiled_layers: list[torch.nn.Module] | None = None  # see view(compiled=True)

    def validate_split(self, split) -> int:
        if (
            isinstance(split, bool)
            or not isinstance(split, int)
            and not hasattr(split, "__index__")
            or not 0 <= split < self.n_layers
        ):
            raise UserError(
                f"split {split!r} is outside 0..{self.n_layers - 1} (0-based: split n puts n + 1 of "
                f"{self.n_layers} decoder layers on the UE)"
            )
        return int(split)

    def view(self, start: int, stop: int, head: bool, compiled: bool = False) -> tuple[torch.nn.Module, str]:
        """(the view running layers [start, stop), with the LM head or not; its cache argument's name).
        compiled: each decoder layer through torch.compile (regional compilation: the layers share one
        code, so one graph serves them all; a second batch size recompiles it once with a symbolic
        batch). The model itself is left eager."""
        with self._lock:
            key = (start, stop, head, compiled)
            if key not in self._views:
                if compiled and self._compiled_layers is None:
                    self._compiled_layers = [torch.compile(layer) for layer in find_decoder_layers(self.model)]
                view = segment_view(self.model, start, stop, head, self._compiled_layers if compiled else None)
                self._views[key] = (view, cache_kwarg(view))
            return self._views[key]

    def _inputs(self, x: torch.Tensor) -> dict:
        return (
            {"input_ids": x.to(self.device)}
            if x.dtype == torch.long
            else {"inputs_embeds": x.to(self.device, self.dtype)}
        )

    # --- serving: one side of a split, with its KV cache ---
    def _bounds(self, side: str, split: int | None) -> tuple[int, int]:
        """Decoder layers [start, stop) of a side: ue, edge, or full (the whole model, single-process)."""
        if side == "full":
            return 0, self.n_layers
        return (0, split + 1) if side == "ue" else (split + 1, self.n_layers)

    def new_cache(
        self, side: str, split: int | None, decode: str = "eager", capacity: int | None = None
    ) -> SegmentCache | StaticSegmentCache:
        """A KV cache for one session of a side (ue, edge, or full: the whole model). decode eager: a
        growing SegmentCache; static or compiled: a StaticSegmentCache of `capacity` tokens, a released
        one of the same shape when there is one. Give it back with release()."""
        start, stop = self._bounds(side, split)
        if decode == "eager":
            return SegmentCache(self.model.config, start, stop)
        if decode not in DECODE_MODES or not capacity or capacity < 1:
            raise UserError(f"a {decode!r} KV cache needs a mode among {', '.join(DECODE_MODES)} and a capacity >= 1")
        with self._lock:
            idle = self._idle.get((start, stop, capacity, decode == "compiled"))
            if idle:
                return idle.pop()
        return StaticSegmentCache(self.model.config, start, stop, capacity, compiled=decode == "compiled")

    def release(self, cache) -> None:
        """A session's cache is done with. A growing one is simply dropped; a static one is emptied and
        kept for the next session of its shape: a compiled step's CUDA graph reads and writes its
        tensors where they are, so reusing them replays the graph instead of recording another. The
        caches kept are at most the sessions that were open at once per shape."""
        if isinstance(cache, StaticSegmentCache):
            cache.reset()
            cache.tokens = 0
            with self._lock:
                self._idle.setdefault((cache.start, cache.stop, cache.capacity, cache.compiled), []).append(cache)

    def idle_caches(self) -> int:
        """Static caches released and kept for reuse."""
        with self._lock:
            return sum(len(v) for v in self._idle.values())

    def _run(self, start: int, stop: int, head: bool, inputs: dict, cache):
        """Layers [start, stop) (and the LM head) on new tokens with their cache: the last position's
        logits with the head, else the hidden states. One token on a compiled cache that already
        holds the prompt runs the compiled step; everything else the view's own forward."""
        n = next(iter(inputs.values())).shape[1]
        if isinstance(cache, StaticSegmentCache):
            cache.reserve(n)
            if cache.compiled and n == 1 and cache.tokens > 1:
                step = self._compiled_step(start, stop, head)
                if self.device.type == "cuda":
                    _cuda_graph_state_for_this_thread()
                    torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are done with
                return step(inputs, cache).clone()  # a CUDA graph's output is overwritten by its next replay
        return _segment_forward(*self.view(start, stop, head), head, inputs, cache)

    def _compiled_step(self, start: int, stop: int, head: bool):
        """The one-token decoding step of a segment, compiled once per segment (and per cache length):
        fixed shapes (dynamic=False); positions come from the cache's device counter, so no shape or
        Python number changes from one step to the next."""
        view, kw = self.view(start, stop, head)
        with self._lock:
            if (start, stop, head) not in self._steps:

                def step(inputs, cache):
                    return _segment_forward(view, kw, head, inputs, cache)

                # every segment's step is this one function's code, which torch keeps at most
                # recompile_limit compiled versions of (8 by default): an edge serves many splits
                torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 8 * self.n_layers)
                # CUDA graphs on CUDA (what mode="reduce-overhead" sets), and bf16/fp16 rounded as eager does
                options = {
                    "triton.cudagraphs": self.device.type == "cuda",
                    "emulate_precision_casts": COMPILED_ROUNDS_LIKE_EAGER,
                }
                self._steps[(start, stop, head)] = torch.compile(step, options=options, dynamic=False)
            return self._steps[(start, stop, head)]

    @torch.no_grad()
    def ue_forward(self, split: int, input_ids: torch.Tensor, cache) -> torch.Tensor:
        """Hidden state after layer `split` for the new tokens (1 x tokens x d)."""
        return self._run(0, split + 1, False, {"input_ids": input_ids.to(self.device)}, cache)

    @torch.no_grad()
    def edge_logits(self, split: int, hidden: torch.Tensor, cache) -> torch.Tensor:
        """Logits of the last position after layers split + 1.. and the LM head (vocabulary,)."""
        return self._run(split + 1, self.n_layers, True, {"inputs_embeds": hidden.to(self.device, self.dtype)}, cache)[
            0, -1
        ]

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, cache) -> torch.Tensor:
        """Logits of the last position of the whole model (vocabulary,), with a cache of side full."""
        return self._run(0, self.n_layers, True, {"input_ids": input_ids.to(self.device)}, cache)[0, -1]

    # --- the sweep: windows without a cache, a split at a time ---
    @torch.no_grad()
    def hidden_after(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The hidden state after layer stop - 1, from token ids (start = 0) or the state before `start`."""
        view, _ = self.view(start, stop, head=False)
        return view(**self._inputs(x), use_cache=False).last_hidden_state

    @torch.no_grad()
    def score_from(self, hidden: torch.Tensor, start: int, targets: torch.Tensor, compiled: bool = False):
        """Per-variant NLL sum (float64) and correct count of `targets` (the window's last tokens),
        running layers start.. and the LM head on a batch of hidden states; left on the model's
        device (reading them is a host sync: the sweep reads once per window). Where the head is
        separable, its logits are made a slice of tokens at a time (perplexity.chunked_nll).
        compiled: the layers through torch.compile (view)."""
        n = len(targets)
        view, _ = self.view(start, self.n_layers, True, compiled)
        if self.head_separable():
            states = view.get_decoder()(**self._inputs(hidden), use_cache=False).last_hidden_state[:, -n - 1 : -1]
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
def check_composition(
    split_model: SplitModel, split: int | None = None, tokens: int = 8, decode: str = "eager"
) -> float:
    """Largest |logit| difference between UE + edge segments and one full forward, over a prompt
    and one cached decoding step; raises UserError when the segments do not reproduce the model.
    decode: the segments' caches (DECODE_MODES); the full forward's is always a DynamicCache."""
    split = split_model.n_layers // 2 if split is None else split
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, split_model.model.config.vocab_size, (1, tokens + 1), generator=gen)
    model, kw = split_model.model, cache_kwarg(split_model.model)
    full_cache = DynamicCache(config=model.config)
    ue_cache, edge_cache = (
        split_model.new_cache(side, split, decode, static_capacity(tokens + 1)) for side in ("ue", "edge")
    )
    worst = scale = 0.0
    for chunk in (ids[:, :tokens], ids[:, tokens:]):
        ref = model(
            input_ids=chunk.to(split_model.device), use_cache=True, logits_to_keep=1, **{kw: full_cache}
        ).logits[0, -1]
        got = split_model.edge_logits(split, split_model.ue_forward(split, chunk, ue_cache), edge_cache)
        worst = max(worst, float((ref.float() - got.float()).abs().max()))
        scale = max(scale, float(ref.float().abs().max()) + 1.0)
    split_model.release(ue_cache)
    split_model.release(edge_cache)
    if not worst <= COMPOSITION_RTOL * scale:
        raise UserError(
            f"{type(model).__name__} cannot be run split: its segments differ from a full forward by "
            f"{worst:.3g} in the logits (this architecture does something outside its decoder layers)"
        )
    return worst
