"""Smoke runs of the benchmarks with tiny budgets, as a user runs them: each finishes and prints its
comparison. (What they measure is read from their output by people, not asserted here: these
machines are shared and timings are noisy.)"""
import re

import pytest

from conftest import run_script

pytestmark = pytest.mark.real_model


def test_bench_rl_compares_llm_and_surrogate_steps_and_both_ppo_setups():
    done = run_script("bench/rl.py", "--steps", "800", "--llm-tokens", "32", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1. one environment step" in done.stdout and "LLM / surrogate" in done.stdout
    shares = re.findall(r"([\d.]+)%\n", done.stdout)
    assert len(shares) == 2 and all(0 < float(s) <= 100.0 + 1e-9 for s in shares)  # original and default, vs the optimum


def test_bench_rl_ablation_runs_every_setup_over_the_seeds():
    done = run_script("bench/rl.py", "--ablation", "--seeds", "0,1", "--steps", "400", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = re.findall(r"^   (.+?)\s+([\d.]+)% \+-\s+([\d.]+)\s+per seed: (.+)$", done.stdout, re.M)
    assert [r[0].split(":")[0] for r in rows] == ["original", "default", "only 8 batched envs", "only scaled observations",
                                                  "only gamma 0.9"]
    assert all(len(r[3].split(", ")) == 2 for r in rows)  # one share per seed


def test_bench_serve_gives_the_single_process_tokens_over_a_loss_free_socket():
    # static decoding (a fixed-length KV cache on both sides, no compilation): checked against eager's tokens too
    done = run_script("bench/serve.py", "--prompts", "1", "--max-new-tokens", "4", "--rounds", "1", "--decode", "static",
                      timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"socket fp32 .* 1/1 requests", done.stdout)
    assert "static decoding" in done.stdout and "equal to eager decoding's: 1/1 requests" in done.stdout
    bound = re.search(r"memory bandwidth ([\d.]+) GB/s .* bound: ([\d.]+) ms per token", done.stdout)
    assert bound and float(bound[1]) > 0 and float(bound[2]) > 0
    rows = re.findall(r"^(single process|socket \w+) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+)%$", done.stdout, re.M)
    assert [r[0] for r in rows] == ["single process", "socket fp32", "socket fp16", "socket bf16", "socket int8"]
    assert all(float(r[2]) == float(bound[2]) and float(r[3]) > 0 for r in rows)  # the bound beside each TPOT


def test_bench_sweep_fast_and_naive_paths_agree():
    done = run_script("bench/sweep.py", "--tokens", "32", "--draws", "1", timeout=900)  # about 100 s on a quiet 2-core CPU, 9 min when it is shared
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("max |dPPL|/PPL 0.0e+00") == 2


def test_bench_distributed_writes_the_same_rows_on_one_and_two_workers():
    done = run_script("bench/distributed.py", "--tokens", "32", "--splits", "1-2", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "scaling efficiency" in done.stdout and "same rows in every run (the results files byte for byte): yes" in done.stdout


def test_bench_protect_rule_compares_top_k_with_a_calibrated_set(tmp_path):
    done = run_script("bench/protect_rule.py", "--splits", "2", "--snrs", "10", "--ks", "4", "--tokens", "128",
                      "--calibration-tokens", "128", "--draws", "1", "--output", str(tmp_path / "r.csv"), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"K=  4: top-K ppl .*fixed-K \(4 ch\).*fixed-bits \(6 ch\)", done.stdout)
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 1 + 3  # one row per rule
