"""A sweep cell (one split x one channel condition) pooled over its noise draws, with 95% intervals
whose unit is what is independent, and paired comparisons of two splits.

The sweep writes one row per (split, condition, draw): the token-weighted NLL and accuracy over the
cell's windows of text, and the spread over windows (`windows`, `nll_window_sd`,
`accuracy_window_sd`); its windows file (<stem>_windows.csv) holds each (row, window)'s own score.
The draws of one window share its text, so they are not independent samples: the window is the unit.

Pooled value: total NLL / total scored tokens over all windows and draws (exp of it: the perplexity).
Interval (`interval_unit` in the cells file), a Student-t interval around that value:
- "windows": over the W window means (each window's score averaged over its draws), W - 1 degrees
  of freedom: it covers the text's variation and the link's;
- "windows (bound)": several windows but no windows file (a sweep made before it was recorded): the SD
  of the window means is bounded by the mean over draws of each draw's SD over windows (Cauchy-Schwarz:
  a covariance is at most the product of the SDs), so the interval is conservative, never narrower;
- "draws (one window)": a single window of text: over the draws, D - 1 degrees of freedom; it covers
  the link's randomness on that text only, not the text's;
- "none": one sample, no interval.
Windows hold the same number of tokens (one fewer in the first, which has no target for its first
token), so weighting windows equally, as the interval does, differs from the token-weighted mean by a
negligible amount.

Paired comparison (`paired`, `python -m layersplit.cells FILE --compare A,B`): two splits of the same
condition share every window and every draw's masks (common random numbers), so the difference
NLL(A) - NLL(B) is taken per (window, draw), averaged over draws per window, and its t interval is
over windows (over draws where there is one window).

The results file and what a valid row holds (`row_problem`, `read_rows`): every reader of sweep rows
(the sweep when it resumes, --verify, this module's CLI, the surrogate fit, figures.py, claims.py) reads
them through `read_rows` or checks each with `row_problem`, so a row is valid everywhere or nowhere:
numbers where numbers belong, split, draw, protect and token counts whole and >= 0, p and the withheld
share in [0, 1], a finite SNR on a physical link, and scores a model can give: nll finite and >= 0,
ppl >= 1, token_accuracy in [0, 1], spreads and seconds >= 0. A reader refuses an invalid row with
`file:line: what is wrong` (UserError: one line, exit status 2), a file that is not UTF-8 text, one
without the columns it needs and one with a header only; two rows of the same cell and draw are
refused too (they would be pooled twice). The sweep, resuming, recomputes a row whose values are
invalid instead (sweep.ResultsStore). One kind of row is valid and left out of the pooling, as
documented: a draw in which every window's NLL was non-finite (scored_tokens 0, nll nan, at least one
non-finite window); each cell counts such draws in `draws_left_out`, and writing a cell table says
how many on stderr.

Pure Python (csv, math; scipy for the t quantile): figures.py and the surrogate fit both use it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from . import UserError
from .grid import LINK_MODES

CONFIDENCE = 0.95  # level of the intervals
WINDOW_COLUMNS = ("windows", "nll_window_sd", "accuracy_window_sd")  # what the sweep writes for them
WINDOW_SCORES = "window_scores"  # a row's [(window, mean NLL, accuracy)] once attached (attach_windows)
# the windows file: one line per (row, window), keyed like the row (row_key) and the window's index
WINDOW_FILE_COLUMNS = (
    "split",
    "link",
    "snr_db",
    "dropout",
    "withheld",
    "protect",
    "draw",
    "window",
    "nll_sum",
    "correct",
    "tokens",
)
UNITS = ("windows", "windows (bound)", "draws (one window)", "none")  # interval_unit values, as above

# --- the results file: its columns and what a valid row holds --------------------------------------
RUN_COLUMNS = ("model", "dataset", "tokens", "context_length", "stride", "dtype", "seed")  # must match to resume
LINK_COLUMNS = (
    "modulation",
    "fading",
    "nakagami_m",
    "bits_per_element",
    "elements_per_packet",
    "header_bits",
    "bandwidth_hz",
    "block_fading",
)
TEXT_COLUMNS = ("model", "dataset", "dtype", "link", "modulation", "fading", "block_fading")  # the rest hold numbers
COLUMNS = (
    RUN_COLUMNS
    + ("split", "layers_on_ue", "link", "snr_db", "dropout", "withheld", "protect", "draw")
    + LINK_COLUMNS
    + (
        "nll",
        "ppl",
        "token_accuracy",
        "scored_tokens",
        "nonfinite_windows",
        *WINDOW_COLUMNS,
        "ue_compute_s",
        "tx_s",
        "edge_compute_s",
        "total_s",
        "tx_decode_s",
    )
)
INF = math.inf
LOG_FLOAT_MAX = math.log(sys.float_info.max)  # exp beyond it overflows: a perplexity of inf
# column -> (low, high, whole number, may be empty): the range of every number column but the scores
LIMITS = {
    "tokens": (1, INF, True, False),
    "context_length": (1, INF, True, True),
    "stride": (1, INF, True, True),
    "seed": (0, INF, True, True),
    "split": (0, INF, True, False),
    "layers_on_ue": (1, INF, True, True),
    "snr_db": (-INF, INF, False, True),
    "dropout": (0, 1, False, False),
    "withheld": (0, 1, False, True),
    "protect": (0, INF, True, True),
    "draw": (0, INF, True, False),
    "nakagami_m": (0.5, INF, False, True),
    "bits_per_element": (1, INF, True, True),
    "elements_per_packet": (1, INF, True, True),
    "header_bits": (0, INF, True, True),
    "bandwidth_hz": (0, INF, False, True),
    "scored_tokens": (0, INF, True, False),
    "nonfinite_windows": (0, INF, True, True),
    "windows": (0, INF, True, True),
    **{c: (0, INF, False, True) for c in ("ue_compute_s", "tx_s", "edge_compute_s", "total_s", "tx_decode_s")},
}
NAN_ALLOWED = ("nll_window_sd", "accuracy_window_sd")  # one window has no spread
SCORES = ("nll", "ppl", "token_accuracy")  # checked against scored_tokens (row_problem)
# column, what is valid, the test: the scores of a row or a cell where a draw was scored
SCORE_RULES = (
    ("nll", "a finite number >= 0", lambda x: 0 <= x < INF),
    ("ppl", "a number >= 1", lambda x: x >= 1),
    ("token_accuracy", "a share in [0, 1]", lambda x: 0 <= x <= 1),
)
KEY_INTEGERS = ("split", "draw", "protect")  # what row_key needs whole


def _number(value) -> float | None:
    """A field as a float; None when it is empty; ValueError when it is not a number."""
    if _blank(value):
        return None
    return float(value)


def row_shape_problem(row: dict) -> str | None:
    """What stops a sweep row from being read at all (fields missing or extra, text where a number
    belongs, an unknown link, a split or draw that is not whole), or None. Checks the columns it has."""
    if None in row or None in row.values():
        fields = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
        return f"{fields} fields where the header has {len(row) - (None in row)}"
    if "link" in row and row["link"] not in LINK_MODES:
        return f"link is {row['link']!r}, not one of {', '.join(LINK_MODES)}"
    for column, value in row.items():
        if column in TEXT_COLUMNS or column not in LIMITS and column not in SCORES + NAN_ALLOWED:
            continue
        try:
            number = _number(value)
        except (TypeError, ValueError):
            return f"{column} is {value!r}, not a number"
        if column in KEY_INTEGERS and number is not None:
            try:  # row_key reads these with int(): "1.0" is not one
                int(value)
            except (TypeError, ValueError):
                return f"{column} is {value!r}, not a whole number"
    return None


def row_problem(row: dict) -> str | None:
    """What makes a sweep row invalid (the rule in the module docstring), or None. `row`: a row as csv
    reads it (strings; "" for an empty field); only the columns it has are checked."""
    problem = row_shape_problem(row)
    if problem:
        return problem
    n = {c: _number(v) for c, v in row.items() if c in LIMITS or c in SCORES or c in NAN_ALLOWED}
    for column, (low, high, whole, may_be_empty) in LIMITS.items():
        if column not in n:
            continue
        x = n[column]
        if x is None:
            if may_be_empty and not (column == "snr_db" and row.get("link", "dropout") != "dropout"):
                continue
            needs = "a physical link's SNR" if column == "snr_db" else "a number"
            return f"{column} is empty, where {needs} belongs"
        if (
            not low <= x <= high
            or (whole and not (math.isfinite(x) and x == int(x)))  # NaN fails the range
            or (column == "snr_db" and math.isinf(x))
        ):
            valid = (
                "a finite number"
                if column == "snr_db"
                else f"{'a whole number' if whole else 'a number'} "
                + (f">= {low:g}" if high == INF else f"in [{low:g}, {high:g}]")
            )
            return f"{column} is {row[column]}, not {valid}"
    for column in NAN_ALLOWED:
        if column in n and n[column] is not None and not (math.isnan(n[column]) or 0 <= n[column] < INF):
            return f"{column} is {row[column]}, not a number >= 0 (or nan: one window)"
    if "scored_tokens" in n and n["scored_tokens"] == 0:  # the documented skip: every window non-finite
        for column in SCORES:
            if column in n and n[column] is not None and not math.isnan(n[column]):
                return f"{column} is {row[column]} with scored_tokens 0 (no window scored: it must be nan)"
        if n.get("nonfinite_windows") == 0:
            return "scored_tokens is 0 and nonfinite_windows 0: no window was scored, none was non-finite"
        return None
    for column, valid, ok in SCORE_RULES:
        if column in n and (n[column] is None or not ok(n[column])):
            return f"{column} is {row[column] if row[column] != '' else 'empty'}, not {valid}"
    return None


def is_left_out(row: dict) -> bool:
    """A valid row that pooling leaves out (the documented skip): no window of its draw was scored."""
    return _float(row["scored_tokens"]) == 0 or not math.isfinite(_float(row["nll"]))


def _key_or_none(row: dict) -> tuple | None:
    try:
        return row_key(row)
    except (KeyError, ValueError, TypeError):  # a reader of a column subset: no key to compare
        return None


def iter_rows(path: str | Path, needed=COLUMNS, kind: str = "sweep results file"):
    """(line, row) of a CSV whose header has the columns `needed`, rows as csv reads them; UserError
    for a file that is not UTF-8 text, not CSV or without those columns."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file" + (" (a folder)" if path.is_dir() else ""))
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        try:
            fields = reader.fieldnames or []
            missing = [c for c in needed if c not in fields]
            if missing:
                shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
                raise UserError(f"{path} is not a {kind}: no column(s) {shown}")
            for row in reader:
                yield reader.line_num, row
        except UnicodeDecodeError:
            raise UserError(f"{path} is not a {kind}: not UTF-8 text") from None
        except csv.Error as e:
            raise UserError(f"{path}:{reader.line_num}: not CSV ({e})") from None


