"""Shared fixtures: a tiny random Llama for mechanics, a tiny saved model folder for CLI smoke tests."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import settings as hypothesis_settings
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from layersplit.models import TINY_LAYERS, tiny_config  # noqa: F401 (tests import them from here)

# Hypothesis draws the same examples on every run, so the suite is deterministic and CI cannot flake on a
# lucky draw; `pytest --hypothesis-profile explore` draws new ones (a failure found so goes in as an @example)
hypothesis_settings.register_profile("deterministic", derandomize=True, database=None)
hypothesis_settings.register_profile("explore", derandomize=False, database=None)
hypothesis_settings.load_profile("deterministic")

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never wait on a hub (subprocesses inherit this)
SAMPLE_TEXT = (
    "The wireless uplink carries the hidden state from the user equipment to the edge server. "
    "Packets that fail their checksum are dropped, and the edge fills the missing numbers with zeros. "
) * 40


# A test that starts a process (a script end to end, a server, a pipeline, Ray), loads the real model or
# compiles is an integration or smoke test: marked slow, so `make check` (pytest -m "not slow") runs the
# unit tests only
PROCESS_CALLS = ("run_script(", "run_pipeline(", "subprocess.", "Popen(")
SLOW_MODULES = ("test_distributed.py", "test_add_noise_cli.py")  # Ray clusters; add_noise.py's main end to end


def _is_slow(item) -> bool:
    if "real_model" in item.keywords or "slow" in item.keywords or "compiled" in item.name:
        return True
    if item.path.name in SLOW_MODULES:
        return True
    try:
        source = inspect.getsource(item.function)
    except (AttributeError, OSError, TypeError):
        return False
    return any(call in source for call in PROCESS_CALLS)


def pytest_collection_modifyitems(config, items):
    """Integration and smoke tests are marked slow (_is_slow); tests marked gpu need CUDA: skipped where
    torch sees none (CI is CPU-only)."""
    skip = pytest.mark.skip(reason="needs CUDA (the gpu marker); run bench/gpu.sh on a GPU machine")
    for item in items:
        if _is_slow(item):
            item.add_marker(pytest.mark.slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config()).eval()


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in milliseconds on SAMPLE_TEXT (vocabulary 300)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([SAMPLE_TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny random Llama with a tokenizer: what --model accepts as a local folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_config()).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def sample_txt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "sample.txt"
    path.write_text(SAMPLE_TEXT)
    return path


def run_script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a top-level script the way a user does, from the repository root."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def wait_until(condition, timeout_s=5.0) -> bool:
    """Poll `condition` until it holds or `timeout_s` passes; its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# --- the edge server on the tiny random Llama (test_serve.py, test_edge_reliability.py) ---------------
@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: the edge thread and the UE compute in turn in one process, and on the shared
    2-core machine two OpenMP threads each made the serving tests 5x slower (the real model's 3x).
    Used by whole modules: pytestmark = pytest.mark.usefixtures("one_thread")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield threads
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def split_model(tiny_llama):
    from layersplit.segments import SplitModel

    return SplitModel(tiny_llama)


@pytest.fixture
def start_edge(split_model):
    """start(**kwargs): an EdgeServer on a free port, stopped at the end of the test."""
    from layersplit.serving.edge import EdgeServer

    servers = []

    def start(**kwargs):
        server = EdgeServer(split_model, port=0, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
