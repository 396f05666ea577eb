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
from layersplit import UserError, channel, grid, schema, sweep, sweep_store
from layersplit.cli import parse_splits
from layersplit.segments import SplitModel

TOKENS = torch.randint(0, 300, (150,), generator=torch.Generator().manual_seed(3))
RUN = {
    "model": "tiny",
    "dataset": "random",
    "tokens": 150,
    "context_length": 64,
    "stride": 64,
    "dtype": "float32",
    "seed": 0,
}


def config(splits=(0, 1, 2, 3), draws=2, batch_size=16, seed=0) -> sweep.SweepConfig:
    conditions = grid.make_conditions([0.1, 0.4], [], "erasure") + [
        grid.Condition("erasure", snr_db=12.0),
        grid.Condition("erasure", snr_db=12.0, withheld=0.25),
        grid.Condition("awgn", snr_db=5.0),
    ]
    template = channel.LinkConfig(snr_db=0.0, elements_per_packet=8, fading="rayleigh")
    return sweep.SweepConfig(list(splits), conditions, draws, seed, 64, 64, template, batch_size)


def run(model, path, runner=sweep.run_fast, **kwargs) -> dict:
    cfg = config(**kwargs)
    store = sweep_store.ResultsStore(path, RUN, sweep_store.link_columns(cfg.link_template))
    runner(model, TOKENS, cfg, store, progress=False)
    return rows_by_key(path)