class RowCheck:
    """row_problem of each row of one file, and each (split, condition, draw) once: a second row of one
    would be pooled twice. Call it with each row and its line, in order."""

    def __init__(self):
        self.seen: dict[tuple, int] = {}

    def __call__(self, row: dict, line: int) -> str | None:
        problem = row_problem(row)
        if problem is None and (key := _key_or_none(row)) is not None:
            if key in self.seen:
                return f"the same split, condition and draw as line {self.seen[key]} (it would be pooled twice)"
            self.seen[key] = line
        return problem


def read_rows(path: str | Path, needed=COLUMNS, kind: str = "sweep results file") -> list[dict]:
    """The rows of a sweep results file, each valid (RowCheck); UserError naming the file and line of the
    first that is not, or the file (iter_rows; a header without rows)."""
    rows, check = [], RowCheck()
    for line, row in iter_rows(path, needed, kind):
        if problem := check(row, line):
            raise UserError(f"{path}:{line}: {problem}")
        rows.append(row)
    if not rows:
        raise UserError(f"{path} has a header and no rows: nothing to read (run its sweep first)")
    return rows


class WindowsFileError(ValueError):
    """A windows file that cannot be read (the message names the file and line)."""


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _window_count(row: dict) -> int:
    """The row's number of scored windows (1 where the column is absent or empty, as in older files)."""
    count = _float(row.get("windows", 1))
    return int(count) if math.isfinite(count) and count >= 1 else 1


