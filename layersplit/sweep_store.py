"""The sweep's results file and the windows file beside it: resumable, checked, compared.

Resumable. Rows are appended (one fsync'd line each) when a split is finished; a rerun of the same
command skips finished cells, drops a half-written last line, and refuses a results file made
with another configuration. A file whose header is not this version's is refused before anything
is read or changed (a typo in --output never touches another file), and so is one with a row that
cannot be read (text for a number, fields missing: schema.row_shape_problem), naming its line. A row
that reads but holds impossible values (schema.row_problem: a nan or negative nll, an accuracy above
1, ...) is recomputed: the file is rewritten without it (beside, then renamed) and stderr says so.

Compared. --verify checks recomputed rows against the same rows of another results file (verify).
The columns and what a valid row holds are schema.py's; the sweep that fills the store is sweep.py.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from pathlib import Path

from . import UserError, channel, links, schema

PER_WINDOW = "per_window"  # key of a computed row's [(window, nll sum, correct, tokens)]: the windows file's lines


def _header_is(path: Path, columns) -> bool:
    """Whether the file's first line is exactly this header (read as bytes: nothing else is read)."""
    with path.open("rb") as f:
        first = f.readline(64 * 1024)
    return first.rstrip(b"\r\n") == ",".join(columns).encode()


def _drop_partial_line(path: Path) -> None:
    """A kill during a write can leave a last line without its newline: cut it off (only ever called on
    a file whose header is ours)."""
    with path.open("r+b") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def check_output(path: str | Path) -> bool:
    """Refuse a results path whose file, or windows file beside it, is of another kind, or holds a row
    that cannot be read (schema.row_shape_problem), changing nothing: a script calls it before any work.
    True when there is a results file to resume."""
    path = Path(path)
    ours = path.is_file() and path.stat().st_size > 0
    if ours and not _header_is(path, schema.COLUMNS):
        raise UserError(f"{path} is not a sweep results file of this version (other columns): use another --output")
    beside = schema.windows_path(path)
    if beside.is_file() and beside.stat().st_size and not _header_is(beside, schema.WINDOW_FILE_COLUMNS):
        raise UserError(f"{beside} is not a sweep windows file (other columns): move it away, or use another --output")
    for line, row in schema.iter_rows(path, schema.COLUMNS) if ours else ():
        if problem := schema.row_shape_problem(row):  # (a torn last line is cut when the store opens the file)
            if line == _last_line(path) and not path.read_bytes().endswith(b"\n"):
                break
            raise UserError(
                f"{path}:{line}: a damaged row ({problem}): delete that line to resume "
                "(the sweep then redoes it), or use another --output"
            )
    return ours


def _last_line(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)


