"""Every script refuses bad input the same way: exit status 2, one last line naming what is valid, no
traceback, and nothing overwritten. One table, run in-process (a subprocess per case would spend its
time importing transformers); tests/test_add_noise_cli.py and friends check the real exit code path."""
from __future__ import annotations

import csv
import importlib.util

import pytest

from conftest import ROOT

from layersplit import sweep

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
    good_row = {c: "1" for c in sweep.COLUMNS} | {"model": "m", "dataset": "d", "dtype": "float32", "link": "dropout",
                                                 "modulation": "qpsk", "fading": "nakagami", "block_fading": "True"}
    for name, damage in (("text-split.csv", {"split": "abc"}), ("text-nll.csv", {"nll": "oops"}),
                         ("unknown-link.csv", {"link": "carrier-pigeon"})):
        with (folder / name).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sweep.COLUMNS)
            writer.writeheader()
            writer.writerow(good_row)
            writer.writerow(good_row | damage)
    (folder / "notes.txt").write_text("my notes\nwithout a final newline")  # not a sweep: must stay whole
    with (folder / "short-row.csv").open("w") as f:
        f.write(",".join(sweep.COLUMNS) + "\n" + ",".join(good_row[c] for c in sweep.COLUMNS) + "\ngarbage,line\n")
    return folder


NO_DIR = "/proc/nope"  # a folder nobody can create


