"""The sweep's files, their columns, types and what a valid row holds, and their readers: the one
place every reader of sweep rows goes through (the sweep's store when it resumes, --verify, the cells
CLI, the surrogate fit, figures.py, claims.py), so a file is read the same way everywhere.

Three files per sweep (add_noise.py --sweep --output <stem>.csv):
- the results file (COLUMNS): one row per (split, condition, draw), appended by the sweep;
- the windows file (WINDOW_FILE_COLUMNS, <stem>_windows.csv beside it): each (row, window)'s own score;
- the cell table (CELL_COLUMNS, <stem>_cells.csv beside it): the rows pooled over draws (cells.py).

What a valid row holds (`row_problem`, `read_rows`), so that a row is valid everywhere or nowhere:
numbers where numbers belong, split, draw, protect and token counts whole and >= 0, p and the withheld
share in [0, 1], a finite SNR on a physical link, and scores a model can give: nll finite and >= 0,
ppl >= 1, token_accuracy in [0, 1], spreads and seconds >= 0. A reader refuses an invalid row with
`file:line: what is wrong` (UserError: one line, exit status 2), a file that is not UTF-8 text, one
without the columns it needs and one with a header only; two rows of the same cell and draw are
refused too (they would be pooled twice). The sweep, resuming, recomputes a row whose values are
invalid instead (sweep_store.ResultsStore). One kind of row is valid and left out of the pooling, as
documented: a draw in which every window's NLL was non-finite (scored_tokens 0, nll nan, at least one
non-finite window); each cell counts such draws in `draws_left_out`, and writing a cell table says
how many on stderr. A cell table's rows are checked the same way (`cell_problem`, `read_cells`).

Typed reading (figures.py): SWEEP_TYPES is what each column converts to, OLDER_FILE_DEFAULTS what a
reader takes for a column that files made before it was added lack. Row predicates (`is_original_link`,
`is_clean`, `is_unprotected`, `withholds_nothing`) name the tests readers make of a row; each takes a
row as csv reads it (text), as figures.py converts it, or as pandas reads it (a frame: a boolean Series).

Pure Python (csv, math); pandas only in read_sweep_frame.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from . import UserError
from .grid import LINK_MODES

ORIGINAL_LINK = "dropout"  # the original code's link: each element lost with probability p (the dropout column)

WINDOW_COLUMNS = ("windows", "nll_window_sd", "accuracy_window_sd")  # what the sweep writes for them
WINDOW_SCORES = "window_scores"  # a row's [(window, mean NLL, accuracy)] once attached (attach_windows)
# the windows file: one line per (row, window), keyed like the row (row_key) and the window's index
WINDOW_KEYS = ("split", "link", "snr_db", "dropout", "withheld", "protect", "draw")  # row_key's columns
WINDOW_FILE_COLUMNS = WINDOW_KEYS + ("window", "nll_sum", "correct", "tokens")
UNITS = ("windows", "windows (bound)", "draws (one window)", "none")  # interval_unit values, as above
# --- the results file: its columns and what a valid row holds --------------------------------------
RUN_COLUMNS = ("model", "dataset", "tokens", "context_length", "stride", "dtype", "seed")  # must match to resume
LINK_COLUMNS = tuple(
    "modulation fading nakagami_m bits_per_element elements_per_packet header_bits bandwidth_hz block_fading".split()
)
TEXT_COLUMNS = ("model", "dataset", "dtype", "link", "modulation", "fading", "block_fading")  # the rest hold numbers
COLUMNS = (
    RUN_COLUMNS
    + ("split", "layers_on_ue", "link", "snr_db", "dropout", "withheld", "protect", "draw")
    + LINK_COLUMNS
    + ("nll", "ppl", "token_accuracy", "scored_tokens", "nonfinite_windows", *WINDOW_COLUMNS)
    + ("ue_compute_s", "tx_s", "edge_compute_s", "total_s", "tx_decode_s")
)
INF = math.inf
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
            if may_be_empty and not (column == "snr_db" and row.get("link", ORIGINAL_LINK) != ORIGINAL_LINK):
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


def _blank(value) -> bool:
    """An empty field: "" or None as csv reads it, NaN as pandas does."""
    return value in ("", None) or (isinstance(value, float) and math.isnan(value))


def row_key(row: dict) -> tuple:
    """What identifies a sweep row: physical links by SNR and withheld share, the direct link by p, and
    the protected elements per token (floats as written in the CSV; strings, or numbers as pandas reads them)."""
    snr = "" if _blank(row["snr_db"]) else repr(float(row["snr_db"]))
    p = repr(float(row["dropout"])) if is_original_link(row) else ""
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


def cells_path(output: str | Path) -> Path:
    """Where the cell table of a sweep results file goes: <stem>_cells.csv beside it."""
    output = Path(output)
    return output.with_name(f"{output.stem}_cells.csv")


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


def read_sweep(path: str | Path, needed=COLUMNS) -> list[dict]:
    """A sweep results file's rows, checked (read_rows), with their window scores attached."""
    path = Path(path)
    rows = read_rows(path, needed)
    try:
        return attach_windows(rows, read_windows(windows_path(path)))
    except WindowsFileError as e:
        raise UserError(str(e)) from None


