"""The sweep: the fast path equals the naive path, the masks ignore the order of work, and a killed
sweep resumes with no lost and no duplicate rows."""
from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, run_script
from layersplit import UserError, channel, grid, sweep
from layersplit.cli import parse_splits
from layersplit.segments import SplitModel

TOKENS = torch.randint(0, 300, (150,), generator=torch.Generator().manual_seed(3))
RUN = {"model": "tiny", "dataset": "random", "tokens": 150, "context_length": 64, "stride": 64, "dtype": "float32",
       "seed": 0}


def config(splits=(0, 1, 2, 3), draws=2, batch_size=16, seed=0) -> sweep.SweepConfig:
    conditions = grid.make_conditions([0.1, 0.4], [], "erasure") + [
        grid.Condition("erasure", snr_db=12.0), grid.Condition("erasure", snr_db=12.0, withheld=0.25),
        grid.Condition("awgn", snr_db=5.0)]
    template = channel.LinkConfig(snr_db=0.0, elements_per_packet=8, fading="rayleigh")
    return sweep.SweepConfig(list(splits), conditions, draws, seed, 64, 64, template, batch_size)


def run(model, path, runner=sweep.run_fast, **kwargs) -> dict:
    cfg = config(**kwargs)
    store = sweep.ResultsStore(path, RUN, sweep.link_columns(cfg.link_template))
    runner(model, TOKENS, cfg, store, progress=False)
    return rows_by_key(path)