def _blank(value) -> bool:
    """An empty field: "" or None as csv reads it, NaN as pandas does."""
    return value in ("", None) or (isinstance(value, float) and math.isnan(value))


def row_key(row: dict) -> tuple:
    """What identifies a sweep row: physical links by SNR and withheld share, the direct link by p, and
    the protected elements per token (floats as written in the CSV; strings, or numbers as pandas reads them)."""
    snr = "" if _blank(row["snr_db"]) else repr(float(row["snr_db"]))
    p = repr(float(row["dropout"])) if row["link"] == "dropout" else ""
    withheld, protect = row.get("withheld"), row.get("protect")  # absent in older files: none
    return (
        int(row["split"]),
        row["link"],
        snr,
        p,
        repr(float(0.0 if _blank(withheld) else withheld)),
        int(0 if _blank(protect) else protect),
        int(row["draw"]),
    )


def windows_path(results: str | Path) -> Path:
    """Where the per-window scores of a sweep results file go: <stem>_windows.csv beside it."""
    results = Path(results)
    return results.with_name(f"{results.stem}_windows.csv")


def _windows_of(path: Path, reader: csv.DictReader) -> dict[tuple, dict[int, tuple[float, float]]]:
    """read_windows' rows: {row_key: {window: (mean NLL, accuracy)}}, each line checked."""
    if list(reader.fieldnames or []) != list(WINDOW_FILE_COLUMNS):
        raise WindowsFileError(f"{path} is not a sweep windows file (other columns): move it away")
    found: dict[tuple, dict[int, tuple[float, float]]] = {}
    for row in reader:
        line = reader.line_num
        try:
            tokens, window, nll, correct = (
                int(row["tokens"]),
                int(row["window"]),
                float(row["nll_sum"]),
                float(row["correct"]),
            )
            key = row_key(row)
            # a window's NLL may be non-finite (the sweep records it; pooling leaves it out), never negative
            valid = tokens >= 0 and window >= 0 and not nll < 0 and 0 <= correct <= tokens
        except (ValueError, TypeError, KeyError):
            valid = False
        if not valid:
            raise WindowsFileError(
                f"{path}:{line}: a damaged row (tokens and window whole and >= 0, nll_sum "
                "not negative, correct in 0..tokens): delete that line (the sweep redoes its "
                "split when the results file is rerun without that split's rows)"
            )
        scores = (nll / tokens, correct / tokens) if tokens > 0 else (math.nan, math.nan)
        found.setdefault(key, {})[window] = scores
    return found


