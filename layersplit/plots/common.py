"""What every figure shares: the output format, the styles that are the same in every figure, the
readers of result files (a missing or malformed file is a FigureInputError naming it) and save()."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from layersplit import schema

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 150  # readable in the README at ~1000 px width
FORMATS = ("png", "pdf")  # every figure is written in each; the PNG is what the README embeds
MODULATION_COLORS = {"bpsk": "C0", "qpsk": "C1", "16qam": "C2", "64qam": "C3"}  # same in every figure
MODULATION_LABELS = {"bpsk": "BPSK", "qpsk": "QPSK", "16qam": "16-QAM", "64qam": "64-QAM"}
FADING_LABELS = {"awgn": "AWGN (no fading)", "rayleigh": "Rayleigh", "nakagami": "Nakagami-m"}
ERROR_RATE_FLOOR = 1e-7  # lower y limit of BER/PER plots; Monte Carlo cannot resolve less
RECOVERY = 1.10  # "recovered": perplexity within 10 % of clean at this SNR and every higher one
SPLIT_AXIS = "split (0-based; split n = n + 1 layers on the UE)"  # every axis that shows a split
# what a figure of quality against the condition reads
SWEEP_COLUMNS = ("model", "tokens", "split", "link", "snr_db", "dropout", "draw", "ppl", "token_accuracy")


def pyplot():
    """matplotlib.pyplot, drawing to files only; imported by the figures, so that --help answers at once."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


class FigureInputError(Exception):
    """A result file is missing or malformed; the message names it."""


def read_csv(
    path: Path,
    columns: dict[str, type],
    remedy: str,
    optional: dict[str, tuple[type, object]] | None = None,
    check: Callable[[dict, int], str | None] | None = None,
) -> list[dict]:
    """Rows of `path` with `columns` converted to their types (columns are found by name, extra
    ones are ignored); `optional`: column -> (type, value when the file has no such column); `check`:
    what is wrong with a row as read (its fields as text) on a line, or None. FigureInputError names the file,
    the column and the line."""
    if not path.is_file():
        raise FigureInputError(f"missing {path} (make it with: {remedy})")
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        try:
            fieldnames = reader.fieldnames or []
            missing = ", ".join(c for c in columns if c not in fieldnames)
            if missing:
                raise FigureInputError(f"malformed {path}: no column(s) {missing} (remake it with: {remedy})")
            wanted = {**columns, **{c: kind for c, (kind, _) in (optional or {}).items() if c in fieldnames}}
            defaults = {c: default for c, (_, default) in (optional or {}).items() if c not in fieldnames}
            for row in reader:
                converted = dict(defaults)
                for c, kind in wanted.items():
                    try:
                        converted[c] = kind(row[c])
                    except (TypeError, ValueError):
                        raise FigureInputError(
                            f"malformed {path}: line {reader.line_num}, column {c}: {row[c]!r} "
                            f"is not {kind.__name__} (remake it with: {remedy})"
                        ) from None
                if check and (problem := check(row, reader.line_num)):
                    raise FigureInputError(
                        f"malformed {path}: line {reader.line_num}: {problem} (remake it with: {remedy})"
                    )
                rows.append(converted)
        except UnicodeDecodeError:
            raise FigureInputError(f"malformed {path}: not UTF-8 text (remake it with: {remedy})") from None
        except csv.Error as e:
            raise FigureInputError(
                f"malformed {path}: line {reader.line_num}: not CSV ({e}) (remake it with: {remedy})"
            ) from None
    if not rows:
        raise FigureInputError(f"malformed {path}: no data rows (remake it with: {remedy})")
    return rows


def read_json(path: Path, remedy: str, *keys: str) -> dict:
    """A JSON result file; FigureInputError names it when missing, unreadable or without `keys`."""
    if not path.is_file():
        raise FigureInputError(f"missing {path} (make it with: {remedy})")
    try:
        data = json.loads(path.read_text())
        for key in keys:
            node = data
            for part in key.split("."):
                node = node[part]
    except (ValueError, KeyError, TypeError) as e:
        raise FigureInputError(f"malformed {path}: {type(e).__name__} {e} (remake it with: {remedy})") from None
    return data


def save(fig: Figure, figures_dir: Path, name: str) -> Path:
    """Write `fig` as name.png and name.pdf (FORMATS) into figures_dir, close it; the PNG's path."""
    for fmt in FORMATS:  # no creation date in the PDF: the same results give the same bytes
        fig.savefig(figures_dir / f"{name}.{fmt}", dpi=DPI, metadata={"CreationDate": None} if fmt == "pdf" else None)
    pyplot().close(fig)
    return figures_dir / f"{name}.{FORMATS[0]}"


def read_sweep(path: Path, names: tuple[str, ...], remedy: str) -> list[dict]:
    """A sweep results file's rows (read_csv) with the columns `names` and what pooling needs, typed as
    schema.sweep_columns says, each valid by the rule every reader of sweep rows follows (schema.RowCheck: an
    impossible value or a row given twice is refused, naming its line), with each row's window scores from the
    windows file beside it (schema.attach_windows), so that the intervals take the window as their unit."""
    columns, optional = schema.sweep_columns(*names)
    rows = read_csv(path, columns, remedy, optional, check=schema.RowCheck())
    try:
        return schema.attach_windows(rows, schema.read_windows(schema.windows_path(path)))
    except schema.WindowsFileError as e:
        raise FigureInputError(f"{e} (remake it with: {remedy})") from None


def pooled_interval(rows: list[dict], column: str) -> tuple[float, float, float]:
    """One cell's draws pooled (cells.pool): the value of `column` (ppl or token_accuracy) and its
    95% interval, over windows (over draws where there is one window; nan for a single sample)."""
    from layersplit import cells  # pooling of sweep cells with intervals (scipy)

    pooled = cells.pool(rows)
    if column == "ppl":
        return pooled["ppl"], pooled["ppl_low"], pooled["ppl_high"]
    value, half = pooled["token_accuracy"], pooled["accuracy_ci95"]
    return value, value - half, value + half


def snr_of(path: Path, row: dict, remedy: str) -> float:
    """Es/N0 of a sweep row: a number for physical links, nan for the direct-p link."""
    if schema.is_original_link(row):
        return math.nan
    try:
        return float(row["snr_db"])
    except ValueError:
        raise FigureInputError(
            f"malformed {path}: column snr_db: {row['snr_db']!r} is not a number for link "
            f"{row['link']} (remake it with: {remedy})"
        ) from None


def band(stats, column: str) -> tuple[list[float], list[float]]:
    """The interval's edges; an accuracy's t interval can leave [0, 1] with few samples: clip it there."""
    low, high = [lo for _, lo, _ in stats], [hi for _, _, hi in stats]
    if column == "token_accuracy":
        low, high = [max(v, 0.0) for v in low], [min(v, 1.0) for v in high]
    return low, high