def read_sweep_frame(path: str | Path, needed: tuple[str, ...]):
    """A sweep results file as a pandas frame, every row checked first (read_rows: a row with an impossible
    value is refused, naming its line, never used nor dropped), the `needed` columns numeric where they
    hold numbers, with each row's window scores (WINDOW_SCORES) where the windows file has them."""
    import pandas as pd

    path = Path(path)
    read_rows(path, needed)  # every row checked, on every column it has
    try:
        frame = pd.read_csv(path)  # the numbers as pandas parses them (the fits of the committed sweeps rest on it)
    except (ValueError, UnicodeDecodeError) as e:  # csv read it, so this is rare: a quoting only pandas minds
        raise UserError(f"{path} is not a CSV pandas can read ({str(e).splitlines()[0]})") from None
    for column in needed:
        if column not in TEXT_COLUMNS:
            frame[column] = pd.to_numeric(frame[column])
    try:
        windows = read_windows(windows_path(path))
    except WindowsFileError as e:
        raise UserError(str(e)) from None
    if not windows or not {"split", "link", "snr_db", "dropout", "withheld", "draw"} <= set(frame.columns):
        return frame
    keys = [row_key(r) for r in frame.to_dict("records")]
    return frame.assign(**{WINDOW_SCORES: [windows.get(k) for k in keys]})


# --- typed reading (figures.py, layersplit/plots/common.py) -----------------------------------------
def float_or_nan(text: str) -> float:
    """A number, or nan for an empty field (how pandas writes a missing value)."""
    return math.nan if text == "" else float(text)


# column -> the type a reader converts it to; snr_db and the packet columns stay text: empty on the original's
# link (is_physical rows convert snr_db themselves), shown as written in titles
SWEEP_TYPES: dict[str, type] = {
    **dict.fromkeys(("model", "dataset", "link", "modulation", "fading"), str),
    **dict.fromkeys(("snr_db", "bits_per_element", "elements_per_packet", "header_bits"), str),
    **dict.fromkeys(("tokens", "split", "protect", "draw"), int),
    **dict.fromkeys(("dropout", "withheld", "nll", "ppl", "token_accuracy", "scored_tokens", "windows"), float),
    **dict.fromkeys(("nll_window_sd", "accuracy_window_sd"), float_or_nan),
}
# columns that files made before they were added lack, and what that means: nothing withheld, no protected
# path, one window with no spread (no interval over windows)
OLDER_FILE_DEFAULTS = {
    "withheld": 0.0,
    "protect": 0,
    "windows": 1.0,
    "nll_window_sd": math.nan,
    "accuracy_window_sd": math.nan,
}
POOLED_COLUMNS = ("nll", "scored_tokens", "windows", "nll_window_sd", "accuracy_window_sd")  # what cells.pool reads


def sweep_columns(*names: str) -> tuple[dict[str, type], dict[str, tuple[type, object]]]:
    """(required, optional) for a typed reader of sweep rows: `names` and what pooling a cell needs
    (POOLED_COLUMNS) -> their SWEEP_TYPES; optional: each OLDER_FILE_DEFAULTS column not in `names` ->
    (type, value where the file lacks the column)."""
    optional = {c: (SWEEP_TYPES[c], default) for c, default in OLDER_FILE_DEFAULTS.items() if c not in names}
    required = {c: SWEEP_TYPES[c] for c in dict.fromkeys(names + POOLED_COLUMNS) if c not in optional}
    return required, optional


# --- what readers test a row for ---------------------------------------------------------------------
def _zero(value) -> bool:
    """An empty field or a number equal to 0 (a column older files lack counts as 0)."""
    return _blank(value) or float(value) == 0


def is_original_link(row) -> bool:
    """A row of the original code's link (p given directly, no SNR); a frame gives a boolean Series."""
    return row["link"] == ORIGINAL_LINK


def is_physical(row) -> bool:
    """A row of a physical link (erasure, nr, ...: an SNR); a frame gives a boolean Series."""
    return row["link"] != ORIGINAL_LINK


def is_clean(row: dict) -> bool:
    """The clean reference: the original's link with p = 0 (nothing lost)."""
    return is_original_link(row) and float(row["dropout"]) == 0


def is_unprotected(row) -> bool:
    """No protected path (K = 0, or a file made before --protects); a frame with the column gives a boolean
    Series."""
    protect = row.get("protect")
    if hasattr(protect, "fillna"):  # a frame's column: empty fields are nan there
        return protect.fillna(0) == 0
    return _zero(protect)


def withholds_nothing(row: dict) -> bool:
    """Every element of the activation sent (withheld share 0, or a file made before --withheld)."""
    return _zero(row.get("withheld"))