def read_windows(path: str | Path) -> dict[tuple, list[tuple[int, float, float]]]:
    """{row_key: [(window, mean NLL, accuracy), ...] in window order} from a windows file ({} when there
    is none: a sweep made before windows were recorded). A window written twice (a split redone after a
    kill between the two files) counts once: the last line wins; both hold the same numbers."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            found = _windows_of(path, csv.DictReader(f))
    except UnicodeDecodeError:
        raise WindowsFileError(f"{path} is not a sweep windows file (not UTF-8 text): move it away") from None
    except csv.Error as e:
        raise WindowsFileError(f"{path} is not a sweep windows file (not CSV: {e}): move it away") from None
    return {key: [(w, *scores) for w, scores in sorted(by_window.items())] for key, by_window in found.items()}


def attach_windows(rows: list[dict], windows: dict[tuple, list]) -> list[dict]:
    """The rows with their window scores (WINDOW_SCORES) where the windows file has them."""
    out = []
    for row in rows:
        try:
            key = row_key(row)
        except (ValueError, TypeError, KeyError):  # a damaged row: left to the reader's own check, which names it
            key = None
        out.append({**row, WINDOW_SCORES: windows[key]} if key in windows else row)
    return out


def _t(confidence: float, df: int) -> float:
    # scipy here, not at import: the scripts import this module before parsing their options
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, df))


def _mean_sd(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _window_table(rows: list[dict], column: int) -> dict[int, list[float]] | None:
    """{window: [finite values over draws]} of one score (1: NLL, 2: accuracy), or None when a row with
    several windows has no window scores. A row of one window is its own window 0."""
    table: dict[int, list[float]] = {}
    for row in rows:
        scores = row.get(WINDOW_SCORES)
        if scores is None:
            if _window_count(row) != 1:
                return None
            scores = [(0, _float(row["nll"]), _float(row["token_accuracy"]))]
        for score in scores:
            if math.isfinite(score[1]):
                table.setdefault(int(score[0]), []).append(score[column])
    return table


def _half_width(rows: list[dict], column: int, sd_column: str, confidence: float) -> tuple[float, str]:
    """(half-width, unit) of the interval of one score (1: NLL, 2: accuracy) of a cell's rows."""
    table = _window_table(rows, column)
    if table is None:  # several windows, no windows file: the conservative bound on the SD of window means
        windows = min(_window_count(r) for r in rows)
        sds = [_float(r.get(sd_column)) for r in rows]
        if windows < 2 or not all(math.isfinite(s) for s in sds):
            return math.nan, "none"
        return _t(confidence, windows - 1) * (sum(sds) / len(sds)) / math.sqrt(windows), "windows (bound)"
    if len(table) >= 2:
        means = [sum(v) / len(v) for v in table.values()]
        return _t(confidence, len(means) - 1) * _mean_sd(means)[1] / math.sqrt(len(means)), "windows"
    draws = next(iter(table.values()), [])
    if len(draws) >= 2:
        return _t(confidence, len(draws) - 1) * _mean_sd(draws)[1] / math.sqrt(len(draws)), "draws (one window)"
    return math.nan, "none"


