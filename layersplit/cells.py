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

The files' columns, what a valid row holds and their readers are schema.py's (`read_sweep`,
`read_cells`): this module pools rows read there. A draw in which every window's NLL was non-finite
(scored_tokens 0, nll nan) is valid and left out of the pooling; each cell counts such draws in
`draws_left_out`, and writing a cell table says how many on stderr.

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
from .schema import CELL_COLUMNS, CELL_KEYS, WINDOW_SCORES, attach_windows, cells_path, read_sweep, row_key
from .schema import windows_path  # noqa: F401 (add_noise.py imports it from here)

CONFIDENCE = 0.95  # level of the intervals
LOG_FLOAT_MAX = math.log(sys.float_info.max)  # exp beyond it overflows: a perplexity of inf


def is_left_out(row: dict) -> bool:
    """A valid row that pooling leaves out (the documented skip): no window of its draw was scored."""
    return _float(row["scored_tokens"]) == 0 or not math.isfinite(_float(row["nll"]))


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _window_count(row: dict) -> int:
    """The row's number of scored windows (1 where the column is absent or empty, as in older files)."""
    count = _float(row.get("windows", 1))
    return int(count) if math.isfinite(count) and count >= 1 else 1


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
    """exp, inf beyond the largest float (a perplexity that overflowed) instead of an OverflowError; NaN
    stays NaN (a one-sample cell has no interval, not an infinite one)."""
    return math.inf if x >= LOG_FLOAT_MAX else math.exp(x)


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


def cell_table(rows: list[dict], windows: dict | None = None) -> list[dict]:
    """The rows pooled over draws into cells (cells.pool, with the window scores of `windows`:
    {row_key: [(window, nll, accuracy)]}), in the order of first appearance."""
    groups: dict[tuple, list[dict]] = {}
    for row in attach_windows(rows, windows or {}):
        groups.setdefault(tuple(str(row[k]) for k in CELL_KEYS), []).append(row)
    return [
        {**dict(zip(CELL_KEYS, key)), **pool(group), "total_s": group[0]["total_s"]} for key, group in groups.items()
    ]


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