def cases():
    """(id, script, arguments, what the last line must say); {model}, {data} and {bad} are filled in."""
    tiny = ["--model", "{model}", "--dataset", "{data}", "--split", "1", "--no-progress"]
    return [
        # add_noise.py
        ("dataset-not-utf8", "add_noise.py", ["--model", "{model}", "--split", "1", "--dataset", "{bad}/random-bytes.txt"], "is not UTF-8 text"),
        ("generate-empty", "add_noise.py", tiny + ["--generate", ""], "--generate needs a non-empty prompt"),
        ("generate-blank", "add_noise.py", tiny + ["--generate", "   "], "--generate needs a non-empty prompt"),
        ("split-too-deep", "add_noise.py", tiny + ["--split", "4"], "valid 0..3"),
        ("split-negative", "add_noise.py", tiny + ["--split", "-1"], "valid 0..3"),
        ("dropout-above-1", "add_noise.py", tiny + ["--dropout", "1.5"], "1.5 is not a probability in [0, 1]"),
        ("dropout-text", "add_noise.py", tiny + ["--dropout", "lots"], "'lots' is not a number"),
        ("max-tokens-negative", "add_noise.py", tiny + ["--max-tokens", "-5"], "-5 must be an integer >= 0"),
        ("context-zero", "add_noise.py", tiny + ["--context-length", "0"], "0 must be an integer >= 1"),
        ("stride-zero", "add_noise.py", tiny + ["--stride", "0"], "0 must be an integer >= 1"),
        ("max-new-tokens-zero", "add_noise.py", tiny + ["--generate", "Hi", "--max-new-tokens", "0"], "must be an integer >= 1"),
        ("link-without-snr", "add_noise.py", tiny + ["--link", "awgn"], "--link awgn needs --snr-db"),
        ("dropout-and-snr", "add_noise.py", tiny + ["--snr-db", "10", "--dropout", "0.1"], "not both"),
        ("snr-nan", "add_noise.py", tiny + ["--snr-db", "nan"], "'nan' is not a finite number"),
        ("nakagami-m-small", "add_noise.py", tiny + ["--snr-db", "10", "--nakagami-m", "0.2"], "use 0.5..1e+06"),
        ("bandwidth-negative", "add_noise.py", tiny + ["--snr-db", "10", "--bandwidth-hz", "-1"], "bandwidth_hz must be a positive"),
        ("sweep-output-not-a-sweep", "add_noise.py", tiny + ["--sweep", "--splits", "0-3", "--output", "{bad}/notes.txt"],
         "not a sweep results file"),
        ("sweep-draws-zero", "add_noise.py", tiny + ["--sweep", "--draws", "0"], "0 must be an integer >= 1"),
        ("sweep-batch-zero", "add_noise.py", tiny + ["--sweep", "--batch-size", "0"], "0 must be an integer >= 1"),
        ("sweep-batch-word", "add_noise.py", tiny + ["--sweep", "--batch-size", "many"], "'many' is not"),
        ("sweep-mask-device", "add_noise.py", tiny + ["--sweep", "--mask-device", "gpu"], "invalid choice: 'gpu'"),
        ("verify-without-sweep", "add_noise.py", tiny + ["--verify", "x.csv"], "--verify checks a sweep"),
        ("verify-missing", "add_noise.py", tiny + ["--sweep", "--output", "{tmp}/s.csv", "--verify", "{tmp}/none.csv"], "no such results file"),
        ("verify-itself", "add_noise.py", tiny + ["--sweep", "--output", "{tmp}/s.csv", "--verify", "{tmp}/s.csv"], "other than --output"),
        ("sweep-splits-outside", "add_noise.py", tiny + ["--sweep", "--splits", "9", "--output", "{tmp}/s.csv"], "outside 0..3"),
        ("sweep-splits-text", "add_noise.py", tiny + ["--sweep", "--splits", "deep", "--output", "{tmp}/s.csv"], "use 'all' or 0-based split layers"),
        ("sweep-dropouts-text", "add_noise.py", tiny + ["--sweep", "--dropouts", "x", "--output", "{tmp}/s.csv"], "use comma-separated numbers"),
        ("sweep-with-dropout", "add_noise.py", tiny + ["--sweep", "--dropout", "0.1"], "--sweep takes its grid"),
        ("sweep-output-text-split", "add_noise.py", tiny + ["--sweep", "--splits", "1-2", "--output", "{bad}/text-split.csv"], "text-split.csv:3: a damaged row (split is 'abc'"),
        ("sweep-output-short-row", "add_noise.py", tiny + ["--sweep", "--splits", "1-2", "--output", "{bad}/short-row.csv"], "short-row.csv:3: a damaged row (2 fields"),
        ("sweep-output-unknown-link", "add_noise.py", tiny + ["--sweep", "--splits", "1-2", "--output", "{bad}/unknown-link.csv"], "link 'carrier-pigeon' is not one of"),
        ("sweep-output-unwritable", "add_noise.py", tiny + ["--sweep", "--output", f"{NO_DIR}/s.csv"], "cannot write there"),
        ("unknown-dataset", "add_noise.py", ["--model", "{model}", "--split", "1", "--dataset", "no-such-corpus"], "unknown dataset 'no-such-corpus'"),
        ("mcs-rule-on-ray", "add_noise.py", ["--sweep", "--link", "nr", "--snrs", "5", "--mcs-rule", "reliable", "--ray", "local"],
         "does not reach Ray's workers"),
        # train_rsm.py fit
        ("fit-epochs-negative", "train_rsm.py", ["fit", "--epochs", "-1", "--wireless-sweep", "", "--output", "{tmp}/x.pth"], "-1 must be an integer >= 1"),
        ("fit-holdout-above-1", "train_rsm.py", ["fit", "--holdout", "1.5", "--output", "{tmp}/x.pth"], "strictly between 0 and 1"),
        ("fit-holdout-zero", "train_rsm.py", ["fit", "--holdout", "0", "--output", "{tmp}/x.pth"], "strictly between 0 and 1"),
        ("fit-sweep-text-nll", "train_rsm.py", ["fit", "--sweep", "{bad}/text-nll.csv", "--wireless-sweep", "",
                                                "--output", "{tmp}/x.pth", "--results-dir", "{tmp}"], "text-nll.csv:3: nll is 'oops', not a number"),
        ("fit-sweep-unknown-link", "train_rsm.py", ["fit", "--sweep", "{bad}/unknown-link.csv", "--wireless-sweep", "",
                                                    "--output", "{tmp}/x.pth", "--results-dir", "{tmp}"], "link is 'carrier-pigeon'"),
        ("fit-sweep-missing", "train_rsm.py", ["fit", "--sweep", "{tmp}/none.csv", "--wireless-sweep", "", "--output", "{tmp}/x.pth"], "no sweep results at"),
        ("fit-output-unwritable", "train_rsm.py", ["fit", "--output", f"{NO_DIR}/x.pth"], "cannot write there"),
        # train_rsm.py train / evaluate
        ("train-eval-episodes-negative", "train_rsm.py", ["train", "--eval-episodes", "-3", "--total-timesteps", "800"], "-3 must be an integer >= 0"),
        ("train-n-envs-zero", "train_rsm.py", ["train", "--n-envs", "0"], "0 must be an integer >= 1"),
        ("train-timesteps-zero", "train_rsm.py", ["train", "--total-timesteps", "0"], "0 must be an integer >= 1"),
        ("train-gamma-above-1", "train_rsm.py", ["train", "--gamma", "1.5"], "must be a discount in (0, 1]"),
        ("train-seeds-empty", "train_rsm.py", ["train", "--seeds", "", "--run-dir", "{tmp}"], "give one or more comma-separated integers"),
        ("train-seeds-fraction", "train_rsm.py", ["train", "--seeds", "1.5", "--run-dir", "{tmp}"], "give one or more comma-separated integers"),
        ("train-rollout-not-multiple", "train_rsm.py", ["train", "--rollout", "401", "--run-dir", "{tmp}"], "must be a multiple of --n-envs"),
        ("train-unknown-algo", "train_rsm.py", ["train", "--algo", "sarsa", "--run-dir", "{tmp}"], "unknown algorithm 'sarsa'"),
        ("train-unknown-env", "train_rsm.py", ["train", "--env", "CartPole-v1", "--run-dir", "{tmp}"], "CartPole-v1"),
        ("train-rsm-missing", "train_rsm.py", ["train", "--rsm", "{tmp}/none.pth", "--run-dir", "{tmp}"], "none.pth"),
        ("evaluate-not-a-run", "train_rsm.py", ["evaluate", "{tmp}"], "is not a training run folder"),
        # train.py
        ("llm-tokens-one", "train.py", ["--tokens", "1"], "--tokens must be at least 2"),
        ("llm-timesteps-zero", "train.py", ["--total-timesteps", "0"], "0 must be an integer >= 1"),
        ("llm-results-unwritable", "train.py", ["--results", f"{NO_DIR}/x.json"], "cannot write there"),
        ("llm-run-dir-is-file", "train.py", ["--run-dir", "{bad}/random-bytes.txt"], "is not a folder"),
        ("llm-eval-only-no-episodes", "train.py", ["--eval-only", "--eval-episodes", "0"], "--eval-only needs"),
        # the channel module's CLI
        ("channel-table-unwritable", "layersplit/channel.py", ["--table", f"{NO_DIR}/x.csv"], "cannot write there"),
        ("channel-mc-symbols-zero", "layersplit/channel.py", ["--mc-symbols", "0"], "must be >= 1"),
        ("channel-nakagami-m-small", "layersplit/channel.py", ["--nakagami-m", "0.1"], "nakagami_m must be >= 0.5"),
        ("channel-modulation", "layersplit/channel.py", ["--modulation", "1024qam"], "invalid choice"),
        # figures.py
        ("figures-results-missing", "figures.py", ["--results-dir", "{tmp}/none"], "is not a folder"),
        ("figures-dir-unwritable", "figures.py", ["--figures-dir", f"{NO_DIR}/f"], "cannot write there"),
        ("figures-unknown", "figures.py", ["--only", "nope"], "invalid choice"),
        ("figures-claims-missing", "figures.py", ["--claims", "{tmp}/none.md", "--results-dir", "{tmp}"],
         "no such file"),
        # serve.py
        ("edge-port-too-large", "serve.py", ["edge", "--port", "99999"], "65535"),
        ("edge-port-negative", "serve.py", ["edge", "--port", "-1"], "65535"),
        # the benchmarks
        ("bench-sweep-tokens-zero", "bench/sweep.py", ["--tokens", "0"], "0 must be an integer >= 1"),
        ("bench-sweep-draws-text", "bench/sweep.py", ["--draws", "many"], "'many' is not an integer"),
        ("bench-rl-steps-negative", "bench/rl.py", ["--steps", "-1"], "-1 must be an integer >= 1"),
        ("bench-rl-seeds-text", "bench/rl.py", ["--ablation", "--seeds", "a,b"], "give one or more comma-separated integers"),
        ("bench-rl-rsm-missing", "bench/rl.py", ["--rsm", "{tmp}/none.pth"], "no such file"),
        ("bench-rl-surrogate-missing", "bench/rl.py", ["--ablation", "--surrogates", "{tmp}/none.pth"], "no such file"),
        ("bench-rl-record-foreign", "bench/rl.py", ["--ablation", "--surrogates", "shipped", "--output",
                                                    "{bad}/random-bytes.txt"], "not an ablation record"),
        ("bench-rl-cost-unwritable", "bench/rl.py", ["--cost-output", f"{NO_DIR}/c.json"], "cannot write there"),
        # the cells CLI
        ("cells-nothing-asked", "layersplit/cells.py", ["{bad}/text-nll.csv"], "give --compare A,B or --write-cells"),
        ("cells-compare-text", "layersplit/cells.py", ["{bad}/text-nll.csv", "--compare", "a,b"], "give two splits"),
        ("cells-not-a-sweep", "layersplit/cells.py", ["{bad}/random-bytes.txt", "--write-cells"], "random-bytes.txt"),
        ("cells-missing", "layersplit/cells.py", ["{tmp}/none.csv", "--write-cells"], "no such file"),
        ("bench-serve-prompts-zero", "bench/serve.py", ["--prompts", "0"], "--prompts must be in"),
        ("bench-serve-wires", "bench/serve.py", ["--wires", "fp8"], "--wires: choose among"),
        ("bench-serve-threads-negative", "bench/serve.py", ["--threads", "-1"], "-1 is not a thread count here"),
    ]


@pytest.mark.parametrize("name, script_name, argv, message", cases(), ids=[c[0] for c in cases()])
def test_bad_input_gives_one_line_and_exit_2(name, script_name, argv, message, files, tiny_model_dir, sample_txt,
                                            tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default output path can only ever land in this temporary folder
    fill = {"{model}": str(tiny_model_dir), "{data}": str(sample_txt), "{bad}": str(files), "{tmp}": str(tmp_path)}
    argv = [next((a.replace(k, v) for k, v in fill.items() if k in a), a) for a in argv]
    before = {p: p.stat().st_mtime_ns for p in files.iterdir()}
    code, err = run_main(script_name, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert lines and "error" in lines[-1] and message in lines[-1], lines[-1:]
    assert before == {p: p.stat().st_mtime_ns for p in files.iterdir()}, "a bad input changed a file"
    assert not list(tmp_path.glob("*.pth")), "a bad input wrote a surrogate"



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
