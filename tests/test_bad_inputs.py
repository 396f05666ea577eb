"""Every script refuses bad input the same way: exit status 2, one last line naming what is valid, no
traceback, and nothing overwritten. One table, run in-process (a subprocess per case would spend its
time importing transformers); tests/test_add_noise_cli.py and friends check the real exit code path."""

from __future__ import annotations

import csv
import importlib.util

import pytest

from conftest import ROOT

from layersplit import schema

SCRIPTS = {}


def script(name: str):
    """A top-level script imported as a module (once), so that its main(argv) can be called."""
    if name not in SCRIPTS and name.startswith("layersplit/"):  # a module with its own CLI (python -m)
        SCRIPTS[name] = importlib.import_module(name.removesuffix(".py").replace("/", "."))
    if name not in SCRIPTS:
        spec = importlib.util.spec_from_file_location(name.removesuffix(".py").replace("/", "_"), ROOT / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        SCRIPTS[name] = module
    return SCRIPTS[name]


def run_main(name: str, argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = script(name).main(argv)
    except SystemExit as e:  # argparse's error path
        code = e.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The bad files of the table: undecodable text, sweep files with damaged rows."""
    folder = tmp_path_factory.mktemp("bad")
    (folder / "random-bytes.txt").write_bytes(bytes(range(128, 256)) * 8)
    good_row = {c: "1" for c in schema.COLUMNS} | {
        "model": "m",
        "dataset": "d",
        "dtype": "float32",
        "link": "dropout",
        "modulation": "qpsk",
        "fading": "nakagami",
        "block_fading": "True",
    }
    for name, damage in (
        ("text-split.csv", {"split": "abc"}),
        ("text-nll.csv", {"nll": "oops"}),
        ("unknown-link.csv", {"link": "carrier-pigeon"}),
    ):
        with (folder / name).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=schema.COLUMNS)
            writer.writeheader()
            writer.writerow(good_row)
            writer.writerow(good_row | damage)
    (folder / "notes.txt").write_text("my notes\nwithout a final newline")  # not a sweep: must stay whole
    with (folder / "short-row.csv").open("w") as f:
        f.write(",".join(schema.COLUMNS) + "\n" + ",".join(good_row[c] for c in schema.COLUMNS) + "\ngarbage,line\n")
    return folder


NO_DIR = "/proc/nope"  # a folder nobody can create
SEED_OVER = str(2**32)  # one past what numpy's and SB3's seeding take
HUGE = "9" * 30  # an integer beyond int64
LONG_SPLITS = ",".join(map(str, range(100_000)))  # a 588,889-character list
MAX_MESSAGE = 300  # characters of the error line at most: a long list is summarised, never echoed whole


def cases():
    """(id, script, arguments, what the last line must say); {model}, {data} and {bad} are filled in."""
    tiny = ["--model", "{model}", "--dataset", "{data}", "--split", "1", "--no-progress"]
    return [
        # add_noise.py
        (
            "dataset-not-utf8",
            "add_noise.py",
            ["--model", "{model}", "--split", "1", "--dataset", "{bad}/random-bytes.txt"],
            "is not UTF-8 text",
        ),
        ("generate-empty", "add_noise.py", tiny + ["--generate", ""], "--generate needs a non-empty prompt"),
        ("generate-blank", "add_noise.py", tiny + ["--generate", "   "], "--generate needs a non-empty prompt"),
        ("split-too-deep", "add_noise.py", tiny + ["--split", "4"], "valid 0..3"),
        ("split-negative", "add_noise.py", tiny + ["--split", "-1"], "valid 0..3"),
        ("dropout-above-1", "add_noise.py", tiny + ["--dropout", "1.5"], "1.5 is not a probability in [0, 1]"),
        ("dropout-text", "add_noise.py", tiny + ["--dropout", "lots"], "'lots' is not a number"),
        ("max-tokens-negative", "add_noise.py", tiny + ["--max-tokens", "-5"], "-5 must be an integer >= 0"),
        ("context-zero", "add_noise.py", tiny + ["--context-length", "0"], "0 must be an integer >= 1"),
        ("stride-zero", "add_noise.py", tiny + ["--stride", "0"], "0 must be an integer >= 1"),
        (
            "max-new-tokens-zero",
            "add_noise.py",
            tiny + ["--generate", "Hi", "--max-new-tokens", "0"],
            "must be an integer >= 1",
        ),
        ("link-without-snr", "add_noise.py", tiny + ["--link", "awgn"], "--link awgn needs --snr-db"),
        ("dropout-and-snr", "add_noise.py", tiny + ["--snr-db", "10", "--dropout", "0.1"], "not both"),
        ("snr-nan", "add_noise.py", tiny + ["--snr-db", "nan"], "'nan' is not a finite number"),
        ("nakagami-m-small", "add_noise.py", tiny + ["--snr-db", "10", "--nakagami-m", "0.2"], "use 0.5..1e+06"),
        (
            "bandwidth-negative",
            "add_noise.py",
            tiny + ["--snr-db", "10", "--bandwidth-hz", "-1"],
            "bandwidth_hz must be a positive",
        ),
        (
            "sweep-output-not-a-sweep",
            "add_noise.py",
            tiny + ["--sweep", "--splits", "0-3", "--output", "{bad}/notes.txt"],
            "not a sweep results file",
        ),
        ("sweep-draws-zero", "add_noise.py", tiny + ["--sweep", "--draws", "0"], "0 must be an integer >= 1"),
        ("sweep-batch-zero", "add_noise.py", tiny + ["--sweep", "--batch-size", "0"], "0 must be an integer >= 1"),
        ("sweep-batch-word", "add_noise.py", tiny + ["--sweep", "--batch-size", "many"], "'many' is not"),
        ("sweep-mask-device", "add_noise.py", tiny + ["--sweep", "--mask-device", "gpu"], "invalid choice: 'gpu'"),
        ("verify-without-sweep", "add_noise.py", tiny + ["--verify", "x.csv"], "--verify checks a sweep"),
        (
            "verify-missing",
            "add_noise.py",
            tiny + ["--sweep", "--output", "{tmp}/s.csv", "--verify", "{tmp}/none.csv"],
            "no such results file",
        ),
        (
            "verify-itself",
            "add_noise.py",
            tiny + ["--sweep", "--output", "{tmp}/s.csv", "--verify", "{tmp}/s.csv"],
            "other than --output",
        ),
        (
            "sweep-splits-outside",
            "add_noise.py",
            tiny + ["--sweep", "--splits", "9", "--output", "{tmp}/s.csv"],
            "outside 0..3",
        ),
        (
            "sweep-splits-text",
            "add_noise.py",
            tiny + ["--sweep", "--splits", "deep", "--output", "{tmp}/s.csv"],
            "use 'all' or 0-based split layers",
        ),
        (
            "sweep-dropouts-text",
            "add_noise.py",
            tiny + ["--sweep", "--dropouts", "x", "--output", "{tmp}/s.csv"],
            "use comma-separated numbers",
        ),
        ("sweep-with-dropout", "add_noise.py", tiny + ["--sweep", "--dropout", "0.1"], "--sweep takes its grid"),
        (
            "sweep-output-text-split",
            "add_noise.py",
            tiny + ["--sweep", "--splits", "1-2", "--output", "{bad}/text-split.csv"],
            "text-split.csv:3: a damaged row (split is 'abc'",
        ),
        (
            "sweep-output-short-row",
            "add_noise.py",
            tiny + ["--sweep", "--splits", "1-2", "--output", "{bad}/short-row.csv"],
            "short-row.csv:3: a damaged row (2 fields",
        ),
        (
            "sweep-output-unknown-link",
            "add_noise.py",
            tiny + ["--sweep", "--splits", "1-2", "--output", "{bad}/unknown-link.csv"],
            "link is 'carrier-pigeon', not one of",
        ),
        (
            "sweep-output-unwritable",
            "add_noise.py",
            tiny + ["--sweep", "--output", f"{NO_DIR}/s.csv"],
            "cannot write there",
        ),
        (
            "unknown-dataset",
            "add_noise.py",
            ["--model", "{model}", "--split", "1", "--dataset", "no-such-corpus"],
            "unknown dataset 'no-such-corpus'",
        ),
        ("protect-path-unknown", "add_noise.py", tiny + ["--protect-path", "pigeon"], "invalid choice: 'pigeon'"),
        ("residual-read-unknown", "add_noise.py", tiny + ["--residual-read", "guess"], "invalid choice: 'guess'"),
        # add_noise.py: numbers at parse time
        ("seed-over", "add_noise.py", tiny + ["--seed", SEED_OVER], "0..4294967295"),
        ("seed-negative", "add_noise.py", tiny + ["--seed", "-1"], "-1 is not a seed"),
        ("seed-nan", "add_noise.py", tiny + ["--seed", "nan"], "'nan' is not an integer"),
        ("seed-huge", "add_noise.py", tiny + ["--seed", HUGE], "is too large"),
        ("snr-1e308", "add_noise.py", tiny + ["--snr-db", "1e308"], "outside the SNRs modelled: use -50..100 dB"),
        ("snr-minus-1e308", "add_noise.py", tiny + ["--snr-db=-1e308"], "outside the SNRs modelled: use -50..100 dB"),
        ("snr-inf", "add_noise.py", tiny + ["--snr-db", "inf"], "'inf' is not a finite number"),
        ("snr-text", "add_noise.py", tiny + ["--snr-db", "loud"], "'loud' is not a number"),
        (
            "nakagami-m-huge",
            "add_noise.py",
            tiny + ["--snr-db", "10", "--fading", "nakagami", "--nakagami-m", "1e308"],
            "use 0.5..1e+06",
        ),
        ("bandwidth-inf", "add_noise.py", tiny + ["--snr-db", "10", "--bandwidth-hz", "inf"], "not a finite number"),
        (
            "elements-per-packet-huge",
            "add_noise.py",
            tiny + ["--snr-db", "10", "--elements-per-packet", "99999999999999"],
            "use 1..1048576",
        ),
        ("bits-per-element-huge", "add_noise.py", tiny + ["--snr-db", "10", "--bits-per-element", "1000"], "use 1..64"),
        ("header-bits-huge", "add_noise.py", tiny + ["--snr-db", "10", "--header-bits", HUGE], "is too large"),
        ("max-tokens-huge", "add_noise.py", tiny + ["--max-tokens", HUGE], "is too large"),
        ("split-text", "add_noise.py", tiny + ["--split", "deep"], "'deep' is not an integer"),
        ("protect-too-many", "add_noise.py", tiny + ["--protect", "100000"], "a token has only 64 elements"),
        (
            "stride-over-context",
            "add_noise.py",
            tiny + ["--context-length", "64", "--stride", "128"],
            "--stride 128 is longer than --context-length 64",
        ),
        (
            "sweep-stride-over-context",
            "add_noise.py",
            tiny + ["--sweep", "--splits", "1", "--context-length", "64", "--stride", "65", "--output", "{tmp}/s.csv"],
            "never be scored",
        ),
        # add_noise.py --sweep: lists and outputs, refused before the results file exists
        (
            "sweep-snrs-5000",
            "add_noise.py",
            tiny + ["--sweep", "--splits", "1", "--snrs", "5000", "--output", "{tmp}/s.csv"],
            "5000 dB is outside the SNRs modelled",
        ),
        (
            "sweep-snrs-minus-1e308",
            "add_noise.py",
            tiny + ["--sweep", "--splits", "1", "--snrs=-1e308", "--output", "{tmp}/s.csv"],
            "is outside the SNRs modelled",
        ),
        (
            "sweep-snrs-nan",
            "add_noise.py",
            tiny + ["--sweep", "--splits", "1", "--snrs", "5,nan", "--output", "{tmp}/s.csv"],
            "values must be finite",
        ),
        (
            "sweep-protects-too-many",
            "add_noise.py",
            tiny + ["--sweep", "--splits", "1", "--snrs", "5", "--protects", "100000", "--output", "{tmp}/s.csv"],
            "a token has only 64 elements",
        ),
        (
            "sweep-protects-fraction",
            "add_noise.py",
            tiny + ["--sweep", "--splits", "1", "--protects", "1.5", "--output", "{tmp}/s.csv"],
            "use comma-separated integers >= 0",
        ),
        (
            "sweep-withheld-above-1",
            "add_noise.py",
            tiny + ["--sweep", "--splits", "1", "--snrs", "5", "--withheld", "2", "--output", "{tmp}/s.csv"],
            "outside [0, 1]",
        ),
        (
            "sweep-dropouts-above-1",
            "add_noise.py",
            tiny + ["--sweep", "--splits", "1", "--dropouts", "0.1,7", "--output", "{tmp}/s.csv"],
            "outside [0, 1]",
        ),
        (
            "sweep-splits-3000000",
            "add_noise.py",
            tiny + ["--sweep", "--splits", "0-3000000", "--output", "{tmp}/s.csv"],
            "splits 4-3000000 are outside 0..3",
        ),
        (
            "sweep-splits-long-list",
            "add_noise.py",
            tiny + ["--sweep", "--splits", LONG_SPLITS, "--output", "{tmp}/s.csv"],
            "(588889 characters): splits 4-99999 are outside 0..3",
        ),
        (
            "sweep-splits-backwards",
            "add_noise.py",
            tiny + ["--sweep", "--splits", "3-1", "--output", "{tmp}/s.csv"],
            "runs backwards: write 1-3",
        ),
        (
            "sweep-draws-huge",
            "add_noise.py",
            tiny + ["--sweep", "--draws", HUGE, "--output", "{tmp}/s.csv"],
            "is too large",
        ),
        (
            "sweep-verify-cells",
            "add_noise.py",
            tiny + ["--sweep", "--output", "{tmp}/s.csv", "--verify", "{tmp}/s_cells.csv"],
            "other than --output",
        ),
        (
            "sweep-verify-windows",
            "add_noise.py",
            tiny + ["--sweep", "--output", "{tmp}/s.csv", "--verify", "{tmp}/s_windows.csv"],
            "other than --output",
        ),
        (
            "sweep-output-template",
            "add_noise.py",
            tiny + ["--sweep", "--output", "{tmp}/s{x}.csv"],
            "only {model} may stand in braces",
        ),
        ("sweep-output-folder", "add_noise.py", tiny + ["--sweep", "--output", "{tmp}"], "a folder, not a file"),
        # train_rsm.py fit
        (
            "fit-epochs-negative",
            "train_rsm.py",
            ["fit", "--epochs", "-1", "--wireless-sweep", "", "--output", "{tmp}/x.pth"],
            "-1 must be an integer >= 1",
        ),
        (
            "fit-holdout-above-1",
            "train_rsm.py",
            ["fit", "--holdout", "1.5", "--output", "{tmp}/x.pth"],
            "strictly between 0 and 1",
        ),
        (
            "fit-holdout-zero",
            "train_rsm.py",
            ["fit", "--holdout", "0", "--output", "{tmp}/x.pth"],
            "strictly between 0 and 1",
        ),
        (
            "fit-sweep-text-nll",
            "train_rsm.py",
            [
                "fit",
                "--sweep",
                "{bad}/text-nll.csv",
                "--wireless-sweep",
                "",
                "--output",
                "{tmp}/x.pth",
                "--results-dir",
                "{tmp}",
            ],
            "text-nll.csv:3: nll is 'oops', not a number",
        ),
        (
            "fit-sweep-unknown-link",
            "train_rsm.py",
            [
                "fit",
                "--sweep",
                "{bad}/unknown-link.csv",
                "--wireless-sweep",
                "",
                "--output",
                "{tmp}/x.pth",
                "--results-dir",
                "{tmp}",
            ],
            "link is 'carrier-pigeon'",
        ),
        (
            "fit-later-sweep-missing",
            "train_rsm.py",
            [
                "fit",
                "--sweep",
                str(ROOT / "results" / "sweep_smollm2-135m.csv"),
                "--output",
                "{tmp}/x.pth",
                "--results-dir",
                "{tmp}/res",
            ],
            "no sweep results at results/sweep_wireless",
        ),  # before the first fit: nothing written
        (
            "fit-sweep-missing",
            "train_rsm.py",
            ["fit", "--sweep", "{tmp}/none.csv", "--wireless-sweep", "", "--output", "{tmp}/x.pth"],
            "no sweep results at",
        ),
        ("fit-output-unwritable", "train_rsm.py", ["fit", "--output", f"{NO_DIR}/x.pth"], "cannot write there"),
        ("fit-seed-over", "train_rsm.py", ["fit", "--seed", SEED_OVER, "--output", "{tmp}/x.pth"], "is not a seed"),
        ("fit-epochs-huge", "train_rsm.py", ["fit", "--epochs", HUGE, "--output", "{tmp}/x.pth"], "is too large"),
        (
            "fit-holdout-nan",
            "train_rsm.py",
            ["fit", "--holdout", "nan", "--output", "{tmp}/x.pth"],
            "not a finite number",
        ),
        (
            "fit-outputs-shared",
            "train_rsm.py",
            ["fit", "--output", "{tmp}/x.pth", "--wireless-output", "{tmp}/x.pth"],
            "is also --output",
        ),
        (
            "fit-nr-output-shared",
            "train_rsm.py",
            ["fit", "--output", "{tmp}/x.pth", "--nr-wireless-output", "{tmp}/x.pth"],
            "is also --output",
        ),
        (
            "fit-output-over-sweep",
            "train_rsm.py",
            ["fit", "--sweep", "{bad}/text-nll.csv", "--output", "{bad}/text-nll.csv", "--wireless-sweep", ""],
            "is the input --sweep",
        ),
        (
            "fit-output-over-report",
            "train_rsm.py",
            ["fit", "--output", "{tmp}/rsm_fit_paper.json", "--results-dir", "{tmp}"],
            "is also --output",
        ),
        ("fit-results-dir-unwritable", "train_rsm.py", ["fit", "--results-dir", f"{NO_DIR}/r"], "cannot write there"),
        ("tune-seed-over", "train_rsm.py", ["tune", "--seed", SEED_OVER], "is not a seed"),
        ("tune-eval-seed-negative", "train_rsm.py", ["tune", "--eval-seed", "-1"], "is not a seed"),
        ("tune-runs-dir-unwritable", "train_rsm.py", ["tune", "--runs-dir", f"{NO_DIR}/t"], "cannot write there"),
        # train_rsm.py train / evaluate
        (
            "train-eval-episodes-negative",
            "train_rsm.py",
            ["train", "--eval-episodes", "-3", "--total-timesteps", "800"],
            "-3 must be an integer >= 0",
        ),
        ("train-n-envs-zero", "train_rsm.py", ["train", "--n-envs", "0"], "0 must be an integer >= 1"),
        ("train-timesteps-zero", "train_rsm.py", ["train", "--total-timesteps", "0"], "0 must be an integer >= 1"),
        ("train-gamma-above-1", "train_rsm.py", ["train", "--gamma", "1.5"], "must be a discount in (0, 1]"),
        (
            "train-seeds-empty",
            "train_rsm.py",
            ["train", "--seeds", "", "--run-dir", "{tmp}"],
            "give one or more comma-separated integers",
        ),
        (
            "train-seeds-fraction",
            "train_rsm.py",
            ["train", "--seeds", "1.5", "--run-dir", "{tmp}"],
            "give one or more comma-separated integers",
        ),
        (
            "train-seeds-over",
            "train_rsm.py",
            ["train", "--seeds", f"0,{SEED_OVER}", "--run-dir", "{tmp}"],
            "in 0..4294967295",
        ),
        ("train-seed-negative", "train_rsm.py", ["train", "--seed", "-1", "--run-dir", "{tmp}"], "in 0..4294967295"),
        (
            "train-seeds-long",
            "train_rsm.py",
            ["train", "--seeds", LONG_SPLITS + ",x", "--run-dir", "{tmp}"],
            "(588891 characters): give one or more",
        ),
        (
            "train-eval-seed-over",
            "train_rsm.py",
            ["train", "--eval-seed", SEED_OVER, "--run-dir", "{tmp}"],
            "is not a seed",
        ),
        ("train-threads-huge", "train_rsm.py", ["train", "--torch-threads", "1000000"], "is not a thread count here"),
        (
            "train-threads-zero",
            "train_rsm.py",
            ["train", "--torch-threads", "0"],
            "is not a thread count here: use 1 to",
        ),
        ("train-gamma-nan", "train_rsm.py", ["train", "--gamma", "nan"], "'nan' is not a finite number"),
        ("train-timesteps-huge", "train_rsm.py", ["train", "--total-timesteps", HUGE], "is too large"),
        ("train-run-dir-unwritable", "train_rsm.py", ["train", "--run-dir", f"{NO_DIR}/r"], "cannot write there"),
        (
            "train-results-dir-unwritable",
            "train_rsm.py",
            ["train", "--results-dir", f"{NO_DIR}/r"],
            "cannot write there",
        ),
        (
            "evaluate-eval-seed-nan",
            "train_rsm.py",
            ["evaluate", "{tmp}", "--eval-seed", "nan"],
            "'nan' is not an integer",
        ),
        (
            "train-rollout-not-multiple",
            "train_rsm.py",
            ["train", "--rollout", "401", "--run-dir", "{tmp}"],
            "must be a multiple of --n-envs",
        ),
        (
            "train-unknown-algo",
            "train_rsm.py",
            ["train", "--algo", "sarsa", "--run-dir", "{tmp}"],
            "unknown algorithm 'sarsa'",
        ),
        ("train-unknown-env", "train_rsm.py", ["train", "--env", "CartPole-v1", "--run-dir", "{tmp}"], "CartPole-v1"),
        ("train-rsm-missing", "train_rsm.py", ["train", "--rsm", "{tmp}/none.pth", "--run-dir", "{tmp}"], "none.pth"),
        ("evaluate-not-a-run", "train_rsm.py", ["evaluate", "{tmp}"], "is not a training run folder"),
        # train.py
        ("llm-tokens-one", "train.py", ["--tokens", "1"], "--tokens must be at least 2"),
        ("llm-timesteps-zero", "train.py", ["--total-timesteps", "0"], "0 must be an integer >= 1"),
        ("llm-results-unwritable", "train.py", ["--results", f"{NO_DIR}/x.json"], "cannot write there"),
        ("llm-run-dir-is-file", "train.py", ["--run-dir", "{bad}/random-bytes.txt"], "is not a folder"),
        ("llm-eval-only-no-episodes", "train.py", ["--eval-only", "--eval-episodes", "0"], "--eval-only needs"),
        ("llm-seed-over", "train.py", ["--seed", SEED_OVER], "is not a seed"),
        ("llm-seed-nan", "train.py", ["--seed", "nan"], "'nan' is not an integer"),
        # was a segfault
        ("llm-threads-huge", "train.py", ["--torch-threads", "1000000"], "is not a thread count here"),
        ("llm-tokens-huge", "train.py", ["--tokens", HUGE], "is too large"),
        (
            "llm-results-in-run",
            "train.py",
            ["--run-dir", "{tmp}", "--results", "{tmp}/ppo_s0/summary.json"],
            "is one of the run's own files",
        ),
        (
            "llm-results-is-measurements",
            "train.py",
            ["--run-dir", "{tmp}", "--results", "{tmp}/eval_measurements.jsonl"],
            "is one of the run's own files",
        ),
        # the channel module's CLI
        ("channel-table-unwritable", "layersplit/channel_cli.py", ["--table", f"{NO_DIR}/x.csv"], "cannot write there"),
        ("channel-mc-symbols-zero", "layersplit/channel_cli.py", ["--mc-symbols", "0"], "must be >= 1"),
        ("channel-nakagami-m-small", "layersplit/channel_cli.py", ["--nakagami-m", "0.1"], "is not a Nakagami m here"),
        ("channel-modulation", "layersplit/channel_cli.py", ["--modulation", "1024qam"], "invalid choice"),
        ("channel-snr-1e308", "layersplit/channel_cli.py", ["--snr-db", "1e308"], "outside the SNRs modelled"),
        ("channel-snr-minus-1e308", "layersplit/channel_cli.py", ["--snr-db=-1e308"], "outside the SNRs modelled"),
        ("channel-seed-over", "layersplit/channel_cli.py", ["--seed", SEED_OVER], "in 0..4294967295"),
        ("channel-tokens-zero", "layersplit/channel_cli.py", ["--tokens", "0"], "0 must be an integer >= 1"),
        # the NR link's CLI (its lists and tables: tests/test_nr.py, tests/test_bad_files.py)
        ("nr-snr-5000", "layersplit/nr_cli.py", ["--snr-db", "5000"], "outside the SNRs modelled"),
        (
            "nr-table-snrs-1e308",
            "layersplit/nr_cli.py",
            ["--snrs", "1e308", "--table", "{tmp}/t.csv"],
            "outside the SNRs modelled",
        ),
        ("nr-check-snr-nan", "layersplit/nr_cli.py", ["--check", "14:nan"], "SNRs must lie in -50..100 dB"),
        ("nr-target-bler-nan", "layersplit/nr_cli.py", ["--target-bler", "nan"], "is not a finite number"),
        ("nr-seed-negative", "layersplit/nr_cli.py", ["--seed", "-1"], "in 0..4294967295"),
        ("nr-device-unknown", "layersplit/nr_cli.py", ["--check", "14:10", "--device", "tpu9"], "unknown device"),
        (
            "nr-tails-mcs-out-of-table",
            "layersplit/nr_cli.py",
            ["--tails", "{tmp}/t.csv", "--points", "30:5"],
            "MCS indices are 0-28",
        ),
        ("nr-tails-points-text", "layersplit/nr_cli.py", ["--tails", "{tmp}/t.csv", "--points", "7"], "MCS:SNR pairs"),
        (
            "nr-bler-table-folder",
            "layersplit/nr_cli.py",
            ["--check", "14:10", "--bler-table", "{bad}"],
            "is a folder, not an NR BLER table",
        ),
        (
            "nr-latency-table-with-bler-table",
            "layersplit/nr_cli.py",
            ["--latency-table", "{tmp}/l.csv", "--bler-table", "{bad}/random-bytes.txt"],
            "LAYERSPLIT_NR_BLER_TABLE",
        ),
        # figures.py
        ("figures-results-missing", "figures.py", ["--results-dir", "{tmp}/none"], "is not a folder"),
        ("figures-dir-unwritable", "figures.py", ["--figures-dir", f"{NO_DIR}/f"], "cannot write there"),
        ("figures-unknown", "figures.py", ["--only", "nope"], "invalid choice"),
        (
            "figures-claims-missing",
            "figures.py",
            ["--claims", "{tmp}/none.md", "--results-dir", "{tmp}"],
            "no such file",
        ),
        # serve.py
        ("edge-port-too-large", "serve.py", ["edge", "--port", "99999"], "65535"),
        ("edge-port-negative", "serve.py", ["edge", "--port", "-1"], "65535"),
        ("edge-threads-huge", "serve.py", ["edge", "--threads", "1000000"], "is not a thread count here"),
        ("edge-splits-text", "serve.py", ["edge", "--splits", "deep"], "use 'all' or 0-based split layers"),
        ("edge-splits-backwards", "serve.py", ["edge", "--splits", "9-2"], "runs backwards"),
        ("edge-max-queue-negative", "serve.py", ["edge", "--max-queue", "-1"], "--max-queue must be >= 0"),
        ("ue-seed-over", "serve.py", ["ue", "--seed", SEED_OVER], "is not a seed"),
        ("ue-threads-negative", "serve.py", ["ue", "--threads", "-1"], "is not a thread count here"),
        ("ue-snr-1e308", "serve.py", ["ue", "--snr-db", "1e308"], "use -50..100 dB, or inf"),
        ("ue-snr-minus-1e308", "serve.py", ["ue", "--snr-db=-1e308"], "use -50..100 dB, or inf"),
        ("ue-snr-mean-5000", "serve.py", ["ue", "--snr-mean", "5000"], "use -50..100 dB, or inf"),
        ("ue-snr-std-huge", "serve.py", ["ue", "--snr-std", "1e300"], "use 0..30 dB"),
        ("ue-snr-rho-nan", "serve.py", ["ue", "--snr-rho", "nan"], "not a finite number"),
        ("ue-protect-negative", "serve.py", ["ue", "--protect", "-1"], "-1 must be an integer >= 0"),
        ("ue-split-huge", "serve.py", ["ue", "--split", HUGE], "is too large"),
        # the benchmarks
        ("bench-sweep-tokens-zero", "bench/sweep.py", ["--tokens", "0"], "0 must be an integer >= 1"),
        ("bench-sweep-draws-text", "bench/sweep.py", ["--draws", "many"], "'many' is not an integer"),
        ("bench-sweep-profile-unwritable", "bench/sweep.py", ["--profile", f"{NO_DIR}/p.txt"], "cannot write there"),
        ("bench-sweep-profile-folder", "bench/sweep.py", ["--profile", "{tmp}"], "a folder, not a file"),
        ("bench-sweep-tokens-huge", "bench/sweep.py", ["--tokens", HUGE], "is too large"),
        ("bench-rl-steps-negative", "bench/rl.py", ["--steps", "-1"], "-1 must be an integer >= 1"),
        (
            "bench-rl-seeds-text",
            "bench/rl.py",
            ["--ablation", "--seeds", "a,b"],
            "give one or more comma-separated integers",
        ),
        ("bench-rl-rsm-missing", "bench/rl.py", ["--rsm", "{tmp}/none.pth"], "no such file"),
        ("bench-rl-surrogate-missing", "bench/rl.py", ["--ablation", "--surrogates", "{tmp}/none.pth"], "no such file"),
        (
            "bench-rl-record-foreign",
            "bench/rl.py",
            ["--ablation", "--surrogates", "shipped", "--output", "{bad}/random-bytes.txt"],
            "not an ablation record",
        ),
        ("bench-rl-cost-unwritable", "bench/rl.py", ["--cost-output", f"{NO_DIR}/c.json"], "cannot write there"),
        (
            "bench-rl-output-unwritable",
            "bench/rl.py",
            ["--ablation", "--output", f"{NO_DIR}/a.json"],
            "cannot write there",
        ),
        (
            "bench-rl-cost-is-output",
            "bench/rl.py",
            ["--output", "{tmp}/r.json", "--cost-output", "{tmp}/r.json"],
            "is also --output",
        ),
        ("bench-rl-seed-over", "bench/rl.py", ["--seed", SEED_OVER], "is not a seed"),
        ("bench-rl-seeds-over", "bench/rl.py", ["--ablation", "--seeds", f"1,{SEED_OVER}"], "in 0..4294967295"),
        # bench/protect_rule.py and bench/distributed.py
        (
            "bench-protect-output-unwritable",
            "bench/protect_rule.py",
            ["--output", f"{NO_DIR}/p.csv"],
            "cannot write there",
        ),
        (
            "bench-protect-snrs-5000",
            "bench/protect_rule.py",
            ["--snrs", "10,5000"],
            "5000 dB is outside the SNRs modelled",
        ),
        ("bench-protect-snrs-empty", "bench/protect_rule.py", ["--snrs", ""], "need one value or more"),
        ("bench-protect-ks-text", "bench/protect_rule.py", ["--ks", "4,many"], "use comma-separated integers >= 0"),
        ("bench-protect-ks-negative", "bench/protect_rule.py", ["--ks", "-4"], "use comma-separated integers >= 0"),
        (
            "bench-protect-splits-text",
            "bench/protect_rule.py",
            ["--splits", "deep"],
            "use 'all' or 0-based split layers",
        ),
        ("bench-protect-seed-over", "bench/protect_rule.py", ["--seed", SEED_OVER], "is not a seed"),
        (
            "bench-distributed-splits-text",
            "bench/distributed.py",
            ["--splits", "1-x"],
            "use 'all' or 0-based split layers",
        ),
        ("bench-distributed-draws-zero", "bench/distributed.py", ["--draws", "0"], "0 must be an integer >= 1"),
        # the cells CLI
        ("cells-nothing-asked", "layersplit/cells.py", ["{bad}/text-nll.csv"], "give --compare A,B or --write-cells"),
        ("cells-compare-text", "layersplit/cells.py", ["{bad}/text-nll.csv", "--compare", "a,b"], "give two splits"),
        ("cells-not-a-sweep", "layersplit/cells.py", ["{bad}/random-bytes.txt", "--write-cells"], "random-bytes.txt"),
        ("cells-missing", "layersplit/cells.py", ["{tmp}/none.csv", "--write-cells"], "no such file"),
        ("bench-serve-prompts-zero", "bench/decoding.py", ["--prompts", "0"], "--prompts must be in"),
        ("bench-serve-wires", "bench/decoding.py", ["--wires", "fp8"], "--wires: choose among"),
        ("bench-serve-threads-negative", "bench/decoding.py", ["--threads", "-1"], "-1 is not a thread count here"),
        ("bench-serve-threads-huge", "bench/decoding.py", ["--threads", "1000000"], "is not a thread count here"),
        (
            "bench-serve-fairness-unwritable",
            "bench/decoding.py",
            ["--fairness", "--fairness-output", f"{NO_DIR}/f.json"],
            "cannot write there",
        ),
        ("bench-serve-rounds-huge", "bench/decoding.py", ["--rounds", HUGE], "is too large"),
    ]


@pytest.mark.parametrize("name, script_name, argv, message", cases(), ids=[c[0] for c in cases()])
def test_bad_input_gives_one_line_and_exit_2(
    name, script_name, argv, message, files, tiny_model_dir, sample_txt, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # a default output path can only ever land in this temporary folder
    fill = {"{model}": str(tiny_model_dir), "{data}": str(sample_txt), "{bad}": str(files), "{tmp}": str(tmp_path)}
    argv = [next((a.replace(k, v) for k, v in fill.items() if k in a), a) for a in argv]
    before = {p: p.stat().st_mtime_ns for p in files.iterdir()}
    code, err = run_main(script_name, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert lines and "error" in lines[-1] and message in lines[-1], lines[-1:]
    assert sum("error:" in line for line in lines) == 1, lines  # the usage argparse prints above it aside
    assert len(lines[-1]) < MAX_MESSAGE, f"{len(lines[-1])} characters: {lines[-1][:200]}"
    assert before == {p: p.stat().st_mtime_ns for p in files.iterdir()}, "a bad input changed a file"
    assert not list(tmp_path.iterdir()), "a bad input created a file (a header-only CSV, a surrogate, a folder)"


def test_the_docs_count_this_table():
    """docs/reliability.md and docs/tests.md quote the size of the table above, per script."""
    import collections
    import re

    per = collections.Counter(script for _, script, _, _ in cases())
    benchmarks = sum(n for s, n in per.items() if s.startswith("bench/"))
    clis = sum(n for s, n in per.items() if s.startswith("layersplit/") or s == "figures.py")
    assert len({s for s in per if s.startswith("bench/")}) == 5
    assert sum(per.values()) == per["add_noise.py"] + per["train_rsm.py"] + per["serve.py"] + per["train.py"] + (
        benchmarks + clis
    )  # every script in one of the groups the text names

    def read(page: str) -> str:
        return re.sub(r"\s+", " ", (ROOT / "docs" / page).read_text(encoding="utf-8"))

    assert (
        f"is the table: {len(cases())} cases over add_noise.py ({per['add_noise.py']}), train_rsm.py "
        f"({per['train_rsm.py']}), serve.py ({per['serve.py']};" in read("reliability.md")
    )
    assert (
        f"train.py ({per['train.py']}), the five benchmarks ({benchmarks}), the channel, NR, cells and figures "
        f"CLIs ({clis})" in read("reliability.md")
    )
    assert f"the table of {len(cases())} bad inputs" in read("tests.md")


def test_a_surrogate_save_cut_short_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    """train_rsm.py fit writes over reward_predictor.pth: a failure mid-write must not leave half a file."""
    import numpy as np
    import torch

    from layersplit import surrogate

    x = np.random.default_rng(0).uniform([0.0, 1.0], [0.3, 10.0], (40, 2))
    rsm = surrogate.fit("paper", x, x[:, :1] * x[:, 1:], epochs=5)
    target = tmp_path / "reward_predictor.pth"
    rsm.save(target)
    before = target.read_bytes()

    def save_then_fail(obj, path):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(surrogate.UserError, match="cannot write the surrogate"):
        rsm.save(target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("LAYERSPLIT_NR_BLER_TABLE", "{bad}/random-bytes.txt", "LAYERSPLIT_NR_BLER_TABLE="),
        ("LAYERSPLIT_NR_BLER_TABLE", "{bad}", "LAYERSPLIT_NR_BLER_TABLE="),
        ("LAYERSPLIT_TOKENIZER", "{bad}/no-such-folder", "LAYERSPLIT_TOKENIZER="),
    ],
)
@pytest.mark.parametrize(
    "script_name, argv",
    [
        ("add_noise.py", ["--model", "{model}", "--dataset", "{data}", "--split", "1", "--no-progress"]),
        ("train_rsm.py", ["fit", "--output", "{tmp}/x.pth", "--results-dir", "{tmp}"]),
        ("train.py", ["--model", "{model}", "--run-dir", "{tmp}/runs", "--results", "{tmp}/r.json"]),
    ],
)
def test_a_bad_environment_variable_is_named_before_any_work(
    variable, value, message, script_name, argv, files, tiny_model_dir, sample_txt, tmp_path, capsys, monkeypatch
):
    """Environment variables are checked like options (cli.run_main): one line naming the variable, exit 2,
    nothing written."""
    monkeypatch.chdir(tmp_path)
    fill = {"{model}": str(tiny_model_dir), "{data}": str(sample_txt), "{bad}": str(files), "{tmp}": str(tmp_path)}
    argv = [next((a.replace(k, v) for k, v in fill.items() if k in a), a) for a in argv]
    monkeypatch.setenv(variable, value.replace("{bad}", str(files)))
    code, err = run_main(script_name, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and message in lines[0], lines
    assert not list(tmp_path.iterdir()), "a bad environment variable let the script write"
