"""The split-point analysis: perplexity over split layer x channel condition x noise draw.

Fast path. The clean prefix up to a split does not depend on the channel, so for every window the
hidden state is walked once through the decoder stack, split by split, and at each split all the
impaired versions (conditions x draws) run through the rest of the model as one batch. Segments
of the stack run through the model's own forward as non-mutating views (segments.py: the hidden
state enters as inputs_embeds), so no model code is copied; segments.check_composition compares
the composition with a full forward first and the naive path (one full forward per cell and draw,
the link as a hook) is used for architectures where it does not hold. The fast path is walk()
(scores of (split, window) pairs) then fold() (a split's rows), so the same code runs in one
process or on Ray workers (distributed.py).

Masks. The randomness of a (window, draw) comes from a generator seeded by (seed, window, draw)
(uplink.stream_seed, the impairment engine's one seeding scheme)
and is the same for every split and condition: one uniform field compared against every loss
probability gives nested masks (each p keeps its exact Bernoulli marginal), smooth curves, and
numbers that do not depend on the order of work. The fast and naive paths give the same numbers.

Resumable. Rows are appended (one fsync'd line each) when a split is finished; a rerun of the same
command skips finished cells, drops a half-written last line, and refuses a results file made
with another configuration. A file whose header is not this version's is refused before anything
is read or changed (a typo in --output never touches another file), and so is one with a row that
cannot be read (text for a number, fields missing: schema.row_shape_problem), naming its line. A row
that reads but holds impossible values (schema.row_problem: a nan or negative nll, an accuracy above
1, ...) is recomputed: the file is rewritten without it (beside, then renamed) and stderr says so.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import UserError, cells, channel, compute, links, schema, uplink
from .grid import CPU_BATCH, GPU_MEMORY_SHARE, MASK_DEVICES, Condition, draws_of, is_clean
from .link import SplitLink
from .perplexity import sliding_windows, token_nll_and_correct
from .segments import SplitModel

# the results file's columns and what a valid row holds: schema.py (every reader of the files goes through it)
RUN_COLUMNS, LINK_COLUMNS, TEXT_COLUMNS = schema.RUN_COLUMNS, schema.LINK_COLUMNS, schema.TEXT_COLUMNS
COLUMNS, row_problem = schema.COLUMNS, schema.row_problem


PER_WINDOW = "per_window"  # key of a computed row's [(window, nll sum, correct, tokens)]: the windows file's lines
row_key, windows_path = schema.row_key, schema.windows_path  # what identifies a row; where its windows go


def cell_key(split: int, cond: Condition, draw: int) -> tuple:
    """row_key of the row that (split, condition, draw) writes."""
    return row_key(
        {
            "split": split,
            "link": cond.link,
            "snr_db": cond.snr_db,
            "dropout": cond.dropout or 0.0,
            "withheld": cond.withheld,
            "protect": cond.protect,
            "draw": draw,
        }
    )


# --- the results file ----------------------------------------------------------------------------
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
    if ours and not _header_is(path, COLUMNS):
        raise UserError(f"{path} is not a sweep results file of this version (other columns): use another --output")
    beside = windows_path(path)
    if beside.is_file() and beside.stat().st_size and not _header_is(beside, schema.WINDOW_FILE_COLUMNS):
        raise UserError(f"{beside} is not a sweep windows file (other columns): move it away, or use another --output")
    for line, row in schema.iter_rows(path, COLUMNS) if ours else ():
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
        rows of physical links must share (a resumed sweep never mixes two link set-ups)."""
        self.path = Path(path)
        self.run_config = {k: str(v) for k, v in run_config.items()}
        link_config = {k: str(v) for k, v in (link_config or {}).items()}
        self.rows: list[dict] = []
        self.windows_path = windows_path(self.path)
        ours = check_output(self.path)  # before either file is changed
        if ours:
            _drop_partial_line(self.path)
            self.rows = self._read_rows()
            first_physical = [r for r in self.rows if r["link"] not in ("dropout", "nr")][:1]
            for row, wanted in [(r, self.run_config) for r in self.rows[:1]] + [
                (r, link_config) for r in first_physical
            ]:
                differs = {k: (row[k], v) for k, v in wanted.items() if row[k] != v}
                if differs:
                    detail = "; ".join(f"{k}: {a} in the file, {b} now" for k, (a, b) in differs.items())
                    raise UserError(
                        f"{self.path} was made with another configuration ({detail}): "
                        "use another --output, or the same options to resume"
                    )
        self.done = {row_key(r) for r in self.rows}
        if self.windows_path.exists():
            _drop_partial_line(self.windows_path)
        try:
            self.windows = {k: v for k, v in schema.read_windows(self.windows_path).items() if k in self.done}
        except schema.WindowsFileError as e:
            raise UserError(str(e)) from None
        if not ours:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._start(self.path, COLUMNS)

    def _read_rows(self) -> list[dict]:
        """The file's valid rows. A row that cannot be read is refused, naming its line (resuming would
        skip or redo cells silently); rows with impossible values, or a second row of one cell and draw,
        are taken out of the file (rewritten beside, then renamed) so that the sweep recomputes them."""
        rows, dropped, seen = [], {}, set()
        for line, row in schema.iter_rows(self.path, COLUMNS):
            problem = schema.row_shape_problem(row)
            if problem:
                raise UserError(
                    f"{self.path}:{line}: a damaged row ({problem}): delete that line to resume "
                    "(the sweep then redoes it), or use another --output"
                )
            problem = row_problem(row) or (row_key(row) in seen and "a second row of the same cell and draw")
            if problem:
                dropped[line] = problem
            else:
                seen.add(row_key(row))
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
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            for row in rows:
                writer.writerow({**row, **self.run_config})
            f.flush()
            os.fsync(f.fileno())
        self.rows += rows
        self.done |= {row_key(r) for r in rows}
        for row, scores in zip(rows, per_window):
            self.windows[row_key(row)] = [
                (w, nll / t if t else math.nan, c / t if t else math.nan) for w, nll, c, t in sorted(scores)
            ]