def _exp(x: float) -> float:
    """exp, inf beyond the largest float (a perplexity that overflowed) instead of an OverflowError."""
    return math.exp(x) if x < LOG_FLOAT_MAX else math.inf


def pool(rows: list[dict], confidence: float = CONFIDENCE) -> dict:
    """Pool the draws of one cell (rows: dicts with nll, token_accuracy, scored_tokens and the
    WINDOW_COLUMNS, strings or numbers, and WINDOW_SCORES where attached). Returns draws, samples,
    nll, nll_ci95 (half-width), ppl, ppl_low, ppl_high, token_accuracy, accuracy_ci95 and
    interval_unit (UNITS); NaN where no finite window was scored; draws_left_out: the draws with no
    window scored (the documented skip, is_left_out), which the rest does not count."""
    left_out = sum(map(is_left_out, rows))
    rows = [r for r in rows if not is_left_out(r)]
    if not rows:
        nan = float("nan")
        return {
            "draws": 0,
            "draws_left_out": left_out,
            "samples": 0,
            "nll": nan,
            "nll_ci95": nan,
            "ppl": nan,
            "ppl_low": nan,
            "ppl_high": nan,
            "token_accuracy": nan,
            "accuracy_ci95": nan,
            "interval_unit": "none",
        }
    tokens = [_float(r["scored_tokens"]) for r in rows]
    counts = [_window_count(r) for r in rows]
    total = sum(tokens)
    nll = sum(t * _float(r["nll"]) for t, r in zip(tokens, rows, strict=True)) / total
    accuracy = sum(t * _float(r["token_accuracy"]) for t, r in zip(tokens, rows, strict=True)) / total
    nll_half, unit = _half_width(rows, 1, "nll_window_sd", confidence)
    accuracy_half, _ = _half_width(rows, 2, "accuracy_window_sd", confidence)
    return {
        "draws": len(rows),
        "draws_left_out": left_out,
        "samples": sum(counts),
        "nll": nll,
        "nll_ci95": nll_half,
        "ppl": _exp(nll),
        "ppl_low": _exp(nll - nll_half),
        "ppl_high": _exp(nll + nll_half),
        "token_accuracy": accuracy,
        "accuracy_ci95": accuracy_half,
        "interval_unit": unit,
    }


