"""A run folder knows the surrogate it was trained on by content (surrogate_sha256 in config.json): after
a refit written over the same path, training into the old folder is refused (before any run of the
command trains) instead of reusing policies of the old surrogate, and evaluating them says so. Also:
the training scripts limit numpy's BLAS threads with torch's. Tiny budgets on LayerSplit-Paper-v0."""

from __future__ import annotations

import dataclasses
import json

import pytest
import threadpoolctl
import torch

import train_rsm
from layersplit import UserError, envs, run_folders, training
from layersplit import surrogate as rsm

ENV = "LayerSplit-Paper-v0"
PARAMS = {"n_steps": 50, "batch_size": 100, "n_epochs": 2}


def refit(path, scale: float = 1.01, mean_shift: float = 0.0):
    """The shipped paper surrogate with one weight matrix scaled (a stand-in for a refit) written to path."""
    s = rsm.load(envs.PAPER_RSM)
    net = s.net
    with torch.no_grad():
        net.fc[0].weight.mul_(scale)
    s = dataclasses.replace(s, net=net, in_mean=s.in_mean + mean_shift)  # __post_init__ rereads the weights
    s.save(path)
    return rsm.load(path)


def job(run, rsm_path, seed=0, budget=400):
    return dict(
        env_id=ENV,
        algo="ppo",
        run_dir=run,
        total_timesteps=budget,
        seed=seed,
        n_envs=8,
        hyperparameters=PARAMS,
        env_kwargs={"rsm_path": str(rsm_path)},
        progress=False,
    )


def test_the_fingerprint_is_of_the_content_not_the_file(tmp_path):
    shipped = rsm.load(envs.PAPER_RSM)
    shipped.save(tmp_path / "copy.pth")
    assert rsm.load(tmp_path / "copy.pth").fingerprint == shipped.fingerprint
    scaled, shifted = refit(tmp_path / "a.pth", scale=1.01), refit(tmp_path / "b.pth", 1.0, mean_shift=0.1)
    assert len({shipped.fingerprint, scaled.fingerprint, shifted.fingerprint}) == 3
    assert envs.surrogate_fingerprint(ENV, rsm_path=str(tmp_path / "a.pth")) == scaled.fingerprint
    assert envs.surrogate_fingerprint("LayerSplit-LLM-v0") is None


def test_a_run_of_another_surrogate_is_not_resumed_or_reused(tmp_path):
    path, run = tmp_path / "rsm.pth", tmp_path / "run"
    rsm.load(envs.PAPER_RSM).save(path)
    training.train(**job(run, path))
    config = json.loads((run / run_folders.CONFIG_FILE).read_text())
    assert config["surrogate_sha256"] == rsm.load(envs.PAPER_RSM).fingerprint
    refit(path)  # written over the file the run names
    for attempt in (lambda: training.check_run_folder(**job(run, path)), lambda: training.train(**job(run, path))):
        with pytest.raises(
            UserError, match=r"surrogate_sha256: \w{12} in the file, \w{12} now; the surrogate changed .*refit\?\)"
        ):
            attempt()
    config.pop("surrogate_sha256")  # a folder from before the settings named the surrogate
    (run / run_folders.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"surrogate_sha256: None in the file, \w{12} now, not recorded there\)"):
        training.check_run_folder(**job(run, path))
    config["surrogate_sha256"] = rsm.load(envs.PAPER_RSM).fingerprint
    (run / run_folders.CONFIG_FILE).write_text(json.dumps(config))
    rsm.load(envs.PAPER_RSM).save(path)  # the surrogate it was trained on: reused as before
    policy, summary = training.train(**job(run, path))
    assert summary["timesteps"] == 400 and not hasattr(policy, "learn")  # a SavedPolicy, not retrained


def test_train_refuses_a_run_folder_of_another_surrogate_before_any_run_trains(tmp_path, capsys):
    path, parent = tmp_path / "rsm.pth", tmp_path / "runs"
    rsm.load(envs.PAPER_RSM).save(path)
    common = ["--run-dir", str(parent), "--rsm", str(path), "--total-timesteps", "400", "--rollout", "400"]
    common += ["--batch", "100", "--checkpoint-every", "0", "--eval-episodes", "0", "--no-progress"]
    assert train_rsm.main(["train", "--seeds", "1", *common]) == 0
    refit(path)
    capsys.readouterr()
    assert train_rsm.main(["train", "--seeds", "0,1", *common]) == 2  # seed 0 would train first
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ppo_s1" in err[0] and "surrogate_sha256" in err[0], err
    assert not (parent / "ppo_s0").exists()


def test_evaluating_a_run_on_another_surrogate_says_so(tmp_path, capsys):
    path, run = tmp_path / "rsm.pth", tmp_path / "run"
    rsm.load(envs.PAPER_RSM).save(path)
    training.train(**job(run, path))
    args = ["evaluate", str(run), "--eval-episodes", "2", "--results-dir", str(tmp_path / "r")]
    capsys.readouterr()
    assert train_rsm.main(args) == 0
    assert "warning" not in capsys.readouterr().err
    refit(path)
    assert train_rsm.main(args) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warned) == 1 and str(run) in warned[0] and "another surrogate" in warned[0]


def test_the_training_scripts_limit_numpys_blas_threads_with_torchs(tmp_path):
    before = torch.get_num_threads()
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        training.limit_threads(1)
        blas = [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]
        assert blas and set(blas) == {1} and torch.get_num_threads() == 1
    torch.set_num_threads(before)