# --- the sweep ---------------------------------------------------------------------------------------
@dataclass
class SweepConfig:
    splits: list[int]
    conditions: list[Condition]
    draws: int
    seed: int
    context_length: int
    stride: int
    link_template: channel.LinkConfig  # modulation, fading, packets... for SNR conditions
    batch_size: int | None = CPU_BATCH  # impaired variants per suffix forward; None: from free memory (auto_batch_size)
    mask_device: str = "auto"  # where mask fields are drawn (MASK_DEVICES)
    compile: bool = (
        False  # the edge's layers through torch.compile (SplitModel.view(compiled=True)); same numbers up to rounding
    )


class CellTotals:
    """Running sums over windows for every (condition, draw) of one split: the token totals, the sum
    and sum of squares of the per-window mean NLL and accuracy (for the spread over windows), and each
    window's own score (the windows file: intervals clustered by window, paired comparisons)."""

    def __init__(self, n_conditions: int, draws: int):
        shape = (n_conditions, draws)
        self.per_window: dict[tuple[int, int], list[tuple]] = {}  # (c, d) -> [(window, nll sum, correct, tokens)]
        self.nll = torch.zeros(shape, dtype=torch.float64)
        self.correct = torch.zeros(shape, dtype=torch.long)
        self.tokens = torch.zeros(shape, dtype=torch.long)
        self.nonfinite = torch.zeros(shape, dtype=torch.long)
        self.windows = torch.zeros(shape, dtype=torch.long)
        self.window_moments = torch.zeros(shape + (4,), dtype=torch.float64)  # sum nll, nll^2, acc, acc^2

    def add(self, c: int, d: int, nll: float, correct: int, n_tokens: int, window: int) -> None:
        self.per_window.setdefault((c, d), []).append((window, nll, correct, n_tokens))
        if math.isfinite(nll):
            self.nll[c, d] += nll
            self.correct[c, d] += correct
            self.tokens[c, d] += n_tokens
            self.windows[c, d] += 1
            mean_nll, accuracy = nll / n_tokens, correct / n_tokens
            self.window_moments[c, d] += torch.tensor(
                [mean_nll, mean_nll**2, accuracy, accuracy**2], dtype=torch.float64
            )
        else:
            self.nonfinite[c, d] += 1

    def window_sd(self, c: int, d: int) -> tuple[float, float]:
        """Sample standard deviation over windows of the per-window NLL and accuracy (NaN for one window)."""
        k = int(self.windows[c, d])
        if k < 2:
            return float("nan"), float("nan")
        s_nll, s_nll2, s_acc, s_acc2 = self.window_moments[c, d].tolist()
        return tuple(
            math.sqrt(max(sq - total * total / k, 0.0) / (k - 1)) for total, sq in ((s_nll, s_nll2), (s_acc, s_acc2))
        )


