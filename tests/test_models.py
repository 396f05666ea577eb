"""Model loading: the embedded model's cache is atomic and rebuilt when corrupt; bad names are clear errors.

The slow GGUF dequantisation is replaced by a tiny random Llama here, so the cache logic itself is
tested in seconds; tests/test_real_model.py loads the real thing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import LlamaForCausalLM

from conftest import make_tokenizer, tiny_config
from layersplit import UserError, models


@pytest.fixture
def fake_conversion(monkeypatch, tmp_path):
    """Point the cache at tmp_path and make 'dequantising' return a tiny random Llama; count calls."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def dequantise(gguf):
        calls.append(gguf)
        torch.manual_seed(0)
        return LlamaForCausalLM(tiny_config()), make_tokenizer()

    monkeypatch.setattr(models, "_dequantise_gguf", dequantise)
    return calls


def test_cache_honours_xdg_and_converts_once(fake_conversion, tmp_path):
    model, _ = models.load_model(device="cpu")
    assert models.embedded_cache_dir().parent.parent == tmp_path / "layersplit"
    assert (models.embedded_cache_dir() / models.COMPLETE_MARKER).is_file()
    models.load_model(device="cpu")
    assert len(fake_conversion) == 1
    assert model.config.num_hidden_layers == 4


def test_corrupt_cache_is_rebuilt(fake_conversion, capsys):
    models.load_model(device="cpu")
    weights = models.embedded_cache_dir() / "model.safetensors"
    weights.write_bytes(b"\x00garbage" * 100)
    model, _ = models.load_model(device="cpu")
    assert len(fake_conversion) == 2
    assert "corrupt" in capsys.readouterr().err
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


def test_unfinished_cache_is_rebuilt_not_loaded(fake_conversion):
    folder = models.embedded_cache_dir()
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")  # a folder without the completion marker
    models.load_model(device="cpu")
    assert len(fake_conversion) == 1 and (folder / models.COMPLETE_MARKER).is_file()


def test_conversion_that_fails_halfway_leaves_no_cache(fake_conversion, monkeypatch):
    def crash(self, *args, **kwargs):
        (args[0] / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        models.load_model(device="cpu")
    folder = models.embedded_cache_dir()
    assert not folder.exists() and list(folder.parent.iterdir()) == []


def test_leftovers_of_a_killed_conversion_are_removed(fake_conversion):
    folder = models.embedded_cache_dir()
    folder.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = folder.parent / f"{folder.name}.tmp-{dead.stdout.strip()}-abc"
    leftover.mkdir()
    alive = folder.parent / f"{folder.name}.tmp-{os.getpid()}-xyz"  # a conversion still running: kept
    alive.mkdir()
    models.load_model(device="cpu")
    assert not leftover.exists() and alive.exists()


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="cannot load model .*local folder"):
        models.load_model(str(tmp_path / "no-such-model"), device="cpu")


def test_bad_device_and_dtype_are_clear_errors():
    with pytest.raises(UserError, match="unknown device"):
        models.resolve_device("tpu7")
    with pytest.raises(UserError, match="unknown dtype"):
        models.resolve_dtype("int3", torch.device("cpu"))
    assert models.resolve_dtype("auto", torch.device("cpu")) == torch.float32


def test_local_folder_loads(tiny_model_dir):
    model, tokenizer = models.load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training
    assert len(tokenizer("the edge server").input_ids) > 0


# --- random:SHAPE, the shape stand-ins for timing where the weights are absent ----------------------------
# The published parameter counts of each architecture at its own vocabulary (SmolLM2's is the embedded one).
PUBLISHED_PARAMETERS = {
    "smollm2-135m": (49152, 134_515_008),
    "llama-2-7b": (32000, 6_738_415_616),
    "llama-2-13b": (32000, 13_015_864_320),
    "mistral-7b": (32000, 7_241_732_096),
}


@pytest.mark.parametrize("shape", list(models.RANDOM_SHAPES))
def test_random_shapes_have_the_published_parameter_counts(shape):
    from transformers import AutoModelForCausalLM

    vocab, parameters = PUBLISHED_PARAMETERS[shape]
    with torch.device("meta"):  # no memory: only the shapes
        model = AutoModelForCausalLM.from_config(models.random_config(shape, vocab))
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_a_random_stand_in_is_built_seeded_labelled_and_splittable(fake_conversion, capsys):
    from layersplit import compute

    model, tokenizer = models.load_model("random:smollm2-135m")
    assert "random weights" in capsys.readouterr().err  # its quality figures mean nothing, and it says so
    assert model.config.name_or_path == "random:smollm2-135m"
    dims = compute.model_dims(model.config)
    assert dims == compute.SMOLLM2_135M.__class__(**{**compute.SMOLLM2_135M.__dict__, "vocab_size": len(tokenizer)})
    assert len(models.find_decoder_layers(model)) == 30
    again, _ = models.load_model("random:smollm2-135m")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))  # the same stand-in
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokenizer("the uplink").input_ids])).logits
    assert torch.isfinite(logits).all()
    with pytest.raises(UserError, match="random:llama-2-7b"):
        models.load_model("random:llama-3-405b")


@pytest.mark.real_model
def test_add_noise_runs_on_a_random_stand_in_and_labels_it():
    from conftest import run_script

    out = run_script(
        "add_noise.py",
        "--model",
        "random:smollm2-135m",
        "--max-tokens",
        "64",
        "--context-length",
        "32",
        "--stride",
        "32",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    assert "random weights" in out.stderr and "mean nothing" in out.stderr
    assert json.loads(out.stdout)["model"] == "random:smollm2-135m"
