"""What only the real embedded SmolLM2-135M can show: sane perplexity, and damage that grows with p.

The first test in a fresh environment converts the model into the user cache (about 30 s).
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ROOT, run_script
from layersplit.data import load_text, tokenize
from layersplit.link import SplitLink
from layersplit.models import find_decoder_layers, load_model
from layersplit.perplexity import evaluate

pytestmark = pytest.mark.real_model
TOKENS = 1024


@pytest.fixture(scope="module")
def smollm2():
    model, tokenizer = load_model(device="cpu", dtype="float32")
    return model, tokenizer, tokenize(tokenizer, load_text("wiki"), TOKENS)


def test_it_is_the_expected_real_llama(smollm2):
    model, tokenizer, _ = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert len(find_decoder_layers(model)) == 30 and model.config.hidden_size == 576
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6


def test_clean_perplexity_is_sane_and_grows_with_p(smollm2):
    model, _, ids = smollm2
    link = SplitLink(model, split=4, seed=0)
    ppl, acc = [], []
    for p in (0.0, 0.1, 0.3):
        link.set_dropout(p)
        link.reseed(0)
        result = evaluate(model, ids, context_length=512, stride=512)
        ppl.append(result.ppl)
        acc.append(result.token_accuracy)
    link.detach()
    assert 8 < ppl[0] < 30, ppl  # a real small LM on Wikipedia text (about 15-16 for SmolLM2-135M)
    assert 0.3 < acc[0] < 0.6, acc
    assert ppl[0] < ppl[1] < ppl[2], ppl
    assert acc[0] > acc[1] > acc[2], acc


def test_clean_generation_matches_the_plain_model(smollm2):
    model, tokenizer, _ = smollm2
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        plain = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        link = SplitLink(model, split=10, dropout=0.0)
        through_link = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        link.detach()
    assert torch.equal(plain, through_link)
    assert "Paris" in tokenizer.decode(plain[0])


def test_cli_on_the_embedded_defaults():
    r = run_script(
        "add_noise.py",
        "--max-tokens",
        "512",
        "--context-length",
        "256",
        "--stride",
        "256",
        "--split",
        "4",
        "--dropout",
        "0.2",
        "--json",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["model"] == "smollm2-135m" and report["dataset"] == "wiki" and report["tokens"] == 512
    assert report["ppl"] > report["ppl_clean"] > 1


def test_sweep_perplexity_grows_with_p_at_a_fixed_split(tmp_path):
    output = tmp_path / "sweep.csv"
    r = run_script(
        "add_noise.py",
        "--sweep",
        "--splits",
        "4,20",
        "--dropouts",
        "0.05,0.2",
        "--draws",
        "2",
        "--max-tokens",
        "256",
        "--output",
        str(output),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    import pandas as pd

    rows = pd.read_csv(output)
    assert len(rows) == 2 * (1 + 2 * 2) and (rows["model"] == "smollm2-135m").all()
    for split in (4, 20):
        ppl = rows[rows["split"] == split].groupby("dropout")["ppl"].mean()
        assert ppl[0.0] < ppl[0.05] < ppl[0.2], ppl


def test_the_uncoded_pages_console_example_is_what_the_command_prints():
    """docs/uncoded-link.md shows a run of add_noise.py: each line it shows begins a line the command prints (the
    printed rows also carry their seconds, which the page leaves out)."""
    page = (ROOT / "docs" / "uncoded-link.md").read_text()
    block = page.split("```\n$ python ", 1)[1].split("\n```", 1)[0].splitlines()
    command, shown = block[0].split(), block[1:]
    assert command[0] == "add_noise.py" and len(shown) >= 5
    r = run_script(*command, "--no-progress")
    assert r.returncode == 0, r.stderr
    printed = r.stdout.splitlines()
    for line in shown:
        assert any(p.startswith(line) for p in printed), (line, printed)