def link_of(condition: Condition, template: channel.LinkConfig) -> links.Link:
    """The link of `condition`: the original's at its p, or a physical one at `template` and its SNR."""
    link = links.make_link(condition.link, template, condition.dropout or 0.0)
    return link.at(condition.snr_db) if link.physical else link


def impairment_of(condition: Condition, template: channel.LinkConfig) -> uplink.Impairment:
    """What the link does under `condition` (link_of), with its share withheld and its protection."""
    return links.impairment(link_of(condition, template), condition.withheld).protecting(condition.protect)


def _pending(cfg: SweepConfig, split: int, store: ResultsStore) -> list[tuple[int, int]]:
    return [
        (c, d)
        for c, cond in enumerate(cfg.conditions)
        for d in range(draws_of(cond, cfg.draws))
        if cell_key(split, cond, d) not in store.done
    ]


def _rows(cfg: SweepConfig, split: int, totals: CellTotals, pending, dims) -> list[dict]:
    rows = []
    for c, d in pending:
        cond = cfg.conditions[c]
        imp = impairment_of(cond, cfg.link_template)
        tokens = int(totals.tokens[c, d])
        nll = float(totals.nll[c, d]) / tokens if tokens else float("nan")
        nll_sd, accuracy_sd = totals.window_sd(c, d)
        physical = imp.link.physical
        # compute times do not depend on the channel; the direct-p link has no air time to report
        times = compute.latency_breakdown(
            imp.link, dims, split, cfg.context_length, withheld=cond.withheld, protect=cond.protect
        )
        row = {
            "split": split,
            "layers_on_ue": split + 1,
            "link": cond.link,
            "snr_db": cond.snr_db if physical else "",
            "dropout": imp.loss,
            "withheld": cond.withheld,
            "protect": cond.protect,
            "draw": d,
            **imp.link.csv_columns(LINK_COLUMNS),
            "nll": nll,
            "ppl": math.exp(nll) if math.isfinite(nll) else float("nan"),
            "token_accuracy": int(totals.correct[c, d]) / tokens if tokens else float("nan"),
            "scored_tokens": tokens,
            "nonfinite_windows": int(totals.nonfinite[c, d]),
            "windows": int(totals.windows[c, d]),
            "nll_window_sd": nll_sd,
            "accuracy_window_sd": accuracy_sd,
            "ue_compute_s": times["ue_compute_s"],
            "edge_compute_s": times["edge_compute_s"],
            "tx_s": times["tx_s"] if physical else "",
            "total_s": times["total_s"] if physical else "",
            "tx_decode_s": compute.latency_breakdown(
                imp.link, dims, split, cfg.context_length, phase="decode", withheld=cond.withheld, protect=cond.protect
            )["tx_s"]
            if physical
            else "",
            PER_WINDOW: totals.per_window.get((c, d), []),
        }
        rows.append(row)
    return rows


def link_columns(template: channel.LinkConfig, link: str = "erasure") -> dict:
    """The LINK_COLUMNS values of rows of `link` made with `template`, as written in the CSV
    (Link.csv_columns: the uncoded link's set-up; nr's bits per element; none for the direct p)."""
    return links.make_link(link, template).csv_columns(LINK_COLUMNS)


# The fast path in two halves, so that a worker process can run the first on part of the grid and the
# driver the second: walk() scores (split, window) pairs; fold() adds them up into a split's rows.
WindowScores = list  # [((c, d), nll sum, correct count)] of one (split, window), in the order computed


def work_list(cfg: SweepConfig, store: ResultsStore) -> tuple[list[tuple[int, list]], int | None]:
    """([(split, its pending (c, d) cells)] for the splits with work left, and the split where the clean
    reference is scored: the first with a clean cell pending; later splits reuse its numbers, which
    the clean link gives at every split)."""
    work = [(split, pending) for split in cfg.splits if (pending := _pending(cfg, split, store))]
    clean_split = next((split for split, pending in work if any(is_clean(cfg.conditions[c]) for c, _ in pending)), None)
    return work, clean_split


def mask_device(cfg: SweepConfig, model_device: torch.device) -> torch.device:
    """The device whose generators draw the mask fields (cfg.mask_device, MASK_DEVICES)."""
    if cfg.mask_device not in MASK_DEVICES:
        raise UserError(f"mask device {cfg.mask_device!r}: use one of {', '.join(MASK_DEVICES)}")
    return torch.device("cpu") if cfg.mask_device == "cpu" else torch.device(model_device)