class ResultsStore:
    """An append-only CSV that survives being killed at any moment, with its windows file beside it."""

    def __init__(self, path: str | Path, run_config: dict, link_config: dict | None = None):
        """run_config: RUN_COLUMNS values every row must share; link_config: LINK_COLUMNS values the
        rows of links that carry their set-up must share (Link.rows_carry_setup: a resumed sweep never
        mixes two link set-ups)."""
        self.path = Path(path)
        self.run_config = {k: str(v) for k, v in run_config.items()}
        link_config = {k: str(v) for k, v in (link_config or {}).items()}
        self.rows: list[dict] = []
        self.windows_path = schema.windows_path(self.path)
        ours = check_output(self.path)  # before either file is changed
        if ours:
            _drop_partial_line(self.path)
            self.rows = self._read_rows()
            first_with_setup = [r for r in self.rows if links.link_class(r["link"]).rows_carry_setup][:1]
            for row, wanted in [(r, self.run_config) for r in self.rows[:1]] + [
                (r, link_config) for r in first_with_setup
            ]:
                differs = {k: (row[k], v) for k, v in wanted.items() if row[k] != v}
                if differs:
                    detail = "; ".join(f"{k}: {a} in the file, {b} now" for k, (a, b) in differs.items())
                    raise UserError(
                        f"{self.path} was made with another configuration ({detail}): "
                        "use another --output, or the same options to resume"
                    )
        self.done = {schema.row_key(r) for r in self.rows}
        if self.windows_path.exists():
            _drop_partial_line(self.windows_path)
        try:
            self.windows = {k: v for k, v in schema.read_windows(self.windows_path).items() if k in self.done}
        except schema.WindowsFileError as e:
            raise UserError(str(e)) from None
        if not ours:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._start(self.path, schema.COLUMNS)

    def _read_rows(self) -> list[dict]:
        """The file's valid rows. A row that cannot be read is refused, naming its line (resuming would
        skip or redo cells silently); rows with impossible values, or a second row of one cell and draw,
        are taken out of the file (rewritten beside, then renamed) so that the sweep recomputes them."""
        rows, dropped, seen = [], {}, set()
        for line, row in schema.iter_rows(self.path, schema.COLUMNS):
            problem = schema.row_shape_problem(row)
            if problem:
                raise UserError(
                    f"{self.path}:{line}: a damaged row ({problem}): delete that line to resume "
                    "(the sweep then redoes it), or use another --output"
                )
            problem = schema.row_problem(row) or (
                schema.row_key(row) in seen and "a second row of the same cell and draw"
            )
            if problem:
                dropped[line] = problem
            else:
                seen.add(schema.row_key(row))
                rows.append(row)
        if dropped:
            with self.path.open(newline="", encoding="utf-8") as f:
                lines = f.read().splitlines(keepends=True)
            if len(lines) != len(rows) + len(dropped) + 1:  # a quoted field over two lines: not the sweep's writing
                raise UserError(
                    f"{self.path}: blank lines or rows over several lines, which the sweep never "
                    "writes: use another --output"
                )
            from .cli import write_text_atomic

            write_text_atomic(self.path, "".join(text for i, text in enumerate(lines, start=1) if i not in dropped))
            first = min(dropped)
            print(
                f"[layersplit] {self.path}: {len(dropped)} row(s) with invalid values taken out to be recomputed "
                f"(line {first}: {dropped[first]})",
                file=sys.stderr,
            )
        return rows

    @staticmethod
    def _start(path: Path, columns) -> None:
        with path.open("w", newline="") as f:
            csv.writer(f).writerow(columns)
            f.flush()
            os.fsync(f.fileno())

    def append(self, rows: list[dict]) -> None:
        """Write rows (each with its PER_WINDOW scores): the windows first, so that a row in the results
        file always has its windows (a kill in between leaves windows of no row, which are redone)."""
        rows = [dict(row) for row in rows]
        per_window = [row.pop(PER_WINDOW, []) for row in rows]
        if not self.windows_path.exists():  # a results file made before windows were recorded has none
            self._start(self.windows_path, schema.WINDOW_FILE_COLUMNS)
        with self.windows_path.open("a", newline="") as f:
            writer = csv.writer(f)
            for row, scores in zip(rows, per_window):
                key_values = [row[k] for k in schema.WINDOW_KEYS]
                writer.writerows([*key_values, window, nll, correct, tokens] for window, nll, correct, tokens in scores)
            f.flush()
            os.fsync(f.fileno())
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=schema.COLUMNS)
            for row in rows:
                writer.writerow({**row, **self.run_config})
            f.flush()
            os.fsync(f.fileno())
        self.rows += rows
        self.done |= {schema.row_key(r) for r in rows}
        for row, scores in zip(rows, per_window):
            self.windows[schema.row_key(row)] = [
                (w, nll / t if t else math.nan, c / t if t else math.nan) for w, nll, c, t in sorted(scores)
            ]


def link_columns(template: channel.LinkConfig, link: str = "erasure") -> dict:
    """The LINK_COLUMNS values of rows of `link` made with `template`, as written in the CSV
    (Link.csv_columns: the uncoded link's set-up; nr's bits per element; none for the direct p)."""
    return links.make_link(link, template).csv_columns(schema.LINK_COLUMNS)


def read_reference(reference: str | Path) -> list[dict]:
    """The rows of a --verify reference, checked like every sweep file (schema.read_rows): a script calls
    this before any work, so a bad reference is refused (one line, exit 2) before the sweep runs."""
    try:
        return schema.read_rows(reference)
    except UserError as e:
        raise UserError(f"--verify: {e}") from None


def verify(rows: list[dict], reference: str | Path, rtol: float) -> str:
    """Check recomputed rows against the matching rows of another results file (made with the same
    run configuration): every recomputed row must be there and agree within rtol. Return a one-line
    summary; raise UserError naming the first row that does not agree."""
    reference = Path(reference)
    ref_rows = read_reference(reference)
    if not rows:
        raise UserError("--verify: no rows were computed to compare")
    ref = {schema.row_key(r): r for r in ref_rows}
    worst = 0.0
    for row in rows:
        key = schema.row_key(row)
        if key not in ref:
            raise UserError(
                f"--verify: {reference} has no row for split {key[0]}, {key[1]} {key[3] or key[2]}, draw {key[6]}"
            )
        other = ref[key]
        differs = [c for c in schema.RUN_COLUMNS if str(other[c]) != str(row[c])]
        if differs:
            raise UserError(f"--verify: {reference} was made with another {', '.join(differs)}")
        for column in ("nll", "token_accuracy"):
            a, b = float(row[column]), float(other[column])
            if math.isnan(a) and math.isnan(b):  # a draw with no window scored, on both sides
                continue
            gap = abs(a - b) / max(abs(b), 1e-12)
            worst = max(worst, gap)
            if not gap <= rtol:  # a NaN on either side fails too
                raise UserError(
                    f"--verify: split {key[0]}, draw {key[6]}: {column} {a!r} recomputed, {b!r} in "
                    f"{reference} (relative difference {gap:.2g} > {rtol:g})"
                )
    return f"verified: {len(rows)} rows agree with {reference} (largest relative difference {worst:.2g})"