def rows_by_key(path) -> dict:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keys = [sweep.row_key(r) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate rows"
    return dict(zip(keys, rows))


def assert_same_numbers(a: dict, b: dict, rel=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        for column in ("nll", "token_accuracy", "scored_tokens", "dropout", "windows", "nll_window_sd",
                       "accuracy_window_sd"):
            assert float(a[key][column]) == pytest.approx(float(b[key][column]), rel=rel), (key, column)


def test_fast_path_equals_naive_path(tiny_llama, tmp_path):
    fast = run(tiny_llama, tmp_path / "fast.csv")
    naive = run(tiny_llama, tmp_path / "naive.csv", runner=sweep.run_naive)
    assert len(fast) == 4 * (1 + 5 * 2)  # splits x (clean once + 5 conditions x 2 draws)
    assert_same_numbers(fast, naive)


def test_window_spread_columns_are_the_spread_of_per_window_values(tiny_llama, tmp_path):
    import statistics

    from layersplit.perplexity import evaluate

    rows = run(tiny_llama, tmp_path / "r.csv")
    plain = evaluate(tiny_llama, TOKENS, 64, 64)  # the clean link: per-window mean NLLs
    clean = rows[(1, "dropout", "", "0.0", "0.0", 0, 0)]
    assert int(clean["windows"]) == 3 == len(plain.window_nlls)
    assert float(clean["nll_window_sd"]) == pytest.approx(statistics.stdev(plain.window_nlls), rel=1e-4)  # float32
    assert 0 <= float(clean["accuracy_window_sd"]) < 1


def test_cells_pool_draws_and_windows_into_a_t_interval():
    import math

    import numpy as np
    from scipy import stats

    from layersplit import cells

    rng = np.random.default_rng(0)
    per_window = rng.normal(3.0, 0.5, size=(4, 6))  # 4 draws x 6 windows of 100 tokens each
    accuracy = rng.uniform(0.3, 0.5, size=(4, 6))
    rows = [{"nll": w.mean(), "token_accuracy": a.mean(), "scored_tokens": 600, "windows": 6,
             "nll_window_sd": w.std(ddof=1), "accuracy_window_sd": a.std(ddof=1)} for w, a in zip(per_window, accuracy)]
    pooled = cells.pool(rows)
    flat = per_window.ravel()
    half = stats.t.ppf(0.975, 23) * flat.std(ddof=1) / math.sqrt(24)
    assert pooled["nll"] == pytest.approx(flat.mean()) and pooled["nll_ci95"] == pytest.approx(half)
    assert pooled["ppl_low"] == pytest.approx(math.exp(flat.mean() - half))
    assert pooled["accuracy_ci95"] == pytest.approx(stats.t.ppf(0.975, 23) * accuracy.ravel().std(ddof=1) / math.sqrt(24))
    assert (pooled["draws"], pooled["samples"]) == (4, 24)
    # token weighting: a draw with twice the tokens counts twice in the pooled value
    weighted = cells.pool([{**rows[0], "nll": 1.0, "scored_tokens": 200}, {**rows[1], "nll": 4.0, "scored_tokens": 100}])
    assert weighted["nll"] == pytest.approx(2.0)
    # a lone window has no spread: no interval rather than a made-up one
    assert math.isnan(cells.pool([{**rows[0], "windows": 1, "nll_window_sd": ""}])["nll_ci95"])


def test_masks_do_not_depend_on_the_order_of_work(tiny_llama, tmp_path):
    everything = run(tiny_llama, tmp_path / "all.csv")
    only_split_2 = run(tiny_llama, tmp_path / "two.csv", splits=(2,), batch_size=1)
    assert_same_numbers({k: v for k, v in everything.items() if k[0] == 2}, only_split_2)


def test_clean_cells_equal_plain_perplexity_and_loss_grows_with_p(tiny_llama, tmp_path):
    from layersplit.perplexity import evaluate

    rows = run(tiny_llama, tmp_path / "r.csv")
    plain = evaluate(tiny_llama, TOKENS, 64, 64)
    for split in range(4):
        clean = rows[(split, "dropout", "", "0.0", "0.0", 0, 0)]
        assert float(clean["nll"]) == pytest.approx(plain.nll, rel=1e-5)
        assert clean["tx_s"] == "" and float(clean["ue_compute_s"]) > 0
        assert float(rows[(split, "erasure", "12.0", "", "0.0", 0, 0)]["tx_s"]) > 0
        withheld = rows[(split, "erasure", "12.0", "", "0.25", 0, 0)]
        assert float(withheld["tx_s"]) == pytest.approx(0.75 * float(rows[(split, "erasure", "12.0", "", "0.0", 0, 0)]["tx_s"]),
                                                       rel=0.02)
        assert withheld["nll"] != rows[(split, "erasure", "12.0", "", "0.0", 0, 0)]["nll"]  # more zeroed: other numbers


def test_resume_between_cells_computes_only_what_is_missing(tiny_llama, tmp_path):
    reference = run(tiny_llama, tmp_path / "ref.csv")
    path = tmp_path / "resumed.csv"
    run(tiny_llama, path, splits=(0, 1))
    calls = {"n": 0}
    original = SplitModel.score_from

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    SplitModel.score_from = counting
    try:
        resumed = run(tiny_llama, path)
    finally:
        SplitModel.score_from = original
    assert calls["n"] == 2 * 3  # splits 2 and 3 only: 3 windows each, one batch per window
    assert_same_numbers(resumed, reference)


def test_resume_after_a_crash_inside_a_cell(tiny_llama, tmp_path, monkeypatch):
    reference = run(tiny_llama, tmp_path / "ref.csv")
    path = tmp_path / "crashed.csv"
    calls = {"n": 0}
    original = SplitModel.score_from

    def crash_in_split_1(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # the second window of split 1
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SplitModel, "score_from", crash_in_split_1)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_llama, path)
    monkeypatch.setattr(SplitModel, "score_from", original)
    assert {k[0] for k in rows_by_key(path)} == {0}
    with open(path, "a") as f:
        f.write("tiny,random,150,64")  # and a line half-written when the power went out
    assert_same_numbers(run(tiny_llama, path), reference)


def test_another_configuration_is_refused(tiny_llama, tmp_path):
    path = tmp_path / "r.csv"
    run(tiny_llama, path, splits=(0,))
    with pytest.raises(UserError, match="another configuration .*seed: 0 in the file, 1 now"):
        sweep.ResultsStore(path, {**RUN, "seed": 1})
    link = sweep.link_columns(config().link_template)
    with pytest.raises(UserError, match="modulation: qpsk in the file, 16qam now"):
        sweep.ResultsStore(path, RUN, {**link, "modulation": "16qam"})
    assert len(sweep.ResultsStore(path, RUN, link).rows) == 1 + 5 * 2  # the same set-up resumes


@pytest.mark.parametrize("text, message", [("0-99", "outside 0..3"), ("a,b", "ranges like"), ("", "ranges like")])
def test_bad_splits(text, message):
    with pytest.raises(UserError, match=message):
        parse_splits(text, 4)


def test_bad_conditions():
    with pytest.raises(UserError, match=r"outside \[0, 1\]"):
        grid.make_conditions([0.1, 1.2], [], "erasure")
    with pytest.raises(UserError, match="need a physical link"):
        grid.make_conditions([], [10.0], "dropout")
    with pytest.raises(UserError, match="no channel condition"):
        grid.make_conditions([], [], "erasure")
    with pytest.raises(UserError, match="give --snrs"):
        grid.make_conditions([0.1], [], "erasure", [0.2])
    crossed = grid.make_conditions([], [10.0, 20.0], "erasure", [0.2])
    assert [(c.snr_db, c.withheld) for c in crossed[1:]] == [(10.0, 0.0), (10.0, 0.2), (20.0, 0.0), (20.0, 0.2)]
    assert parse_splits("0-1,3", 4) == [0, 1, 3]


def sweep_cli(tiny_model_dir, sample_txt, output, *extra):
    return [sys.executable, "add_noise.py", "--sweep", "--model", str(tiny_model_dir), "--dataset", str(sample_txt),
            "--max-tokens", "300", "--context-length", "64", "--splits", "all", "--output", str(output), "--no-progress",
            *extra]


def test_cli_sweep_survives_sigkill(tiny_model_dir, sample_txt, tmp_path):
    output = tmp_path / "sweep.csv"
    args = sweep_cli(tiny_model_dir, sample_txt, output, "--draws", "12", "--snrs", "8,15", "--batch-size", "4")
    victim = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:  # kill as soon as some rows are on disk
        if output.exists() and len(output.read_text().splitlines()) > 1:
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    finished = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    rows = rows_by_key(output)  # asserts no duplicates
    assert len(rows) == 4 * (1 + (8 + 2) * 12)  # every cell: splits x (clean + (8 p + 2 SNR) x draws)
    assert "perplexity pooled over draws" in finished.stdout
    with open(sweep.cells_path(output), newline="") as f:  # the cell table with its intervals, beside the rows
        table = list(csv.DictReader(f))
    assert len(table) == 4 * (1 + 8 + 2) and all(int(c["draws"]) == (1 if c["dropout"] == "0.0" else 12) for c in table)
    impaired = [c for c in table if c["dropout"] != "0.0"]
    assert all(float(c["ppl_low"]) < float(c["ppl"]) < float(c["ppl_high"]) for c in impaired)


@pytest.mark.parametrize("extra, message", [
    (["--splits", "7"], "outside 0..3"),
    (["--dropouts", "0.1,2"], "outside [0, 1]"),
    (["--draws", "0"], "0 must be an integer >= 1"),
    (["--snrs", "10", "--link", "dropout"], "need a physical link"),
])
def test_cli_bad_grid_fails_before_any_work(tiny_model_dir, sample_txt, tmp_path, extra, message):
    output = tmp_path / "never.csv"
    r = run_script(*sweep_cli(tiny_model_dir, sample_txt, output, *extra)[1:])
    assert r.returncode == 2 and message in r.stderr and not output.exists()


def test_sweep_figure_from_a_results_file(tiny_llama, tmp_path):
    import figures

    run(tiny_llama, tmp_path / figures.SWEEP_FILE)
    assert figures.main(["--only", "sweep", "--results-dir", str(tmp_path), "--figures-dir", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f" / "sweep.png").stat().st_size > 10_000
    (tmp_path / figures.SWEEP_FILE).write_text("split,ppl\n1,2\n")
    assert figures.main(["--only", "sweep", "--results-dir", str(tmp_path), "--figures-dir", str(tmp_path / "f")]) == 1


def test_cli_verify_spot_checks_a_sweep_with_a_sub_grid(tiny_model_dir, sample_txt, tmp_path):
    """A sub-grid recomputes the full sweep's rows (masks seeded per seed, window and draw), the first
    check with the edge's layers compiled (--compile); a changed number in the reference is caught,
    and so is a row the reference lacks."""
    full = tmp_path / "full.csv"
    base = ["--dropouts", "0.1,0.3", "--draws", "3", "--batch-size", "5"]
    assert subprocess.run(sweep_cli(tiny_model_dir, sample_txt, full, *base), cwd=ROOT, capture_output=True).returncode == 0
    check = sweep_cli(tiny_model_dir, sample_txt, tmp_path / "check.csv", "--dropouts", "0.3", "--draws", "3",
                      "--batch-size", "2", "--verify", str(full))
    check[check.index("--splits") + 1] = "2"
    ok = subprocess.run(check + ["--compile"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "verified: 4 rows agree" in ok.stdout  # clean + 3 draws at split 2
    assert "edge layers compiled" in ok.stderr

    lines = full.read_text().splitlines()
    header = lines[0].split(",")
    nll = header.index("nll")
    for i, line in enumerate(lines[1:], start=1):  # nudge the NLL of split 2, p = 0.3, draw 1
        fields = line.split(",")
        if (fields[header.index("split")], fields[header.index("dropout")], fields[header.index("draw")]) == ("2", "0.3", "1"):
            fields[nll] = repr(float(fields[nll]) * 1.001)
            lines[i] = ",".join(fields)
    full.write_text("\n".join(lines) + "\n")
    bad = subprocess.run(check, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "split 2, draw 1: nll" in bad.stderr

    check[check.index("--dropouts") + 1] = "0.2"  # a row the reference does not have
    check[check.index("--output") + 1] = str(tmp_path / "other.csv")
    missing = subprocess.run(check, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and "has no row for split 2" in missing.stderr

    check[check.index("--verify") + 1] = str(ROOT / "results" / "rsm_fit_paper.csv")  # a CSV, not a sweep's
    other = subprocess.run(check, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert other.returncode == 1 and "is not a sweep results file" in other.stderr
