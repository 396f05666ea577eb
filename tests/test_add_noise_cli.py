"""add_noise.py as a user runs it: a tiny saved Llama and a small text file keep it fast."""

from __future__ import annotations

import json


from conftest import run_script

REQUIRED_KEYS = {
    "model",
    "dataset",
    "tokens",
    "split",
    "dropout",
    "seed",
    "ppl",
    "ppl_clean",
    "token_accuracy",
    "token_accuracy_clean",
}


def add_noise(tiny_model_dir, sample_txt, *extra):
    """The script on the tiny 4-layer model (split 1 unless `extra` says otherwise)."""
    return run_script(
        "add_noise.py",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(sample_txt),
        "--split",
        "1",
        "--max-tokens",
        "300",
        "--context-length",
        "64",
        "--stride",
        "32",
        "--no-progress",
        *extra,
    )


def test_json_output_and_determinism(tiny_model_dir, sample_txt):
    runs = [
        add_noise(tiny_model_dir, sample_txt, "--split", "2", "--dropout", "0.3", "--seed", "4", "--json")
        for _ in range(2)
    ]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    first, second = (json.loads(r.stdout) for r in runs)
    assert REQUIRED_KEYS <= first.keys()
    assert first["split"] == 2 and first["dropout"] == 0.3 and first["tokens"] == 300
    assert first["ppl"] != first["ppl_clean"]
    assert abs(first["elements_impaired_fraction"] - 0.3) < 0.02
    for key in ("ppl", "ppl_clean", "token_accuracy"):
        assert first[key] == second[key]


def test_table_output(tiny_model_dir, sample_txt):
    r = add_noise(tiny_model_dir, sample_txt, "--split", "0", "--dropout", "0.1")
    assert r.returncode == 0, r.stderr
    assert "clean" in r.stdout and "impaired" in r.stdout and "1 layers on the UE" in r.stdout


def test_original_window_protocol(tiny_model_dir, sample_txt):
    r = add_noise(tiny_model_dir, sample_txt, "--original-window", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert (report["context_length"], report["stride"], report["weighting"]) == (20, 512, "window")
    assert report["scored_tokens"] == 19  # one 20-token window in 300 tokens


def test_generate(tiny_model_dir, sample_txt):
    r = add_noise(
        tiny_model_dir, sample_txt, "--generate", "The edge", "--max-new-tokens", "5", "--dropout", "0.5", "--json"
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert {"generated", "generated_clean"} <= report.keys() and report["transfers"] == 5


def test_physical_link_reports_channel_and_latency(tiny_model_dir, sample_txt):
    r = add_noise(
        tiny_model_dir,
        sample_txt,
        "--snr-db",
        "12",
        "--modulation",
        "16qam",
        "--fading",
        "nakagami",
        "--nakagami-m",
        "2",
        "--elements-per-packet",
        "8",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["link"] == "erasure" and report["snr_db"] == 12.0 and report["modulation"] == "16qam"
    assert 0 < report["element_loss"] == report["dropout"] < 1
    assert abs(report["elements_impaired_fraction"] - report["element_loss"]) < 0.1
    for key in (
        "tx_latency_prefill_s",
        "tx_latency_decode_s",
        "ue_compute_prefill_s",
        "edge_compute_prefill_s",
        "total_prefill_s",
        "total_decode_s",
    ):
        assert report[key] > 0, key
    assert report["tx_latency_prefill_s"] > 30 * report["tx_latency_decode_s"]  # 64 tokens against one


def test_bitflip_reports_non_finite_windows(tiny_model_dir, sample_txt):
    r = add_noise(
        tiny_model_dir,
        sample_txt,
        "--snr-db",
        "-3",
        "--link",
        "bitflip",
        "--fading",
        "awgn",
        "--modulation",
        "bpsk",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["link"] == "bitflip" and report["ber"] > 0.01 and "nonfinite_windows" in report


def test_unknown_model_and_dataset(tiny_model_dir, sample_txt, tmp_path):
    r = run_script("add_noise.py", "--model", str(tmp_path / "missing"), "--no-progress")
    assert r.returncode == 2 and "cannot load model" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = add_noise(tiny_model_dir, "no-such-corpus")
    assert r.returncode == 2 and "unknown dataset 'no-such-corpus'" in r.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    r = add_noise(tiny_model_dir, empty)
    assert r.returncode == 2 and "holds no text" in r.stderr
