"""Resuming a training run after a kill: no logged row is lost, and a damaged save is set aside
(not deleted) while training goes on from the newest readable one. Tiny budgets on
LayerSplit-Paper-v0 (no LLM): 8 envs x 50 steps = one PPO rollout, one progress row, per 400 steps."""

import csv
from collections import Counter

import pytest

from layersplit import UserError, run_folders, training

ENV, PARAMS = "LayerSplit-Paper-v0", {"n_steps": 50, "batch_size": 100, "n_epochs": 1}


def train(run, budget, checkpoint_every=400):
    return training.train(ENV, "ppo", run, budget, 0, 8, PARAMS, checkpoint_every=checkpoint_every, progress=False)


def kill(run):
    """The state a kill during training leaves: checkpoints and logs, but no final policy or summary.json."""
    (run / "policy.safetensors").unlink()
    (run / "policy.zip").unlink()
    (run / "summary.json").unlink()


def rows(path):
    # a row as its non-empty cells: the parts' column sets differ (the first rollout has no train/ keys)
    with open(path, newline="") as f:
        return [frozenset((k, v) for k, v in row.items() if v) for row in csv.DictReader(f)]


def truncate(path):
    """A save cut short, as a kill while it is written leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return data[: len(data) // 2]


def test_two_restarts_from_the_same_checkpoint_lose_no_progress_rows(tmp_path):
    run = tmp_path / "run"
    train(run, 800)  # checkpoints at 400 and 800, then killed
    kill(run)
    written = rows(run / "progress.csv")
    train(run, 1200, checkpoint_every=0)  # resumes from 800, killed before its next checkpoint
    kill(run)
    written += rows(run / "progress.csv")
    model, summary = train(run, 1200)  # resumes from 800 again: the second part is set aside too
    assert model.num_timesteps == 1200 and summary["resumed_from"] == 800
    written += rows(run / "progress.csv")
    kept = [row for path in run.glob("progress*.csv") for row in rows(path)]
    assert Counter(kept) == Counter(written)  # every row written, each exactly once
    steps = sorted(int(dict(row)["time/total_timesteps"]) for row in kept)
    assert steps == [400, 800, 1200, 1200]  # the abandoned part's row and the one that replaced it


def test_a_truncated_checkpoint_is_set_aside_and_training_resumes_from_the_previous_one(tmp_path, capsys):
    run = tmp_path / "run"
    train(run, 800)
    kill(run)
    bad = run / "checkpoints" / "model_800_steps.safetensors"
    half = truncate(bad)
    capsys.readouterr()
    model, summary = train(run, 1200)
    assert model.num_timesteps == 1200 and summary["resumed_from"] == 400
    aside = run / "checkpoints" / "model_800_steps.safetensors.corrupt"
    assert aside.read_bytes() == half  # set aside, nothing lost
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and aside.name in err[0]
    assert run_folders.latest_checkpoint(run).name == "model_1200_steps.safetensors"
    assert (
        run_folders.load_policy(run / "checkpoints" / "model_800_steps.safetensors", "ppo").num_timesteps == 800
    )  # saved anew


def test_with_no_readable_checkpoint_training_starts_over(tmp_path):
    run = tmp_path / "run"
    train(run, 800)
    kill(run)
    for path in (run / "checkpoints").glob("*.safetensors"):
        truncate(path)
    written = rows(run / "progress.csv")
    model, summary = train(run, 800)
    assert model.num_timesteps == 800 and summary["resumed_from"] == 0
    assert len(list((run / "checkpoints").glob("*.corrupt"))) == 2
    assert rows(run / "progress_until_0.csv") == written  # the first try's log, kept though started over


def test_a_finished_run_with_a_corrupt_policy_resumes_from_its_newest_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    train(run, 800)  # finished
    truncate(run / "policy.safetensors")
    truncate(run / "checkpoints" / "model_800_steps.safetensors")
    capsys.readouterr()
    model, summary = train(run, 800)
    assert model.num_timesteps == 800 and summary["resumed_from"] == 400  # retrained from 400 to 800
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "policy.safetensors" in err[0] and "model_800_steps.safetensors" in err[1]
    assert (run / "policy.safetensors.corrupt").exists() and (
        run / "checkpoints" / "model_800_steps.safetensors.corrupt"
    ).exists()
    assert run_folders.load_policy(run).num_timesteps == 800
    model, summary = train(run, 800)  # now whole again: reused as is
    assert summary["resumed_from"] == 400


def test_load_policy_on_a_corrupt_file_is_one_clear_error(tmp_path):
    run = tmp_path / "run"
    train(run, 400, checkpoint_every=0)
    truncate(run / "policy.safetensors")
    with pytest.raises(UserError) as e:
        run_folders.load_policy(run)
    message = str(e.value)
    assert str(run / "policy.safetensors") in message and "not a readable policy save" in message
    assert "\n" not in message


def test_a_truncated_summary_is_set_aside_and_training_goes_on_from_the_newest_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    train(run, 800)
    (run / "summary.json").write_text('{"timesteps": 8')  # cut short by a kill
    capsys.readouterr()
    model, summary = train(run, 800)
    assert model.num_timesteps == 800 and summary["resumed_from"] == 800
    assert (run / "summary.json.corrupt").read_text() == '{"timesteps": 8'
    assert "summary.json is unreadable" in capsys.readouterr().err