def paired(rows_a: list[dict], rows_b: list[dict], confidence: float = CONFIDENCE) -> dict:
    """NLL(A) - NLL(B) of two cells of one condition, paired on the same windows and draws: the mean over
    windows of each window's difference averaged over its draws, with its t interval over windows (over
    draws where there is one window). Rows need their window scores where they hold several windows."""

    def scores(rows):
        found = {}
        for row in rows:
            windows = row.get(WINDOW_SCORES)
            if windows is None:
                if _window_count(row) != 1:
                    raise ValueError("a paired comparison over several windows needs the sweep's windows file")
                windows = [(0, _float(row["nll"]), _float(row["token_accuracy"]))]
            found.update({(int(row["draw"]), int(w)): nll for w, nll, _ in windows if math.isfinite(nll)})
        return found

    a, b = scores(rows_a), scores(rows_b)
    by_window: dict[int, list[float]] = {}
    for draw, window in sorted(a.keys() & b.keys()):
        by_window.setdefault(window, []).append(a[draw, window] - b[draw, window])
    if len(by_window) >= 2:
        values, unit = [sum(v) / len(v) for v in by_window.values()], "windows"
    else:
        values, unit = next(iter(by_window.values()), []), "draws (one window)"
    pairs = sum(len(v) for v in by_window.values())
    if len(values) < 2:
        mean = values[0] if values else math.nan
        return {"difference": mean, "ci95": math.nan, "pairs": pairs, "units": len(values), "interval_unit": "none"}
    mean, sd = _mean_sd(values)
    half = _t(confidence, len(values) - 1) * sd / math.sqrt(len(values))
    return {
        "difference": mean,
        "ci95": half,
        "pairs": pairs,
        "units": len(values),
        "interval_unit": unit,
        "significant": abs(mean) > half,
    }


CELL_KEYS = ("split", "layers_on_ue", "link", "snr_db", "dropout", "withheld", "protect")  # what identifies a cell
CELL_COLUMNS = CELL_KEYS + (
    "draws",
    "draws_left_out",
    "samples",
    "nll",
    "nll_ci95",
    "ppl",
    "ppl_low",
    "ppl_high",
    "token_accuracy",
    "accuracy_ci95",
    "total_s",
    "interval_unit",
)


def cell_table(rows: list[dict], windows: dict | None = None) -> list[dict]:
    """The rows pooled over draws into cells (cells.pool, with the window scores of `windows`:
    {row_key: [(window, nll, accuracy)]}), in the order of first appearance."""
    groups: dict[tuple, list[dict]] = {}
    for row in attach_windows(rows, windows or {}):
        groups.setdefault(tuple(str(row[k]) for k in CELL_KEYS), []).append(row)
    return [
        {**dict(zip(CELL_KEYS, key)), **pool(group), "total_s": group[0]["total_s"]} for key, group in groups.items()
    ]