def rows_by_key(path) -> dict:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keys = [schema.row_key(r) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate rows"
    return dict(zip(keys, rows))


def assert_same_numbers(a: dict, b: dict, rel=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        for column in (
            "nll",
            "token_accuracy",
            "scored_tokens",
            "dropout",
            "windows",
            "nll_window_sd",
            "accuracy_window_sd",
        ):
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


def window_rows(per_window, accuracy=None, window_scores=True):
    """Sweep rows of one cell from a (draws x windows) array of per-window mean NLLs (100 tokens each)."""
    import numpy as np

    accuracy = np.full_like(per_window, 0.4) if accuracy is None else accuracy
    rows = []
    for d, (w, a) in enumerate(zip(per_window, accuracy)):
        row = {
            "split": 1,
            "link": "dropout",
            "snr_db": "",
            "dropout": "0.1",
            "withheld": "0.0",
            "protect": "0",
            "draw": d,
            "nll": w.mean(),
            "token_accuracy": a.mean(),
            "scored_tokens": 100 * len(w),
            "windows": len(w),
            "nll_window_sd": w.std(ddof=1) if len(w) > 1 else "",
            "accuracy_window_sd": a.std(ddof=1) if len(w) > 1 else "",
        }
        if window_scores:
            row["window_scores"] = [(i, float(x), float(y)) for i, (x, y) in enumerate(zip(w, a))]
        rows.append(row)
    return rows


def test_cells_interval_takes_the_window_as_its_unit():
    import math

    import numpy as np
    from scipy import stats

    from layersplit import cells

    rng = np.random.default_rng(0)
    text = rng.normal(3.0, 0.5, size=6)  # 6 windows whose text sets most of the NLL, shared by the 4 draws
    per_window = text + rng.normal(0, 0.05, size=(4, 6))
    accuracy = rng.uniform(0.3, 0.5, size=(4, 6))
    pooled = cells.pool(window_rows(per_window, accuracy))
    means = per_window.mean(axis=0)  # one value per window: the unit
    half = stats.t.ppf(0.975, 5) * means.std(ddof=1) / math.sqrt(6)
    assert pooled["nll"] == pytest.approx(per_window.mean()) and pooled["nll_ci95"] == pytest.approx(half)
    assert pooled["interval_unit"] == "windows" and (pooled["draws"], pooled["samples"]) == (4, 24)
    assert pooled["ppl_low"] == pytest.approx(math.exp(per_window.mean() - half))
    acc_means = accuracy.mean(axis=0)
    assert pooled["accuracy_ci95"] == pytest.approx(stats.t.ppf(0.975, 5) * acc_means.std(ddof=1) / math.sqrt(6))
    # the 24 samples taken as independent, as before, give a far narrower interval on shared text
    naive = stats.t.ppf(0.975, 23) * per_window.std(ddof=1) / math.sqrt(24)
    assert half > 1.5 * naive
    # no windows file: the conservative bound (the mean of the draws' SDs over windows), never narrower
    bound = cells.pool(window_rows(per_window, accuracy, window_scores=False))
    sds = per_window.std(axis=1, ddof=1)
    assert bound["interval_unit"] == "windows (bound)"
    assert bound["nll_ci95"] == pytest.approx(stats.t.ppf(0.975, 5) * sds.mean() / math.sqrt(6))
    assert bound["nll_ci95"] >= half
    # one window: over the draws, and it says so
    one = cells.pool(window_rows(per_window[:, :1]))
    assert one["interval_unit"] == "draws (one window)"
    assert one["nll_ci95"] == pytest.approx(stats.t.ppf(0.975, 3) * per_window[:, 0].std(ddof=1) / 2)
    assert cells.pool(window_rows(per_window[:1, :1]))["interval_unit"] == "none"
    single = cells.pool(window_rows(per_window[:1, :1]))  # one sample: no interval, not an infinite one
    assert math.isnan(single["nll_ci95"]) and math.isnan(single["ppl_low"]) and math.isnan(single["ppl_high"])
    # token weighting: a draw with twice the tokens counts twice in the pooled value
    rows = window_rows(per_window)
    weighted = cells.pool(
        [{**rows[0], "nll": 1.0, "scored_tokens": 200}, {**rows[1], "nll": 4.0, "scored_tokens": 100}]
    )
    assert weighted["nll"] == pytest.approx(2.0)


def test_paired_comparison_is_over_windows_of_the_same_text_and_masks():
    import math

    import numpy as np
    from scipy import stats

    from layersplit import cells

    rng = np.random.default_rng(1)
    text = rng.normal(3.0, 0.8, size=8)
    a = text + rng.normal(0.10, 0.05, size=(3, 8))  # split A: 0.1 worse on every window, small noise
    b = text + rng.normal(0.0, 0.05, size=(3, 8))
    rows_a, rows_b = window_rows(a), [{**r, "split": 2} for r in window_rows(b)]
    found = cells.paired(rows_a, rows_b)
    diff = (a - b).mean(axis=0)
    assert found["difference"] == pytest.approx(diff.mean()) and found["interval_unit"] == "windows"
    assert found["ci95"] == pytest.approx(stats.t.ppf(0.975, 7) * diff.std(ddof=1) / math.sqrt(8))
    assert found["significant"] and (found["pairs"], found["units"]) == (24, 8)
    # the marginal intervals overlap although the paired difference is clear: pairing removes the text
    pa, pb = cells.pool(rows_a), cells.pool(rows_b)
    assert pa["nll"] - pa["nll_ci95"] < pb["nll"] + pb["nll_ci95"]
    (compared,) = cells.compare_splits(rows_a + rows_b, 1, 2)
    assert compared["condition"] == "p = 0.1" and compared["difference"] == found["difference"]
    with pytest.raises(ValueError, match="windows file"):
        cells.paired(window_rows(a, window_scores=False), rows_b)


def test_the_windows_file_holds_each_rows_windows(tiny_llama, tmp_path):
    import math

    from layersplit import schema

    rows = run(tiny_llama, tmp_path / "r.csv")
    windows = schema.read_windows(schema.windows_path(tmp_path / "r.csv"))
    assert windows.keys() == rows.keys()
    for key, row in rows.items():
        scores = windows[key]
        assert [w for w, _, _ in scores] == list(range(int(row["windows"])))
        nll = [x for _, x, _ in scores]  # equal-token windows but the first: the row's NLL is near their mean
        assert sum(nll) / len(nll) == pytest.approx(float(row["nll"]), rel=0.02)
        if len(nll) > 1:
            mean = sum(nll) / len(nll)
            sd = math.sqrt(sum((x - mean) ** 2 for x in nll) / (len(nll) - 1))
            assert sd == pytest.approx(float(row["nll_window_sd"]), rel=1e-6)
    # the naive path writes the same windows
    run(tiny_llama, tmp_path / "n.csv", runner=sweep.run_naive)
    naive = schema.read_windows(schema.windows_path(tmp_path / "n.csv"))
    assert naive.keys() == windows.keys()
    for key in windows:
        assert [w for w, _, _ in naive[key]] == [w for w, _, _ in windows[key]]
        assert [x for _, x, _ in naive[key]] == pytest.approx([x for _, x, _ in windows[key]], rel=1e-4)


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
        assert float(withheld["tx_s"]) == pytest.approx(
            0.75 * float(rows[(split, "erasure", "12.0", "", "0.0", 0, 0)]["tx_s"]), rel=0.02
        )
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
    assert same_windows(path, tmp_path / "ref.csv")


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
    with open(schema.windows_path(path), "a") as f:
        f.write("1,dropout,,0.1")  # in both files
    assert_same_numbers(run(tiny_llama, path), reference)
    assert same_windows(path, tmp_path / "ref.csv")


def same_windows(a, b) -> bool:
    from layersplit import schema

    return schema.read_windows(schema.windows_path(a)) == schema.read_windows(schema.windows_path(b))


def test_another_configuration_is_refused(tiny_llama, tmp_path):
    path = tmp_path / "r.csv"
    run(tiny_llama, path, splits=(0,))
    with pytest.raises(UserError, match="another configuration .*seed: 0 in the file, 1 now"):
        sweep_store.ResultsStore(path, {**RUN, "seed": 1})
    link = sweep_store.link_columns(config().link_template)
    with pytest.raises(UserError, match="modulation: qpsk in the file, 16qam now"):
        sweep_store.ResultsStore(path, RUN, {**link, "modulation": "16qam"})
    assert len(sweep_store.ResultsStore(path, RUN, link).rows) == 1 + 5 * 2  # the same set-up resumes


def test_only_rows_that_carry_the_link_setup_are_compared(tiny_llama, tmp_path):
    """Rows of the original's p and of the NR link carry no uncoded set-up (Link.rows_carry_setup): a file
    of them resumes whatever the modulation or packets asked now."""
    path, template = tmp_path / "r.csv", config().link_template
    cfg = sweep.SweepConfig([0], grid.make_conditions([0.1], [20.0], "nr"), 1, 0, 64, 64, template, 16)
    store = sweep_store.ResultsStore(path, RUN, sweep_store.link_columns(template, "nr"))
    sweep.run_fast(tiny_llama, TOKENS, cfg, store, progress=False)
    other = {**sweep_store.link_columns(template), "modulation": "16qam", "elements_per_packet": "64"}
    assert [r["link"] for r in sweep_store.ResultsStore(path, RUN, other).rows] == ["dropout", "dropout", "nr"]


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
    return [
        sys.executable,
        "add_noise.py",
        "--sweep",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(sample_txt),
        "--max-tokens",
        "300",
        "--context-length",
        "64",
        "--splits",
        "all",
        "--output",
        str(output),
        "--no-progress",
        *extra,
    ]


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
    with open(schema.cells_path(output), newline="") as f:  # the cell table with its intervals, beside the rows
        table = list(csv.DictReader(f))
    assert len(table) == 4 * (1 + 8 + 2) and all(int(c["draws"]) == (1 if c["dropout"] == "0.0" else 12) for c in table)
    impaired = [c for c in table if c["dropout"] != "0.0"]
    assert all(float(c["ppl_low"]) < float(c["ppl"]) < float(c["ppl_high"]) for c in impaired)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--splits", "7"], "outside 0..3"),
        (["--dropouts", "0.1,2"], "outside [0, 1]"),
        (["--draws", "0"], "0 must be an integer >= 1"),
        (["--snrs", "10", "--link", "dropout"], "need a physical link"),
    ],
)
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
    assert (
        subprocess.run(sweep_cli(tiny_model_dir, sample_txt, full, *base), cwd=ROOT, capture_output=True).returncode
        == 0
    )
    check = sweep_cli(
        tiny_model_dir,
        sample_txt,
        tmp_path / "check.csv",
        "--dropouts",
        "0.3",
        "--draws",
        "3",
        "--batch-size",
        "2",
        "--verify",
        str(full),
    )
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
        if (fields[header.index("split")], fields[header.index("dropout")], fields[header.index("draw")]) == (
            "2",
            "0.3",
            "1",
        ):
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
    check[check.index("--output") + 1] = str(tmp_path / "never.csv")
    other = subprocess.run(check, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "is not a sweep results file" in other.stderr  # bad input, before any work
    assert not (tmp_path / "never.csv").exists()


def test_cells_cli_compares_two_splits_and_refuses_bad_input(tiny_llama, tmp_path):
    import json

    run(tiny_llama, tmp_path / "r.csv")
    done = run_script(
        "-m", "layersplit.cells", str(tmp_path / "r.csv"), "--compare", "1,3", "--json", str(tmp_path / "c.json")
    )
    assert done.returncode == 0, done.stderr
    found = json.loads((tmp_path / "c.json").read_text())["comparisons"]
    assert len(found) == 6 and all(c["interval_unit"] == "windows" and c["units"] == 3 for c in found)
    assert "p = 0.1" in done.stdout and "+-" in done.stdout
    for args, message in ((["--compare", "1"], "give two splits"), (["--compare", "1,9"], "no condition with both")):
        bad = run_script("-m", "layersplit.cells", str(tmp_path / "r.csv"), *args)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr
