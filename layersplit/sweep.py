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

Resumable. Rows go to the results store (sweep_store.py) when a split is finished; a rerun of the
same command skips the cells the store already holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import UserError, cells, channel, compute, links, schema, uplink
from .grid import CPU_BATCH, GPU_MEMORY_SHARE, MASK_DEVICES, Condition, draws_of, is_clean
from .link import SplitLink
from .perplexity import sliding_windows, token_nll_and_correct
from .segments import SplitModel
from .sweep_store import PER_WINDOW, ResultsStore


def cell_key(split: int, cond: Condition, draw: int) -> tuple:
    """row_key of the row that (split, condition, draw) writes."""
    return schema.row_key(
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
            **imp.link.csv_columns(schema.LINK_COLUMNS),
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


def summarise(rows: list[dict], windows: dict | None = None) -> str:
    """Perplexity per split and condition pooled over draws with its 95% interval, as a text table."""
    import pandas as pd

    frame = pd.DataFrame(cells.cell_table(rows, windows))
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