def cells_path(output: str | Path) -> Path:
    """Where the cell table of a sweep results file goes: <stem>_cells.csv beside it."""
    output = Path(output)
    return output.with_name(f"{output.stem}_cells.csv")


def write_cells(rows: list[dict], path: str | Path, windows: dict | None = None) -> list[dict]:
    """The cell table as CSV, written beside and renamed (it is derived from the rows, which are the
    record); the draws left out of their cells are counted on stderr. Returns the table."""
    import io

    from .cli import write_text_atomic

    table = cell_table(rows, windows)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CELL_COLUMNS)
    writer.writeheader()
    writer.writerows(table)
    write_text_atomic(path, text.getvalue())
    report_left_out(table, path)
    return table


def report_left_out(table: list[dict], where) -> None:
    """Say on stderr how many draws of a cell table scored no window (left out of their cells)."""
    left_out = sum(int(c["draws_left_out"]) for c in table)
    if left_out:
        cells = sum(int(c["draws_left_out"]) > 0 for c in table)
        print(
            f"[layersplit] {where}: {left_out} draw(s) in {cells} cell(s) scored no finite window and are left out "
            "of their cells (column draws_left_out)",
            file=sys.stderr,
        )


def cell_problem(row: dict) -> str | None:
    """What makes a row of a cell table (CELL_COLUMNS; the columns it has) invalid, or None: its cell
    as row_problem checks a row's, whole counts, and, where a draw was pooled, nll finite >= 0, ppl >= 1,
    token_accuracy in [0, 1], interval half-widths >= 0 or nan, a known interval_unit."""
    problem = row_problem({k: row[k] for k in (*CELL_KEYS, "total_s") if k in row})
    if problem:
        return problem
    try:
        counts = {c: _number(row[c]) for c in ("draws", "draws_left_out", "samples") if c in row}
        scores = {
            c: _number(row[c])
            for c in ("nll", "nll_ci95", "ppl", "ppl_low", "ppl_high", "token_accuracy", "accuracy_ci95")
            if c in row
        }
    except (TypeError, ValueError):
        return "a number column holds text"
    for column, x in counts.items():
        if x is None or not (math.isfinite(x) and x >= 0 and x == int(x)):
            return f"{column} is {row[column] or 'empty'}, not a whole number >= 0"
    if "interval_unit" in row and row["interval_unit"] not in UNITS:
        return f"interval_unit is {row['interval_unit']!r}, not one of {', '.join(UNITS)}"
    if not counts.get("draws", 1):  # no draw pooled: nothing to check
        return None
    for column, valid, ok in (
        *SCORE_RULES,
        ("nll_ci95", "a number >= 0 or nan", lambda x: math.isnan(x) or x >= 0),
        ("accuracy_ci95", "a number >= 0 or nan", lambda x: math.isnan(x) or x >= 0),
        ("ppl_low", "a number > 0 or nan", lambda x: math.isnan(x) or x > 0),
        ("ppl_high", "a number > 0 or nan", lambda x: math.isnan(x) or x > 0),
    ):
        if column in scores and (scores[column] is None or not ok(scores[column])):
            return f"{column} is {row[column] or 'empty'}, not {valid}"
    return None


def read_cells(path: str | Path, needed=CELL_COLUMNS) -> list[dict]:
    """The rows of a cell table (write_cells), each valid (cell_problem); UserError naming the file and
    line of the first that is not, or the file."""
    rows = []
    for line, row in iter_rows(path, needed, "sweep cell table"):
        if problem := cell_problem(row):
            raise UserError(f"{path}:{line}: {problem}")
        rows.append(row)
    if not rows:
        raise UserError(f"{path} has a header and no rows: nothing to read (rerun its sweep)")
    return rows


def condition_key(row: dict) -> tuple:
    """The channel condition of a row (its row_key without split and draw)."""
    return row_key(row)[1:6]