def auto_batch_size(
    segments: SplitModel, hidden: torch.Tensor, start: int, targets: torch.Tensor, compiled: bool = False
) -> int:
    """Variants per suffix forward: on CUDA, as many as GPU_MEMORY_SHARE of the free memory holds,
    from the peak memory of one variant's suffix forward (compiled or not) measured here; CPU_BATCH elsewhere."""
    device = segments.device
    if device.type != "cuda":
        return CPU_BATCH
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    segments.score_from(hidden, start, targets, compiled)
    per_variant = max(torch.cuda.max_memory_allocated(device) - before, 1)
    free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return max(1, int(GPU_MEMORY_SHARE * free // per_variant))


def walk(
    segments: SplitModel, token_ids: torch.Tensor, cfg: SweepConfig, work, clean_split: int | None, window_ids=None
):
    """Yield (split, window, WindowScores, scored tokens) for every split of `work` in order and every
    window of window_ids (default: all) inside it, walking each window's hidden state from split to
    split. The clean cell is scored at clean_split only. Variants are queued on the device without a
    host sync; the scores are read once per window."""
    impairments = [impairment_of(cond, cfg.link_template) for cond in cfg.conditions]
    masks_on, batch = mask_device(cfg, segments.device), cfg.batch_size
    windows = sliding_windows(len(token_ids), cfg.context_length, cfg.stride)
    window_ids = range(len(windows)) if window_ids is None else window_ids
    hidden = {i: token_ids[windows[i].begin : windows[i].end][None] for i in window_ids}  # token ids at first
    walked = dict.fromkeys(window_ids, 0)  # layers already applied to hidden[i]
    for split, pending in work:
        for i in window_ids:
            w = windows[i]
            hidden[i] = segments.hidden_after(hidden[i], walked[i], split + 1)
            walked[i] = split + 1
            targets = token_ids[w.first_target : w.end].to(segments.device)  # once per window: a copy waits
            to_run = [(c, d) for c, d in pending if split == clean_split or not is_clean(cfg.conditions[c])]
            if batch is None and to_run:
                batch = auto_batch_size(segments, hidden[i], split + 1, targets, cfg.compile)
            nlls, corrects = [], []
            for lo in range(0, len(to_run), batch or 1):
                variants = torch.cat(
                    [
                        uplink.received(
                            hidden[i], impairments[c], uplink.generator(uplink.stream_seed(cfg.seed, i, d), masks_on)
                        )
                        for c, d in to_run[lo : lo + batch]
                    ]
                )
                nll, correct = segments.score_from(variants, split + 1, targets, cfg.compile)
                nlls.append(nll)
                corrects.append(correct)
            scores = list(zip(to_run, torch.cat(nlls).tolist(), torch.cat(corrects).tolist())) if to_run else []
            yield split, i, scores, len(targets)


def fold(cfg: SweepConfig, split: int, pending, scored: dict, clean: dict, dims) -> list[dict]:
    """A split's rows from its windows' scores, added in window order ({window: (WindowScores, tokens)});
    `clean` ({window: (nll, correct)}) gives the clean cell where it was scored at another split."""
    totals = CellTotals(len(cfg.conditions), cfg.draws)
    for i in sorted(scored):
        scores, n_targets = scored[i]
        for c, d in pending:
            if is_clean(cfg.conditions[c]) and i in clean:
                totals.add(c, d, *clean[i], n_targets, i)
        for (c, d), nll, correct in scores:
            if not (is_clean(cfg.conditions[c]) and i in clean):
                totals.add(c, d, nll, correct, n_targets, i)
    return _rows(cfg, split, totals, pending, dims)


def clean_scores(cfg: SweepConfig, scored: dict) -> dict:
    """{window: (nll, correct)} of the clean cell, from the windows scored at the clean split."""
    return {
        i: (nll, correct)
        for i, (scores, _) in scored.items()
        for (c, _), nll, correct in scores
        if is_clean(cfg.conditions[c])
    }


def run_fast(model, token_ids: torch.Tensor, cfg: SweepConfig, store: ResultsStore, progress: bool = True) -> None:
    """Walk every window split by split; at each split, score all pending (condition, draw) at once."""
    segments = SplitModel(model)
    dims = compute.model_dims(model.config)
    n_windows = len(sliding_windows(len(token_ids), cfg.context_length, cfg.stride))
    work, clean_split = work_list(cfg, store)
    bar = tqdm(
        total=len(cfg.splits) * n_windows,
        initial=(len(cfg.splits) - len(work)) * n_windows,
        desc="sweep",
        unit="window",
        disable=not progress,
    )
    pending_of, scored, clean = dict(work), {}, {}
    for split, i, scores, n_targets in walk(segments, token_ids, cfg, work, clean_split):
        bar.set_postfix_str(f"split {split}", refresh=False)
        scored[i] = (scores, n_targets)
        bar.update(1)
        if len(scored) == n_windows:  # the split is complete: its rows go to the file
            if split == clean_split:
                clean = clean_scores(cfg, scored)
            store.append(fold(cfg, split, pending_of[split], scored, clean, dims))
            scored = {}
    bar.close()


def run_naive(model, token_ids: torch.Tensor, cfg: SweepConfig, store: ResultsStore, progress: bool = True) -> None:
    """The reference: one full forward per cell, draw and window, with the link as a hook."""
    link = SplitLink(model, split=0, mask_device=mask_device(cfg, next(model.parameters()).device))
    dims = compute.model_dims(model.config)
    windows = sliding_windows(len(token_ids), cfg.context_length, cfg.stride)
    device = next(model.parameters()).device
    bar = tqdm(total=len(cfg.splits) * len(windows), desc="sweep (naive)", unit="window", disable=not progress)
    for split in cfg.splits:
        link.set_split(split)
        pending = _pending(cfg, split, store)
        totals = CellTotals(len(cfg.conditions), cfg.draws)
        for i, w in enumerate(windows):
            targets = token_ids[w.first_target : w.end].to(device)
            for c, d in pending:
                link.impairment = impairment_of(cfg.conditions[c], cfg.link_template)
                link.reseed(uplink.stream_seed(cfg.seed, i, d))
                with torch.no_grad():
                    logits = model(
                        input_ids=token_ids[None, w.begin : w.end].to(device),
                        use_cache=False,
                        logits_to_keep=len(targets) + 1,
                    ).logits[0, :-1]
                nll, correct = token_nll_and_correct(logits, targets)
                totals.add(c, d, nll.double().sum().item(), int(correct.sum()), len(targets), i)
            bar.update(1)
        store.append(_rows(cfg, split, totals, pending, dims))
    bar.close()
    link.detach()


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
    ref = {row_key(r): r for r in ref_rows}
    worst = 0.0
    for row in rows:
        key = row_key(row)
        if key not in ref:
            raise UserError(
                f"--verify: {reference} has no row for split {key[0]}, {key[1]} {key[3] or key[2]}, draw {key[6]}"
            )
        other = ref[key]
        differs = [c for c in RUN_COLUMNS if str(other[c]) != str(row[c])]
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


CELL_KEYS, CELL_COLUMNS = schema.CELL_KEYS, schema.CELL_COLUMNS  # the cell table (cells.py writes it)
cell_table, cells_path, write_cells = cells.cell_table, schema.cells_path, cells.write_cells


def summarise(rows: list[dict], windows: dict | None = None) -> str:
    """Perplexity per split and condition pooled over draws with its 95% interval, as a text table."""
    import pandas as pd

    frame = pd.DataFrame(cell_table(rows, windows))
    if frame.empty:
        return "(no rows)"
    frame["condition"] = [
        Condition(link, float(p), None if s == "" else float(s), float(w or 0.0), int(k or 0)).label
        for link, s, p, w, k in zip(
            frame["link"], frame["snr_db"], frame["dropout"], frame["withheld"], frame["protect"]
        )
    ]
    frame["split"] = frame["split"].astype(int)
    frame["cell"] = [
        f"{ppl:.3g} [{lo:.3g}, {hi:.3g}]" if math.isfinite(lo) else f"{ppl:.3g}"
        for ppl, lo, hi in zip(frame["ppl"], frame["ppl_low"], frame["ppl_high"])
    ]
    table = frame.set_index(["split", "condition"])["cell"].unstack("condition")
    table = table[list(dict.fromkeys(frame["condition"]))]
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        return (
            f"perplexity pooled over draws, exp(mean NLL), [95% interval; its unit: the window, or the draw "
            f"where there is one window] "
            f"(rows: split, 0-based = layers on the UE - 1)\n{table}"
        )
