"""Smoke runs of the benchmarks with tiny budgets, as a user runs them: each finishes and prints its
comparison. (What they measure is read from their output by people, not asserted here: these
machines are shared and timings are noisy.)"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_script

pytestmark = pytest.mark.real_model


def test_bench_rl_compares_llm_and_surrogate_steps_and_both_ppo_setups(tmp_path):
    done = run_script(
        "bench/rl.py", "--steps", "800", "--llm-tokens", "32", "--cost-output", str(tmp_path / "c.json"), timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1. one environment step" in done.stdout and "LLM / surrogate" in done.stdout
    shares = re.findall(r"([\d.]+)%\n", done.stdout)
    assert len(shares) == 2 and all(
        0 < float(s) <= 100.0 + 1e-9 for s in shares
    )  # original and default, vs the optimum
    cost = json.loads((tmp_path / "c.json").read_text())  # what the README's cost claim is generated from
    assert cost["llm_over_surrogate_step"] == pytest.approx(cost["llm_step_s"] / cost["surrogate_step_s"])
    assert [round(100 * r["share_of_optimum"], 2) for r in cost["ppo"].values()] == [float(s) for s in shares]
    threads = re.search(r"one environment step \((\d+) torch threads for the LLM\)", done.stdout)
    assert threads and cost["torch_threads_llm"] == int(threads.group(1))  # the LLM's, not the PPO runs' one


def test_bench_rl_ablation_records_every_setup_and_resumes(tmp_path):
    args = [
        "bench/rl.py",
        "--ablation",
        "--seeds",
        "0,1",
        "--steps",
        "400",
        "--surrogates",
        "shipped",
        "--output",
        str(tmp_path / "a.json"),
    ]
    done = run_script(*args, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "a.json").read_text())
    runs = record["surrogates"]["shipped"]["runs"]
    assert len(runs) == 10 and all(len(r["returns"]) == 200 for r in runs.values())
    setups = record["summary"]["shipped"]["setups"]
    assert [name.split(":")[0] for name in setups] == [
        "original",
        "default",
        "only 8 batched envs",
        "only scaled observations",
        "only gamma 0.9",
    ]
    original = setups[next(iter(setups))]
    assert original["minus_original"] == 0 and original["minus_original_ci95"] == 0  # paired with itself
    for name, row in setups.items():
        shares = [
            100 * np.mean(r["returns"]) / np.mean(record["surrogates"]["shipped"]["optimum"])
            for r in runs.values()
            if r["setup"] == name
        ]
        assert row["share_per_seed"] == pytest.approx(shares)
        assert row["channel_blind_seeds"] == sum(
            r["policy_map"]["channel_blind"] for r in runs.values() if r["setup"] == name
        )
    blind = next(iter(runs.values()))["policy_map"]
    assert blind["channel_blind"] == all(len(set(a)) == 1 for a in blind["actions"].values())
    # a record holding another surrogate's runs (as after --surrogates authors): rerun on this one only
    record["surrogates"]["other"] = record["surrogates"]["shipped"]
    (tmp_path / "a.json").write_text(json.dumps(record))
    again = run_script(*args, timeout=300)  # every run is in the record: none is trained again
    assert again.returncode == 0 and "% of the optimum" not in again.stdout.split("3. PPO set-ups")[0]
    resumed = json.loads((tmp_path / "a.json").read_text())
    assert resumed["surrogates"] == record["surrogates"]
    assert resumed["summary"]["other"] == resumed["summary"]["shipped"]  # the other surrogate's summary is kept


def test_bench_serve_gives_the_single_process_tokens_over_a_loss_free_socket():
    # static decoding (a fixed-length KV cache on both sides, no compilation): checked against eager's tokens too
    done = run_script(
        "bench/decoding.py",
        "--prompts",
        "1",
        "--max-new-tokens",
        "4",
        "--rounds",
        "1",
        "--decode",
        "static",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"socket fp32 .* 1/1 requests", done.stdout)
    assert "static decoding" in done.stdout and "equal to eager decoding's: 1/1 requests" in done.stdout
    warmed = re.search(r"warm-up \(static decoding\): single process ([\d.]+) s, socket fp32 ([\d.]+) s", done.stdout)
    assert warmed and float(warmed[1]) > 0 and float(warmed[2]) > 0  # printed before the rounds (compile times on CUDA)
    bound = re.search(r"memory bandwidth ([\d.]+) GB/s .* bound: ([\d.]+) ms per token", done.stdout)
    assert bound and float(bound[1]) > 0 and float(bound[2]) > 0
    rows = re.findall(
        r"^(single process|socket \w+) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+)%$", done.stdout, re.M
    )
    assert [r[0] for r in rows] == ["single process", "socket fp32", "socket fp16", "socket bf16", "socket int8"]
    assert all(float(r[2]) == float(bound[2]) and float(r[3]) > 0 for r in rows)  # the bound beside each TPOT


def test_bench_serve_fairness_writes_the_times_it_prints(tiny_model_dir, tmp_path):
    out = tmp_path / "fairness.json"
    done = run_script(
        "bench/decoding.py",
        "--fairness",
        "--rounds",
        "1",
        "--model",
        str(tiny_model_dir),
        "--split",
        "1",
        "--fairness-output",
        str(out),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(out.read_text())
    assert [r["prefill_chunk"] for r in found["rows"]] == [0, 256] and found["long_sessions"] == 3
    for r in found["rows"]:
        assert len(r["ttft_s"]) == 1 and r["ttft_median_s"] == r["ttft_s"][0] > 0
        assert r["long_prompts_done_median_s"] > 0
        label = re.escape(str(r["prefill_chunk"] or "0 (whole)"))
        assert re.search(rf"^ +{label} +{r['ttft_median_s']:.2f} ", done.stdout, re.M)


def test_bench_sweep_fast_and_naive_paths_agree_and_report_the_share_of_the_peak():
    done = run_script(
        "bench/sweep.py", "--tokens", "32", "--draws", "1", "--naive", "paper", "--compiled", timeout=900
    )  # about 60 s on a quiet 2-core CPU, a third of it compiling
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1. dense matmul peak here (2048^3, float32)" in done.stdout
    shares = [float(s) for s in re.findall(r"TFLOP/s\s+(\d+)% of the peak", done.stdout)]
    assert len(shares) == 4 and all(
        0 < s < 200 for s in shares
    )  # both grids, eager then compiled; far above 100%: a miscount
    differences = [float(d) for d in re.findall(r"max \|dPPL\|/PPL (\d\S*)", done.stdout)]
    assert len(differences) == 1 and differences[0] <= 1e-5  # the naive path on the paper's splits only
    assert re.search(r"3\. projected: .* over 300,000 tokens in windows of 32: [\d.]+ h", done.stdout)
    compiled = [
        float(d) for d in re.findall(r"compiled .* the eager rate  max \|dPPL\|/PPL against eager (\S+)", done.stdout)
    ]
    # fused float32 kernels round differently: 1.1e-5 seen at 32 tokens, inside add_noise.py's --verify tolerance
    assert len(compiled) == 2 and all(d <= 1e-4 for d in compiled), done.stdout


def test_bench_distributed_writes_the_same_rows_on_one_and_two_workers():
    done = run_script("bench/distributed.py", "--tokens", "32", "--splits", "1-2", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        "scaling efficiency" in done.stdout
        and "same rows in every run (the results files byte for byte): yes" in done.stdout
    )


def test_bench_protect_rule_compares_top_k_with_a_calibrated_set(tmp_path):
    done = run_script(
        "bench/protect_rule.py",
        "--splits",
        "2",
        "--snrs",
        "10",
        "--ks",
        "4",
        "--tokens",
        "128",
        "--calibration-tokens",
        "128",
        "--draws",
        "1",
        "--output",
        str(tmp_path / "r.csv"),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"K=  4: top-K ppl .*fixed-K \(4 ch\).*fixed-bits \(6 ch\)", done.stdout)
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 1 + 3  # one row per rule


def test_bench_gpu_sh_prepares_and_rehearses_every_step_on_the_cpu(tmp_path):
    """bench/gpu.sh as it runs on a GPU machine, at toy scale on the CPU: every step ends with exit 0
    and its output lands in the one folder (the GPU figures themselves need a GPU)."""
    env = {
        **os.environ,
        "PY": sys.executable,
        "PY_HERE": sys.executable,
        "PREP": str(tmp_path / "prep"),
        "FETCH_WHEELS": "0",
        "DEVICE": "cpu",
        "DTYPE": "float32",
        "MODEL": "random:smollm2-135m",
        "MODEL_LARGE": "",
        "TOKENS": "32",
        "DRAWS": "1",
        "TOKENS_LONG": "64",
        "DRAWS_LONG": "1",
        "NEW_TOKENS": "3",
        "DECODE": "static",
        "LIMIT_SCALE": "4",
        "TAIL_SLOTS": "8",
        "TAIL_BATCH": "8",
    }
    prepare = subprocess.run(
        ["bash", "bench/gpu.sh", "prepare"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert prepare.returncode == 0, prepare.stderr[-2000:]
    assert (tmp_path / "prep" / "tokenizer" / "tokenizer.json").is_file() and (
        tmp_path / "prep" / "wiki_test.txt"
    ).is_file()
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", "bench/gpu.sh", "run", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for step in ("tests", "sweep_paper", "serve", "sweep_check", "sweep_paper_long"):
        text = (out / f"{step}.txt").read_text()
        assert re.search(rf"== {step}: exit 0 after \d+ s", text), text[-2000:]
    assert "% of the peak" in (out / "sweep_paper.txt").read_text()
    assert (out / "sweep_profile.txt").stat().st_size > 0 and (out / "machine.txt").is_file()
    summary = json.loads((out / "summary.json").read_text())  # gpu.sh's last step read every step's figures
    assert summary["sweep_paper"]["paper"]["tflops"] > 0 and summary["serve"]["paths"]["single process"]["tpot_ms"] > 0
    assert summary["steps_seconds"] >= summary["sweep_paper"]["step"]["seconds"]
    assert summary["sweep_paper_long"]["tokens"] == 64 and "sweep_paper_large" not in summary  # MODEL_LARGE="" skips
    # the tails continue the committed file: the reliable rule's points to 8 slots each here, the rest untouched
    from layersplit import nr, nr_sim

    rows = nr.read_table(ROOT / "results" / "nr_bler_tails.csv", repeats=True)
    committed = {f"{mcs}:{snr:g}": list(counts) for (mcs, snr), counts in nr.point_counts(rows).items()}
    tails = summary["nr_tails"]["points"]
    assert summary["nr_tails"]["step"]["exit"] == 0
    for mcs, snr in nr_sim.reliable_points():
        assert tails.pop(f"{mcs}:{snr:g}")[1] == max(committed.pop(f"{mcs}:{snr:g}", [0, 0])[1], 8)
    assert tails == committed


def test_gpu_summary_reads_the_committed_run_into_the_committed_summary(tmp_path):
    """results/gpu/summary.json is what bench/gpu_summary.py reads off the step outputs beside it."""
    folder = tmp_path / "gpu"
    shutil.copytree(ROOT / "results" / "gpu", folder)
    (folder / "summary.json").unlink()
    done = run_script("bench/gpu_summary.py", str(folder))
    assert done.returncode == 0, done.stderr
    committed = json.loads((ROOT / "results" / "gpu" / "summary.json").read_text())
    assert json.loads((folder / "summary.json").read_text()) == committed
    # a step output cut short is refused in one line naming the file, and nothing is written
    (folder / "summary.json").unlink()
    (folder / "serve.txt").write_text((ROOT / "results/gpu/serve.txt").read_text()[:400])
    done = run_script("bench/gpu_summary.py", str(folder))
    assert done.returncode == 2 and "serve.txt" in done.stderr and len(done.stderr.splitlines()) == 1
    assert not (folder / "summary.json").exists()
    assert run_script("bench/gpu_summary.py", str(tmp_path / "none")).returncode == 2


def test_fresh_clone_refuses_a_folder_in_use_and_an_unknown_target_before_cloning(tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    done = run_script("bench/fresh_clone.py", "test", "--keep", str(used), timeout=120)
    assert done.returncode == 2 and "not empty" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
    done = run_script("bench/fresh_clone.py", "everything", timeout=120)
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_bench_early_stop_compares_both_decoders_on_the_same_slots(tmp_path):
    out = tmp_path / "e.json"
    done = run_script("bench/early_stop.py", "--points", "3:0,3:11", "--slots", "8", "--output", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["all_same"] and [(p["mcs"], p["snr_db"]) for p in report["points"]] == [(3, 0.0), (3, 11.0)]
    waterfall, deep = report["points"]
    assert waterfall["iterations_per_code_word_full"] == deep["iterations_per_code_word_full"] == 20
    assert deep["iterations_per_code_word_early"] < 20 and deep["lost_full"] == deep["lost_early"] == 0
    assert "MCS  3 at 11 dB: lost 0 / 0 of 8 (same slot by slot: True)" in done.stdout
    bad = run_script("bench/early_stop.py", "--points", "2:0", "--output", str(tmp_path / "bad.json"))
    assert bad.returncode == 2 and "MCS 3-28" in bad.stderr and not (tmp_path / "bad.json").exists()
