"""Evaluation text: the embedded Wikipedia split, local files, and clear errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import make_tokenizer
from layersplit import UserError
from layersplit.data import embedded_documents, load_text, tokenize


def test_embedded_wikipedia_split_is_stable_and_disjoint():
    test, train = embedded_documents("test"), embedded_documents("train")
    assert 3000 < len(test) < 3700 and len(train) > 6000  # crc32(title) % 3 == 0: about a third
    assert not set(test) & set(train)
    assert embedded_documents("test") == test  # the same in every process and run
    assert load_text("wiki").startswith(test[0])


def test_local_files(tmp_path):
    (tmp_path / "a.txt").write_text("plain text")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    pd.DataFrame({"text": ["first", "second"]}).to_parquet(tmp_path / "a.parquet")
    assert load_text(str(tmp_path / "a.txt")) == "plain text"
    assert load_text(str(tmp_path / "a.jsonl")) == "one\n\ntwo"
    assert load_text(str(tmp_path / "a.parquet")) == "first\n\nsecond"


def test_bad_datasets_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'nope'.*'wiki'"):
        load_text("nope")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(UserError, match="holds no text"):
        load_text(str(tmp_path / "empty.txt"))
    (tmp_path / "bad.jsonl").write_text('{"title": "x"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: .*'text' field"):
        load_text(str(tmp_path / "bad.jsonl"))
    pd.DataFrame({"body": ["x"]}).to_parquet(tmp_path / "b.parquet")
    with pytest.raises(UserError, match="no 'text' column"):
        load_text(str(tmp_path / "b.parquet"))
    with pytest.raises(UserError, match="unknown dataset part"):
        load_text("wiki", part="validation")


def test_tokenize_with_a_budget_is_a_prefix_of_the_full_tokenisation():
    tokenizer = make_tokenizer()
    text = load_text("wiki")[:20000]
    full = tokenize(tokenizer, text)
    for budget in (10, 500, len(full) + 100):
        assert tokenize(tokenizer, text, budget).tolist() == full[:budget].tolist()
    with pytest.raises(UserError, match="fewer than 2 tokens"):
        tokenize(tokenizer, "a")
