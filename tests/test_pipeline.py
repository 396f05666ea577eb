"""The experiment registry and the pipeline that runs it (layersplit/experiments.py, layersplit/pipeline.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from layersplit import experiments, pipeline
from layersplit.experiments import BY_NAME, EXPERIMENTS, PRESETS, Plan


def commands(plan: Plan) -> dict[str, list[str]]:
    return {e.name: c for e, c in pipeline.steps(plan)}


def run_pipeline(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "layersplit.pipeline", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_every_experiment_has_one_name_its_own_outputs_and_a_scale_for_every_preset():
    assert len(BY_NAME) == len(EXPERIMENTS)
    outputs = [o for e in EXPERIMENTS for o in e.outputs]
    assert len(outputs) == len(set(outputs))
    plan = Plan("reproduce", "out")
    for e in EXPERIMENTS:
        for preset in PRESETS:
            assert isinstance(e.args(preset), str)
        plan.fill(e.command, e)  # every placeholder is one the plan fills
        if e.committed:
            plan.fill(e.committed.check, e)
            assert (ROOT / e.committed.files[0]).is_file(), e.committed.files[0]


def test_reproduce_takes_the_committed_sweeps_with_a_spot_check_and_quick_computes_them():
    reproduce = commands(Plan("reproduce", "out"))
    assert reproduce["sweep"][0] == "copy results/sweep_smollm2-135m.csv out/results/sweep_smollm2-135m.csv"
    assert reproduce["sweep"][-1].endswith("--verify out/results/sweep_smollm2-135m.csv")
    assert "--splits 10 --dropouts 0.3" in reproduce["sweep"][-1]
    assert reproduce["sweep_layers"] == [
        "add_noise.py --sweep --splits all --draws 4 --max-tokens 256 "
        "--output out/results/sweep_layers_smollm2-135m.csv"
    ]
    quick = commands(Plan("quick", "q"))
    assert quick["sweep"] == [
        "add_noise.py --sweep --splits 1-10 --dropouts 0.1,0.3 --draws 2 --max-tokens 128 "
        "--output q/results/sweep_smollm2-135m.csv"
    ]
    assert quick["nr_table"][0].startswith("copy results/nr_bler.csv")  # every preset takes the BLER table
    assert "--check 3:0 --max-slots 16" in quick["nr_table"][-1]
    full = commands(Plan("full", "f"))
    assert not full["sweep"][0].startswith("copy") and full["sweep_nr_wireless"][0].startswith("copy")
    assert "--splits all --draws 5 --max-tokens 0" in full["sweep_layers"][0]
    computed = commands(Plan("reproduce", "out", compute=frozenset({"sweep"})))
    assert computed["sweep"] == ["add_noise.py --sweep  --output out/results/sweep_smollm2-135m.csv"]


def test_another_model_computes_everything_in_its_own_folder_with_the_model_dataset_and_device():
    plan = Plan("reproduce", "runs/x", "meta-llama/Llama-2-7b-hf", "wikitext-2", "cuda")
    assert not plan.is_embedded and plan.folder_key == "meta-llama_Llama-2-7b-hf_wikitext-2"
    steps = commands(plan)
    assert not any(c.startswith("copy") for cs in steps.values() for c in cs)
    for name in ("demo", "sweep", "sweep_layers", "llm_cost"):
        assert steps[name][0].endswith(" --model meta-llama/Llama-2-7b-hf --dataset wikitext-2 --device cuda")
    assert "sweep_meta-llama_Llama-2-7b-hf.csv" in steps["sweep"][0]
    assert "--sweep runs/x/results/sweep_meta-llama_Llama-2-7b-hf.csv" in steps["fit"][0]
    assert steps["channel_table"] == commands(Plan("reproduce", "runs/x"))["channel_table"]  # no model in it
    assert Plan("reproduce", "o", dataset="wiki").is_embedded  # the embedded text named is still the committed setting


def test_the_pipeline_refuses_an_unknown_experiment_in_one_line_before_any_work(tmp_path):
    out = tmp_path / "run"
    done = run_pipeline("quick", "--out", str(out), "--only", "sweep,nope", timeout=120)
    error = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and error.startswith("pipeline.py: error: argument --only: no experiment 'nope'"), error
    assert not out.exists()


def test_the_pipeline_refuses_a_folder_it_cannot_write_and_a_damaged_timings_file(tmp_path):
    (tmp_path / "file").write_text("x")
    done = run_pipeline("quick", "--out", str(tmp_path / "file"), "--only", "latency_table", timeout=120)
    assert done.returncode == 2 and "is not a folder" in done.stderr.strip().splitlines()[-1], done.stderr
    (tmp_path / "run" / "results").mkdir(parents=True)
    (tmp_path / "run" / "results" / pipeline.TIMINGS).write_text("{not json")
    done = run_pipeline("quick", "--out", str(tmp_path / "run"), "--only", "latency_table", timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("pipeline: error: ") and done.stderr.count("\n") == 1
    assert not (tmp_path / "run" / "results" / "latency_breakdown.csv").exists()
    elsewhere = subprocess.run(  # the commands name the scripts relative to the repository root
        [sys.executable, "-m", "layersplit.pipeline", "quick", "--out", "run", "--only", "latency_table"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert elsewhere.returncode == 2 and "repository root" in elsewhere.stderr, elsewhere.stderr


def test_a_step_recorded_complete_is_skipped_and_a_changed_one_reruns(tmp_path):
    out = tmp_path / "run"
    first = run_pipeline("quick", "--out", str(out), "--only", "latency_table,protect_table", timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    timings = json.loads((out / "results" / pipeline.TIMINGS).read_text())
    assert set(timings["steps"]) == {"latency_table", "protect_table"} and timings["preset"] == "quick"
    assert all(s["seconds"] >= 0 for s in timings["steps"].values())
    table = (out / "results" / "latency_breakdown.csv").read_bytes()
    (out / "results" / "protect_cost.csv").unlink()  # an output gone: that step runs again
    again = run_pipeline("quick", "--out", str(out), "--only", "latency_table,protect_table", timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "== latency_table: complete" in again.stdout and "== protect_table: complete" not in again.stdout
    assert (out / "results" / "protect_cost.csv").is_file()
    assert (out / "results" / "latency_breakdown.csv").read_bytes() == table
    record = {"latency_table": {"seconds": 1.0, "commands": ["a changed command"]}}
    (out / "results" / pipeline.TIMINGS).write_text(json.dumps({"steps": record}))
    changed = run_pipeline("quick", "--out", str(out), "--only", "latency_table", timeout=300)
    assert "== latency_table: complete" not in changed.stdout


def test_make_passes_the_model_dataset_and_device_to_the_pipeline():
    done = subprocess.run(
        ["make", "-n", "quick", "MODEL=some/model", "DATASET=wikitext-2", "DEVICE=cuda", "ONLY=demo", "OUT=o"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next(s for s in done.stdout.splitlines() if "layersplit.pipeline" in s)
    assert line.split()[-1] == "quick"
    for option in ("--out o", "--model some/model", "--dataset wikitext-2", "--device cuda", "--only demo"):
        assert option in " ".join(line.split())


@pytest.mark.slow
def test_the_pipeline_runs_another_model_on_another_text_at_toy_scale_into_its_own_folder(tmp_path, sample_txt):
    """The paper's setting as one command, at toy scale: a random stand-in of a 30-layer model on a text file."""
    out = tmp_path / "run"
    done = run_pipeline(
        "quick",
        "--out",
        str(out),
        "--model",
        "random:smollm2-135m",
        "--dataset",
        str(sample_txt),
        "--device",
        "cpu",
        "--only",
        "demo,sweep_layers,llm_cost",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    folder = out / Plan("quick", "", "random:smollm2-135m", str(sample_txt)).folder_key
    assert (folder / "results" / "sweep_layers_random:smollm2-135m.csv").is_file()
    assert json.loads((folder / "results" / "rl_llm_cost.json").read_text())
    assert set(json.loads((folder / "results" / pipeline.TIMINGS).read_text())["steps"]) == {
        "demo",
        "sweep_layers",
        "llm_cost",
    }
    assert not (out / "results").exists()  # nothing where the embedded model's run would go
    assert not list(folder.rglob(f"*_{experiments.EMBEDDED_KEY}.csv"))  # every sweep file keyed by the stand-in
