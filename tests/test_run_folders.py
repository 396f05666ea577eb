"""Run folders hold no code: policies and checkpoints are safetensors files with a JSON description,
rebuilt without unpickling; a resumed run is the one Stable-Baselines3 resumes from its own zip; a
folder whose zip carries code runs none of it through any script; a damaged config.json is set aside
and rebuilt from the newest save; and the learning curve shows a stretch trained twice once. Tiny
budgets on LayerSplit-Paper-v0 (no LLM)."""

from __future__ import annotations

import base64
import csv
import json
import pathlib
import pickle
import shutil
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import serve
import train
import train_rsm
from layersplit import UserError, agents, run_folders, training

ENV = "LayerSplit-Paper-v0"
PARAMS = {
    "ppo": {"n_steps": 50, "batch_size": 100, "n_epochs": 2},
    "a2c": {"n_steps": 5},
    "dqn": {"learning_starts": 100, "buffer_size": 2000, "train_freq": 4, "target_update_interval": 200},
}


def fit(run, budget, algo="ppo", checkpoint_every=400, trust_zip=False):
    return training.train(
        ENV,
        algo,
        run,
        budget,
        0,
        8,
        PARAMS[algo],
        checkpoint_every=checkpoint_every,
        progress=False,
        trust_zip=trust_zip,
    )


def progress_rows(run):
    """progress.csv without its clock columns (time/*), as a list of dicts."""
    with open(run / "progress.csv", newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in csv.DictReader(f)]


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn"])
def test_resuming_from_the_safetensors_save_is_resuming_from_stable_baselines3s_zip(tmp_path, algo):
    first = tmp_path / "first"
    _, summary = fit(first, 400, algo, checkpoint_every=0)  # policy.safetensors and policy.zip, from one agent
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    shutil.copytree(first, ours)
    shutil.copytree(first, theirs)
    (theirs / run_folders.POLICY_FILE).unlink()  # only SB3's zip left: read with trust_zip
    a, summary_a = fit(ours, 800, algo, checkpoint_every=0)
    b, summary_b = fit(theirs, 800, algo, checkpoint_every=0, trust_zip=True)
    assert summary_a["resumed_from"] == summary_b["resumed_from"] == summary["timesteps"]  # DQN overshoots 400
    state_a, state_b = a.policy.state_dict(), b.policy.state_dict()
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert progress_rows(ours) == progress_rows(theirs)  # counters and the episode window too


def test_a_saved_policy_acts_as_the_trained_agent(tmp_path):
    model, _ = fit(tmp_path / "run", 400, checkpoint_every=0)
    loaded = run_folders.load_policy(tmp_path / "run")
    assert isinstance(loaded, agents.SavedPolicy) and loaded.algo == "ppo" and loaded.num_timesteps == 400
    grid = torch.cartesian_prod(torch.linspace(0.0, 0.3, 7), torch.arange(1.0, 11.0)).numpy()
    assert (loaded.predict(grid, deterministic=True)[0] == model.predict(grid, deterministic=True)[0]).all()


