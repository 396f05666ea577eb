"""Unit tests of layersplit/schema.py: the sweep files' columns, validation, readers and row predicates."""

from __future__ import annotations

import csv
import math

import pytest

from conftest import ROOT
from layersplit import UserError, cells, schema, sweep_store

with open(ROOT / "results" / "sweep_smollm2-135m.csv", newline="") as f:
    GOOD = list(csv.DictReader(f))[:2]  # two valid rows (different draws) of a committed sweep


def write(path, rows, columns=schema.COLUMNS):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_the_committed_sweep_and_its_cells_are_valid():
    rows = schema.read_rows(ROOT / "results" / "sweep_smollm2-135m.csv")
    assert rows and all(schema.row_problem(r) is None for r in rows)
    cells_file = schema.cells_path(ROOT / "results" / "sweep_smollm2-135m.csv")
    table = schema.read_cells(cells_file, ("split", "link", "dropout", "ppl", "ppl_low"))  # older: no draws_left_out
    assert table and all(schema.cell_problem(r) is None for r in table)


def test_a_good_file_reads_with_its_rows_as_written(tmp_path):
    path = write(tmp_path / "s.csv", GOOD)
    assert schema.read_rows(path) == GOOD
    assert [r["nll"] for r in schema.read_sweep(path)] == [r["nll"] for r in GOOD]


def test_a_missing_column_is_refused_in_one_line_naming_it(tmp_path):
    path = write(tmp_path / "s.csv", GOOD, [c for c in schema.COLUMNS if c != "token_accuracy"])
    with pytest.raises(UserError) as e:
        schema.read_rows(path)
    assert str(e.value) == f"{path} is not a sweep results file: no column(s) token_accuracy"


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("nll", "fast", "nll is 'fast', not a number"),
        ("split", "1.5", "split is '1.5', not a whole number"),
        ("token_accuracy", "1.5", "token_accuracy is 1.5, not a share in [0, 1]"),
        ("link", "wifi", "link is 'wifi', not one of"),
    ],
)
def test_a_bad_value_is_refused_in_one_line_naming_file_line_and_column(tmp_path, column, value, message):
    path = write(tmp_path / "s.csv", [GOOD[0], {**GOOD[1], column: value}])
    with pytest.raises(UserError) as e:
        schema.read_rows(path)
    assert str(e.value).startswith(f"{path}:3: {message}") and "\n" not in str(e.value)


def test_a_row_given_twice_is_refused(tmp_path):
    path = write(tmp_path / "s.csv", [GOOD[0], GOOD[0]])
    with pytest.raises(UserError, match=f"{path}:3: the same split, condition and draw as line 2"):
        schema.read_rows(path)


def test_a_header_without_rows_is_refused(tmp_path):
    with pytest.raises(UserError, match="has a header and no rows"):
        schema.read_rows(write(tmp_path / "s.csv", []))


def test_a_cell_table_with_an_impossible_value_is_refused(tmp_path):
    table = cells.cell_table(GOOD)
    path = write(tmp_path / "c.csv", [{**table[0], "ppl": "0.5"}], schema.CELL_COLUMNS)
    with pytest.raises(UserError, match=f"{path}:2: ppl is 0.5, not a number >= 1"):
        schema.read_cells(path)


def test_the_store_and_verify_use_the_schemas_columns(tmp_path):
    sweep_store.ResultsStore(tmp_path / "r.csv", {})  # a new results file: the schema's header
    assert (tmp_path / "r.csv").read_text().splitlines() == [",".join(schema.COLUMNS)]
    assert schema.WINDOW_FILE_COLUMNS[: len(schema.WINDOW_KEYS)] == schema.WINDOW_KEYS
    assert set(schema.CELL_KEYS) <= set(schema.COLUMNS)


def test_sweep_columns_types_and_defaults_for_older_files():
    required, optional = schema.sweep_columns("split", "link", "protect")
    assert required == {"split": int, "link": str, "protect": int, "nll": float, "scored_tokens": float}
    assert optional["withheld"] == (float, 0.0) and "protect" not in optional
    assert optional["nll_window_sd"][0]("") != optional["nll_window_sd"][0]("")  # nan: no spread


@pytest.mark.parametrize(
    "row, original, physical, clean, unprotected, all_sent",
    [
        ({"link": "dropout", "dropout": "0", "protect": "", "withheld": ""}, True, False, True, True, True),
        ({"link": "dropout", "dropout": 0.1, "protect": 0, "withheld": 0.0}, True, False, False, True, True),
        ({"link": "erasure", "dropout": "0.2", "protect": "4", "withheld": "0.5"}, False, True, False, False, False),
        ({"link": "nr", "dropout": "0"}, False, True, False, True, True),  # a file made before protect, withheld
    ],
)
def test_the_row_predicates_read_text_and_typed_rows(row, original, physical, clean, unprotected, all_sent):
    assert schema.is_original_link(row) is original
    assert schema.is_physical(row) is physical
    assert schema.is_clean(row) is clean
    assert schema.is_unprotected(row) is unprotected
    assert schema.withholds_nothing(row) is all_sent


def test_the_predicates_select_rows_of_a_frame():
    import pandas as pd

    frame = pd.DataFrame({"link": ["dropout", "erasure", "erasure"], "protect": [0, math.nan, 4]})
    assert list(schema.is_original_link(frame)) == [True, False, False]
    assert list(schema.is_unprotected(frame)) == [True, True, False]