def condition_label(key: tuple) -> str:
    link, snr, p, withheld, protect = key
    parts = [f"p = {float(p):g}" if link == "dropout" else f"{link} {float(snr):g} dB"]
    if float(withheld):
        parts.append(f"withheld {float(withheld):g}")
    if protect:
        parts.append(f"K = {protect}")
    return ", ".join(parts)


def compare_splits(rows: list[dict], a: int, b: int, confidence: float = CONFIDENCE) -> list[dict]:
    """`paired` for splits a and b under every condition both have (rows with window scores attached)."""
    groups: dict[tuple, dict[int, list[dict]]] = {}
    for row in rows:
        if int(row["split"]) in (a, b):
            groups.setdefault(condition_key(row), {}).setdefault(int(row["split"]), []).append(row)
    out = []
    for key, by_split in groups.items():
        if a in by_split and b in by_split:
            out.append(
                {
                    "condition": condition_label(key),
                    "split_a": a,
                    "split_b": b,
                    **paired(by_split[a], by_split[b], confidence),
                }
            )
    return out


def read_sweep(path: str | Path, needed=COLUMNS) -> list[dict]:
    """A sweep results file's rows, checked (read_rows), with their window scores attached."""
    path = Path(path)
    rows = read_rows(path, needed)
    try:
        return attach_windows(rows, read_windows(windows_path(path)))
    except WindowsFileError as e:
        raise UserError(str(e)) from None


CLI_COLUMNS = (*CELL_KEYS, "draw", "nll", "token_accuracy", "scored_tokens", "total_s")  # what main reads


def main(argv=None) -> int:
    from .cli import writable_file, write_text_atomic

    parser = argparse.ArgumentParser(
        prog="python -m layersplit.cells",
        description=(
            "A sweep results file's cells: --compare A,B gives NLL(A) - NLL(B) paired on the same windows and draws, "
            "with its 95%% t interval over windows; --write-cells rewrites its <stem>_cells.csv (the intervals from "
            "the windows file beside it)."
        ),
    )
    parser.add_argument("results", type=Path, help="sweep results CSV (add_noise.py --sweep --output)")
    parser.add_argument("--compare", metavar="A,B", help="two splits (0-based, as in the file)")
    parser.add_argument("--json", type=writable_file, help="with --compare: also write the comparison here")
    parser.add_argument("--write-cells", action="store_true", help="rewrite the cell table beside the results")
    args = parser.parse_args(argv)
    if not args.compare and not args.write_cells:
        parser.error("give --compare A,B or --write-cells")
    if args.compare:
        try:
            a, b = (int(s) for s in args.compare.split(","))
        except ValueError:
            parser.error(f"--compare {args.compare!r}: give two splits, like 1,10")
    if not args.results.is_file():
        parser.error(f"{args.results}: no such file")
    try:  # read_rows' messages name the file (and line); compare_splits' do not
        rows = read_sweep(args.results, CLI_COLUMNS)
        found = compare_splits(rows, a, b) if args.compare else None
    except UserError as e:
        parser.error(str(e))
    except ValueError as e:
        parser.error(f"{args.results}: {e}")
    if args.write_cells:
        table = write_cells(rows, cells_path(args.results))
        print(f"{len(table)} cells with 95% intervals in {cells_path(args.results)}")
    if found is None:
        return 0
    if not found:
        parser.error(f"{args.results} has no condition with both split {a} and split {b}")
    print(f"NLL(split {a}) - NLL(split {b}), paired on the same windows and draws; 95% t interval over the unit")
    for r in found:
        mark = "*" if r.get("significant") else " "
        print(
            f"  {r['condition']:28s} {r['difference']:+8.4f} +- {r['ci95']:.4f} {mark} "
            f"({r['pairs']} pairs, {r['units']} {r['interval_unit']})"
        )
    print("  * the interval excludes 0")
    if args.json:
        write_text_atomic(args.json, json.dumps({"results": str(args.results), "comparisons": found}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