def poison(zip_path: pathlib.Path, marker: pathlib.Path) -> None:
    """Rewrite an SB3 zip so that loading it creates `marker`: a cloudpickle-serialised entry of its
    data JSON, as SB3 itself writes them, whose unpickling calls Path.touch."""

    class Payload:
        def __reduce__(self):
            return pathlib.Path.touch, (marker,)

    with zipfile.ZipFile(zip_path) as z:
        files = {name: z.read(name) for name in z.namelist()}
    data = json.loads(files["data"])
    data["lr_schedule"] = {
        ":type:": "<class 'function'>",
        ":serialized:": base64.b64encode(pickle.dumps(Payload())).decode(),
    }
    files["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(zip_path, "w") as z:
        for name, content in files.items():
            z.writestr(name, content)


@pytest.fixture
def malicious_run(tmp_path):
    """A LayerSplit-Paper-v0 run folder (train_rsm.py's layout) whose only saves are SB3 zips, the
    final one poisoned; returns (parent folder, run folder, marker)."""
    parent, marker = tmp_path / "runs", tmp_path / "pwned"
    assert (
        train_rsm.main(
            [
                "train",
                "--run-dir",
                str(parent),
                "--total-timesteps",
                "400",
                "--rollout",
                "400",
                "--batch",
                "100",
                "--checkpoint-every",
                "0",
                "--eval-episodes",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    run = parent / "ppo_s0"
    (run / run_folders.POLICY_FILE).unlink()
    poison(run / run_folders.SB3_POLICY_FILE, marker)
    return parent, run, marker


def test_the_poisoned_zip_runs_code_when_trusted(malicious_run):
    """The control: the payload is real, so the refusals below are what keeps it from running."""
    _, run, marker = malicious_run
    try:
        run_folders.load_policy(run, trust_zip=True)
    except UserError:
        pass  # the payload ran before the load went wrong, if it did
    assert marker.exists()


def one_line_refusal(capsys, code, marker):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert "--trust-zip" in err[0] and not marker.exists()


def test_no_script_runs_code_from_a_run_folder(malicious_run, tiny_model_dir, sample_txt, tmp_path, capsys):
    parent, run, marker = malicious_run
    capsys.readouterr()
    code = train_rsm.main(["evaluate", str(run), "--eval-episodes", "2", "--results-dir", str(tmp_path / "r")])
    one_line_refusal(capsys, code, marker)
    # resuming: the same command that made the run
    code = train_rsm.main(
        [
            "train",
            "--run-dir",
            str(parent),
            "--total-timesteps",
            "800",
            "--rollout",
            "400",
            "--batch",
            "100",
            "--checkpoint-every",
            "0",
            "--eval-episodes",
            "0",
            "--no-progress",
        ]
    )
    one_line_refusal(capsys, code, marker)
    code = train.main(
        [
            "--eval-only",
            "--eval-episodes",
            "1",
            "--best-static-episodes",
            "1",
            "--model",
            str(tiny_model_dir),
            "--dataset",
            str(sample_txt),
            "--tokens",
            "16",
            "--compare",
            str(run),
            "--run-dir",
            str(tmp_path / "llm"),
            "--results",
            str(tmp_path / "llm.json"),
            "--no-progress",
        ]
    )
    one_line_refusal(capsys, code, marker)
    wireless = tmp_path / "wireless"  # serve.py ue --policy's path wants a policy of the SNR environments
    shutil.copytree(run, wireless)
    config = json.loads((wireless / run_folders.CONFIG_FILE).read_text())
    (wireless / run_folders.CONFIG_FILE).write_text(json.dumps(config | {"env": "LayerSplit-Wireless-v0"}))
    code = serve.main(["ue", "--prompt", "Hello", "--policy", str(wireless)])
    one_line_refusal(capsys, code, marker)
    assert not marker.exists() and not (tmp_path / "llm.json").exists()


def test_a_save_names_classes_only_from_the_safe_list(tmp_path):
    fit(tmp_path / "run", 400, checkpoint_every=0)
    spec, tensors = agents.load_save(tmp_path / "run" / run_folders.POLICY_FILE)
    spec["policy_kwargs"]["activation_fn"] = {"class": "system"}
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={agents.SPEC_KEY: json.dumps(spec)})
    with pytest.raises(UserError, match="names the class 'system'"):
        run_folders.load_policy(tmp_path / "bad.safetensors")


def test_a_damaged_config_is_set_aside_and_rebuilt_from_the_newest_save(tmp_path, capsys):
    run = tmp_path / "run"
    fit(run, 800)  # checkpoints at 400 and 800
    for name in (run_folders.POLICY_FILE, run_folders.SB3_POLICY_FILE, run_folders.SUMMARY_FILE):
        (run / name).unlink()  # killed after the last checkpoint
    config = (run / run_folders.CONFIG_FILE).read_text()
    (run / run_folders.CONFIG_FILE).write_text(config[: len(config) // 2])  # cut short
    capsys.readouterr()
    model, summary = fit(run, 1200)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{run / run_folders.CONFIG_FILE}:" in err[0] and "config.json.corrupt" in err[0]
    assert summary["resumed_from"] == 800 and model.num_timesteps == 1200
    assert json.loads((run / run_folders.CONFIG_FILE).read_text()) == json.loads(config) | {"total_timesteps": 1200}
    (run / run_folders.CONFIG_FILE).write_text("{")
    with pytest.raises(UserError, match="another configuration"):  # the save's own copy still guards the run
        training.train(ENV, "ppo", run, 1200, 1, 8, PARAMS["ppo"], progress=False)


def test_run_config_names_the_file_and_line(tmp_path):
    (tmp_path / run_folders.CONFIG_FILE).write_text('{\n  "env": "LayerSplit-Paper-v0",\n  oops\n}')
    with pytest.raises(UserError, match=r"config\.json:3: not valid JSON"):
        run_folders.run_config(tmp_path)
    (tmp_path / run_folders.CONFIG_FILE).write_text('{"env": "LayerSplit-Paper-v0"}')
    with pytest.raises(UserError, match=r"config\.json:1: not a training run's settings"):
        run_folders.run_config(tmp_path)


def test_the_learning_curve_shows_a_stretch_trained_twice_once(tmp_path):
    run = tmp_path / "run"
    fit(run, 1200)  # checkpoints at 400, 800, 1200
    for name in (run_folders.POLICY_FILE, run_folders.SB3_POLICY_FILE, run_folders.SUMMARY_FILE):
        (run / name).unlink()
    (run / "checkpoints" / "model_1200_steps.safetensors").unlink()  # killed just before the last save
    fit(run, 1200)  # 800 -> 1200 again
    log = run_folders.episode_log(run)
    assert len(log) == 1200 // 5 and log["timesteps"].is_monotonic_increasing  # 5-step episodes, each once
