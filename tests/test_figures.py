"""Tests of figures.py on small synthetic result files: every registered figure is written as PNG
and PDF; a missing or malformed result file is reported by name while the other figures are
still drawn and the exit status is non-zero; the user's command line works as a subprocess."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

import figures
from conftest import ROOT, run_script
from layersplit.plots import channel, common, rl

SNR_GRID = (0.0, 10.0, 20.0, 30.0)  # synthetic Es/N0 points (dB)
SPLITS = (1, 2)  # synthetic split layers (0-based)
CLEAN_PPL = 15.0


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def sweep_row(split: int, link: str, snr_db, dropout: float, draw: int, ppl: float, **extra) -> dict:
    """A sweep row with the columns figures.py reads (and a few it ignores), like add_noise.py --sweep writes."""
    return {
        "model": "tiny",
        "dataset": "synthetic",
        "tokens": 64,
        "split": split,
        "layers_on_ue": split + 1,
        "link": link,
        "snr_db": snr_db,
        "dropout": dropout,
        "draw": draw,
        "modulation": extra.get("modulation", ""),
        "fading": extra.get("fading", ""),
        "bits_per_element": 16 if link != "dropout" else "",
        "elements_per_packet": 64 if link != "dropout" else "",
        "header_bits": 32 if link != "dropout" else "",
        "nll": math.log(ppl),
        "ppl": ppl,
        "token_accuracy": 0.45 * CLEAN_PPL / ppl,
        "scored_tokens": 63,
        **{k: extra[k] for k in ("windows", "nll_window_sd", "accuracy_window_sd") if k in extra},
    }


def write_results(folder: Path) -> Path:
    """One small synthetic file per result the figures read."""
    folder.mkdir(parents=True, exist_ok=True)
    ber_rows = []
    for fading in ("awgn", "rayleigh", "nakagami"):
        for modulation in ("bpsk", "qpsk"):
            for snr in SNR_GRID:
                ber = 0.5 / (1 + 10 ** (snr / 10))
                per = min(1.0, 1056 * ber)
                ber_rows.append(
                    {
                        "snr_db": snr,
                        "modulation": modulation,
                        "fading": fading,
                        "nakagami_m": 2.0 if fading == "nakagami" else "nan",
                        "bits_per_packet": 1056,
                        "ber": ber,
                        "ber_mc": ber * 1.01,
                        "per_fast": per,
                        "per_block": per * 0.9,
                        "per_block_mc": per * 0.91,
                        "mc_packets": 1000,
                    }
                )
    write_csv(folder / "channel_ber_per.csv", ber_rows)

    sweep = []  # without a "withheld" column: files made before it existed still draw
    spread = {"windows": 2, "nll_window_sd": 0.1, "accuracy_window_sd": 0.01}  # the SNR files below have none
    for split in SPLITS:
        sweep.append(sweep_row(split, "dropout", "", 0.0, 0, CLEAN_PPL, **spread))
        for p in (0.1, 0.3):
            for draw in (0, 1):
                sweep.append(sweep_row(split, "dropout", "", p, draw, CLEAN_PPL * (1 + 10 * p + draw), **spread))
        sweep.append(sweep_row(split, "erasure", 10.0, 0.6, 0, 900.0, modulation="qpsk", fading="rayleigh", **spread))
    write_csv(folder / figures.SWEEP_FILE, sweep)

    for shift, modulation in enumerate(figures.SNR_MODULATIONS):
        rows = []
        for split in SPLITS:
            rows.append({**sweep_row(split, "dropout", "", 0.0, 0, CLEAN_PPL), "withheld": 0.0})
            for snr in SNR_GRID:
                loss = min(1.0, 3.0 / 10 ** ((snr - 5 * shift) / 10))
                rows.append(
                    {
                        **sweep_row(
                            split,
                            "erasure",
                            snr,
                            loss,
                            0,
                            CLEAN_PPL * (1 + 100 * loss),
                            modulation=modulation,
                            fading="rayleigh",
                        ),
                        "withheld": 0.0,
                    }
                )
        write_csv(folder / figures.SNR_FILE.format(modulation=modulation), rows)

    protect_snr, protect_p = [], []  # the protected path: K = 0 as the plain link, K > 0 closer to clean
    for split in (1, 4, 12):
        for rows in (protect_snr, protect_p):
            rows.append({**sweep_row(split, "dropout", "", 0.0, 0, CLEAN_PPL), "protect": 0})
        for k in (0, 4, 64):
            for snr in SNR_GRID:
                loss = min(1.0, 3.0 / 10 ** (snr / 10))
                protect_snr.append(
                    {
                        **sweep_row(
                            split,
                            "erasure",
                            snr,
                            loss,
                            0,
                            CLEAN_PPL * (1 + 100 * loss / (1 + k)),
                            modulation="qpsk",
                            fading="nakagami",
                        ),
                        "protect": k,
                    }
                )
            for p in (0.02, 0.1, 0.3):
                protect_p.append(
                    {**sweep_row(split, "dropout", "", p, 0, CLEAN_PPL * (1 + 10 * p / (1 + k))), "protect": k}
                )
    write_csv(folder / figures.PROTECT_SNR_FILE, protect_snr)
    write_csv(folder / figures.PROTECT_P_FILE, protect_p)

    latency = []
    for model, n_layers in (("smollm2-135m", 3), ("llama2-7b", 4)):
        for phase in ("prefill", "decode"):
            for snr in (10.0, 20.0):
                for layers in range(1, n_layers + 1):
                    latency.append(
                        {
                            "model": model,
                            "phase": phase,
                            "tokens": 512,
                            "snr_db": snr,
                            "modulation": "qpsk",
                            "fading": "rayleigh",
                            "bandwidth_hz": 2e7,
                            "layers_on_ue": layers,
                            "ue_compute_s": 0.004 * layers,
                            "tx_s": 0.08 / snr,
                            "edge_compute_s": 0.001,
                            "total_s": 0.004 * layers + 0.08 / snr + 0.001,
                            "ue_flops": 1e12,
                            "edge_flops": 1e14,
                        }
                    )
    write_csv(folder / figures.LATENCY_FILE, latency)

    fits = {"paper": [], "wireless": []}
    for i in range(10):
        ppl = 15.0 * (1 + i)
        fits["paper"].append(
            {
                "dropout": 0.03 * i,
                "split": 1 + i % 5,
                "ppl": ppl,
                "predicted_ppl": ppl * 1.05,
                "inference_reward": 0.1 * i,
                "predicted_inference_reward": 0.1 * i + 0.01,
                "held_out": i % 3 == 0,
            }
        )
        fits["wireless"].append(
            {
                "snr_db": 10.0 + i,
                "split": 1 + i % 5,
                "withheld": 0.0,
                "log_ppl": math.log(ppl),
                "predicted_log_ppl": math.log(ppl) + 0.05,
                "token_accuracy": 0.04 * i,
                "predicted_token_accuracy": 0.04 * i + 0.01,
                "held_out": i % 2 == 0,
            }
        )
    for form, rows in fits.items():
        write_csv(folder / f"rsm_fit_{form}.csv", rows)
    for algo in ("ppo", "a2c", "dqn"):
        write_csv(
            folder / f"rl_paper_{algo}_curves.csv",
            [
                {
                    "env": "LayerSplit-Paper-v0",
                    "algo": algo,
                    "seed": seed,
                    "timesteps": 1000 * t,
                    "mean_return": t + seed,
                    "episodes": 10,
                }
                for seed in (0, 1)
                for t in range(1, 6)
            ],
        )
    returns = {
        name: {"mean": value, "ci95": 0.1}
        for name, value in (("learned", 5.0), ("fixed", 1.0), ("random", 2.0), ("greedy", 5.5), ("optimum", 6.0))
    }
    (folder / "rl_paper_ppo.json").write_text(
        json.dumps({"returns": returns, "training": {"wall_s": [100.0, 110.0], "timesteps": [240000, 240000]}})
    )
    policy = [
        {
            "policy": name,
            "condition": "p",
            "value": 0.01 * k,
            "split": 1 + (k > 5) * 6 + (name == "ppo_s0"),
            "withheld": 0.0,
        }
        for name in ("ppo_s0", "optimum")
        for k in range(10)
    ]
    write_csv(folder / "rl_paper_ppo_policy.csv", policy)
    write_csv(
        folder / "rl_wireless_ppo_policy.csv",
        [{**r, "condition": "snr_db", "value": 10 + r["value"] * 100, "withheld": 0.1} for r in policy],
    )
    write_csv(
        folder / "rl_protect_ppo_policy.csv",
        [
            {
                **r,
                "condition": "snr_db",
                "value": 10 + r["value"] * 100,
                "withheld": 0.0,
                "protect": 4 * (r["value"] < 0.05),
            }
            for r in policy
        ],
    )
    bler = []  # the NR link's table: two MCSs, each curve from all lost to none
    for mcs, tbs, shift in ((3, 3624, 0.0), (15, 17424, 10.0)):
        for snr, b, n in ((-4.0, 1.0, 32), (0.0, 0.5, 100), (4.0, 0.05, 100), (8.0, 0.0, 100)):
            bler.append(
                {
                    "mcs": mcs,
                    "modulation_order": 2 if mcs == 3 else 4,
                    "code_rate": 0.25 if mcs == 3 else 0.6,
                    "tb_size": tbs,
                    "num_cb": 1,
                    "snr_db": snr + shift,
                    "slots": n,
                    "errors": round(b * n),
                    "bler": b,
                    "bler_low": max(b - 0.1, 0),
                    "bler_high": min(b + 0.1, 1),
                    "channel": "tdl",
                    "tdl_profile": "C",
                    "delay_spread_s": 1e-7,
                    "ue_speed_mps": 0.83,
                    "receiver": "ls",
                    "num_prbs": 51,
                    "subcarrier_spacing_khz": 30,
                    "seed": 0,
                }
            )
    write_csv(folder / figures.NR_BLER_FILE, bler)
    nr_rows = []
    for split in SPLITS:
        nr_rows.append(sweep_row(split, "dropout", "", 0.0, 0, CLEAN_PPL))
        for snr in (-5.0, *SNR_GRID):
            loss = min(1.0, 0.3 / 10 ** ((snr + 5) / 5))
            nr_rows.append(sweep_row(split, "nr", snr, loss, 0, CLEAN_PPL * (1 + 100 * loss)))
    write_csv(folder / figures.NR_SNR_FILE, nr_rows)
    (folder / "rl_llm_cost.json").write_text(
        json.dumps(  # make reproduce's cost run; rl_llm_ppo.json: make llm
            {"model": "tiny", "tokens_per_step": 64, "seconds_per_step": 0.5, "timesteps": 20, "wall_s": 10.0}
        )
    )
    return folder


# the result files each figure reads (the test of a missing file removes each in turn)
FILES = {
    "ber_per": ["channel_ber_per.csv"],
    "sweep": [figures.SWEEP_FILE],
    "snr": [figures.SNR_FILE.format(modulation=m) for m in figures.SNR_MODULATIONS],
    "latency": [figures.LATENCY_FILE],
    "rsm_fit": ["rsm_fit_paper.csv", "rsm_fit_wireless.csv"],
    "training": ["rl_paper_ppo_curves.csv", "rl_paper_ppo.json"],  # A2C's and DQN's curves are optional
    "policy": ["rl_paper_ppo_policy.csv"],
    "cost": ["rl_llm_cost.json", "rl_paper_ppo.json"],
    "protect": [figures.PROTECT_SNR_FILE, figures.PROTECT_P_FILE],
    "nr_bler": [figures.NR_BLER_FILE],
    "nr_snr": [figures.NR_SNR_FILE, figures.NR_ERASURE_FILE],
}


def assert_drawn(figures_dir: Path, names) -> None:
    for name in names:
        for fmt, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF")):
            path = figures_dir / f"{name}.{fmt}"
            assert path.is_file(), f"{path} was not written"
            assert path.read_bytes()[:4] == magic, f"{path} is not a {fmt.upper()} file"


@pytest.fixture
def results(tmp_path) -> Path:
    return write_results(tmp_path / "results")


@pytest.fixture
def low_dpi(monkeypatch):
    """In-process drawing at a low resolution: the same code, a fraction of the rendering time."""
    monkeypatch.setattr(common, "DPI", 30)  # save() reads it there


def test_every_file_is_listed():
    assert set(FILES) == set(figures.FIGURES)


def test_every_figure_as_a_user_draws_it(results, tmp_path):
    """python figures.py --results-dir ... --figures-dir ..., from the repository root, in a
    subprocess: every registered figure as PNG and PDF, exit status 0."""
    out = tmp_path / "figures"
    r = run_script("figures.py", "--results-dir", str(results), "--figures-dir", str(out), timeout=120)
    assert r.returncode == 0, r.stderr
    assert_drawn(out, figures.FIGURES)
    for name in figures.FIGURES:
        assert f"{name}: wrote {out / name}.png and {name}.pdf" in r.stdout
    assert "failed" not in r.stderr


def test_a_missing_file_is_named_and_the_others_are_drawn(results, tmp_path, capsys, low_dpi):
    file = results / figures.SNR_FILE.format(modulation="16qam")  # qpsk's feeds nr_snr too
    file.unlink()
    out = tmp_path / "figures"
    assert figures.main(["--results-dir", str(results), "--figures-dir", str(out)]) == 1
    err = capsys.readouterr().err
    remedy = "make reproduce ONLY=sweep_snr_16qam, or python add_noise.py --sweep --link erasure --modulation 16qam"
    assert f"snr: missing {file} (make it with: {remedy}" in err
    assert "1 figure(s) failed: snr" in err
    assert not (out / "snr.png").exists() and not (out / "snr.pdf").exists()
    assert_drawn(out, [n for n in figures.FIGURES if n != "snr"])


@pytest.mark.parametrize("name,file", [(n, f) for n, files in FILES.items() for f in files])
def test_every_missing_file_is_named(results, tmp_path, capsys, name, file):
    (results / file).unlink()
    out = tmp_path / "figures"
    assert figures.main(["--only", name, "--results-dir", str(results), "--figures-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{name}: missing {results / file} (make it with: " in err
    assert not (out / f"{name}.png").exists()


def drop_column(path: Path, column: str) -> None:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    write_csv(path, [{k: v for k, v in row.items() if k != column} for row in rows])


def set_value(path: Path, line: int, column: str, value: str) -> None:
    """Replace `column` on data row `line` (1-based, after the header)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows[line - 1][column] = value
    write_csv(path, rows)


MALFORMED = [  # (figure, file, how it is broken, what the message must say)
    ("snr", figures.SNR_FILE.format(modulation="qpsk"), lambda p: drop_column(p, "ppl"), "no column(s) ppl"),
    (
        "snr",
        figures.SNR_FILE.format(modulation="16qam"),
        lambda p: set_value(p, 3, "ppl", "lots"),
        "line 4, column ppl: 'lots' is not float",
    ),
    (
        "snr",
        figures.SNR_FILE.format(modulation="bpsk"),
        lambda p: set_value(p, 2, "snr_db", "loud"),
        "line 3: snr_db is 'loud', not a number",
    ),
    (
        "snr",
        figures.SNR_FILE.format(modulation="bpsk"),
        lambda p: set_value(p, 2, "modulation", "qpsk"),
        "expected the rows of one physical link set-up",
    ),
    ("latency", figures.LATENCY_FILE, lambda p: drop_column(p, "tx_s"), "no column(s) tx_s"),
    (
        "latency",
        figures.LATENCY_FILE,
        lambda p: set_value(p, 1, "layers_on_ue", "two"),
        "line 2, column layers_on_ue: 'two' is not int",
    ),
    ("sweep", figures.SWEEP_FILE, lambda p: set_value(p, 1, "dropout", "?"), "column dropout: '?' is not float"),
    ("ber_per", "channel_ber_per.csv", lambda p: p.write_text(p.read_text().splitlines()[0] + "\n"), "no data rows"),
    ("rsm_fit", "rsm_fit_paper.csv", lambda p: set_value(p, 1, "held_out", "maybe"), "column held_out: 'maybe'"),
    ("training", "rl_paper_a2c_curves.csv", lambda p: drop_column(p, "mean_return"), "no column(s) mean_return"),
    ("cost", "rl_llm_cost.json", lambda p: p.write_text("{}"), "KeyError"),
    ("protect", figures.PROTECT_P_FILE, lambda p: drop_column(p, "protect"), "no column(s) protect"),
    (
        "protect",
        figures.PROTECT_SNR_FILE,
        lambda p: set_value(p, 3, "snr_db", "loud"),
        "snr_db is 'loud', not a number",
    ),
    ("cost", "rl_paper_ppo.json", lambda p: p.write_text("not json"), "JSONDecodeError"),
    ("nr_bler", figures.NR_BLER_FILE, lambda p: set_value(p, 4, "errors", "3"), "the curve of MCS 3 stops at 8"),
    ("nr_bler", figures.NR_BLER_FILE, lambda p: drop_column(p, "bler_high"), "no column(s) bler_high"),
    ("nr_snr", figures.NR_SNR_FILE, lambda p: drop_column(p, "ppl"), "no column(s) ppl"),
]


@pytest.mark.parametrize(
    "name,file,damage,message", MALFORMED, ids=[f"{n}-{m.split(':')[0][:24]}" for n, _, _, m in MALFORMED]
)
def test_every_malformed_file_is_named(results, tmp_path, capsys, name, file, damage, message):
    damage(results / file)
    out = tmp_path / "figures"
    assert figures.main(["--only", name, "--results-dir", str(results), "--figures-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{name}: malformed {results / file}" in err
    assert message in err
    assert "Traceback" not in err
    assert not (out / f"{name}.png").exists()


def test_a_malformed_file_is_named_and_the_others_are_drawn(results, tmp_path, capsys, low_dpi):
    set_value(results / figures.LATENCY_FILE, 5, "ue_compute_s", "fast")
    out = tmp_path / "figures"
    assert figures.main(["--results-dir", str(results), "--figures-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert (
        f"latency: malformed {results / figures.LATENCY_FILE}: line 6, column ue_compute_s: 'fast' is not float" in err
    )
    assert "1 figure(s) failed: latency" in err
    assert_drawn(out, [n for n in figures.FIGURES if n != "latency"])


def test_malformed_file_from_the_command_line(results, tmp_path):
    """The user's view of a broken file: a message naming it, the figures asked for drawn, exit status 1."""
    drop_column(results / figures.LATENCY_FILE, "edge_compute_s")
    out = tmp_path / "figures"
    r = run_script(
        "figures.py",
        "--only",
        "latency",
        "sweep",
        "--results-dir",
        str(results),
        "--figures-dir",
        str(out),
        timeout=120,
    )
    assert r.returncode == 1
    assert f"latency: malformed {results / figures.LATENCY_FILE}: no column(s) edge_compute_s" in r.stderr
    assert "Traceback" not in r.stderr
    assert_drawn(out, ["sweep"])


def test_only_draws_the_figures_named(results, tmp_path, low_dpi):
    out = tmp_path / "figures"
    assert figures.main(["--only", "snr", "--results-dir", str(results), "--figures-dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["snr.pdf", "snr.png"]


def test_extra_snr_files_and_withheld_rows(results, tmp_path, low_dpi):
    """A further sweep_snr_*.csv (64-QAM) is drawn with the required ones; rows with a share
    withheld (a later sweep column) do not enter the curves of the snr figure."""
    rows = []
    for split in SPLITS:
        rows.append(sweep_row(split, "dropout", "", 0.0, 0, CLEAN_PPL))
        rows += [
            sweep_row(split, "erasure", snr, 0.5, 0, 40.0, modulation="64qam", fading="rayleigh") for snr in SNR_GRID
        ]
    write_csv(results / figures.SNR_FILE.format(modulation="64qam"), rows)
    sweeps = figures.read_snr_sweeps(results)
    assert list(sweeps) == [*figures.SNR_MODULATIONS, "64qam"]

    path = results / figures.SNR_FILE.format(modulation="qpsk")
    with path.open(newline="") as f:
        qpsk = list(csv.DictReader(f))
    write_csv(path, qpsk + [{**r, "withheld": 0.5, "ppl": 1e9} for r in qpsk if r["link"] != "dropout"])
    assert all(r["ppl"] < 1e9 for r in figures.read_snr_sweeps(results)["qpsk"])
    out = tmp_path / "figures"
    assert figures.main(["--only", "snr", "--results-dir", str(results), "--figures-dir", str(out)]) == 0
    assert_drawn(out, ["snr"])


def test_recovery_snr():
    snrs = [0.0, 10.0, 20.0, 30.0]
    assert figures.recovery_snr(snrs, [900, 20, 16, 15], 15) == 20.0  # 16 <= 16.5; 20 > 16.5
    assert figures.recovery_snr(snrs, [900, 16, 30, 15], 15) == 30.0  # must stay recovered
    assert figures.recovery_snr(snrs, [15, 15, 15, 15], 15) == 0.0
    assert math.isnan(figures.recovery_snr(snrs, [15, 15, 15, 17], 15))
    assert math.isnan(figures.recovery_snr(snrs, [15, 15, 15, math.nan], 15))


def test_latency_table_command_feeds_the_figure(tmp_path, low_dpi):
    """The command that makes results/latency_breakdown.csv, and figures.py reading its output."""
    results = tmp_path / "results"
    r = run_script("-m", "layersplit.channel", "--latency-table", str(results / figures.LATENCY_FILE), timeout=120)
    assert r.returncode == 0, r.stderr
    with (results / figures.LATENCY_FILE).open(newline="") as f:
        rows = list(csv.DictReader(f))
    snrs = {float(r["snr_db"]) for r in rows}
    assert snrs == {10.0, 20.0, 30.0}
    assert len(rows) == 2 * len(snrs) * (30 + 32)  # (prefill, decode) x SNRs x layers 1..n of both models
    for row in rows:
        parts = sum(float(row[k]) for k in ("ue_compute_s", "tx_s", "edge_compute_s"))
        assert float(row["total_s"]) == pytest.approx(parts, rel=1e-5)
    prefill = [r for r in rows if r["model"] == "smollm2-135m" and r["phase"] == "prefill" and float(r["snr_db"]) == 10]
    # Nakagami-m (m = 2, the default): 4,866,048 bits / (20 MHz x E[log2(1 + 10 g)], g ~ Gamma(2, 1/2) = 3.1664
    # by a 4e6-sample Monte Carlo here) = 76.84 ms at 10 dB (83.71 ms under Rayleigh)
    assert float(prefill[0]["tx_s"]) == pytest.approx(0.07684, rel=1e-3)
    out = tmp_path / "figures"
    assert figures.main(["--only", "latency", "--results-dir", str(results), "--figures-dir", str(out)]) == 0
    assert_drawn(out, ["latency"])


def test_cost_figure_shows_the_llm_comparison_of_a_full_train_py_run(results, tmp_path, monkeypatch):
    returns = {
        name: {"mean": mean, "ci95": 1.0}
        for name, mean in (
            ("learned (LLM in the loop)", -3.0),
            ("surrogate ppo_s0", -1.0),
            ("fixed", -5.0),
            ("best-static", 0.5),
            ("random", -9.0),
        )
    }
    (results / "rl_llm_ppo.json").write_text(
        json.dumps(
            {
                "model": "tiny",
                "tokens_per_step": 64,
                "seconds_per_step": 0.5,
                "timesteps": 6000,
                "wall_s": 3000.0,
                "evaluation": {"episodes": 20, "returns": returns, "best_static": {"choice": "split 1"}},
            }
        )
    )
    drawn = {}
    monkeypatch.setattr(rl, "save", lambda fig, folder, name: drawn.setdefault(name, fig) and folder / name)
    figures.fig_cost(results, tmp_path)
    panel = drawn["cost"].axes[2]
    assert [t.get_text() for t in panel.get_yticklabels()] == [
        "learned (LLM in the loop)",
        "surrogate ppo_s0",
        "fixed",
        "best-static:\nsplit 1 (2 layers on the UE)",
        "random",
    ]
    assert [p.get_width() for p in panel.patches] == [-3.0, -1.0, -5.0, 0.5, -9.0]


def test_training_figure_draws_the_algorithms_that_were_run(results, tmp_path):
    (results / "rl_paper_dqn_curves.csv").unlink()
    out = tmp_path / "figures"
    assert figures.main(["--only", "training", "--results-dir", str(results), "--figures-dir", str(out)]) == 0
    assert (out / "training.png").is_file()


def test_snr_figure_ignores_the_sweeps_companion_files_and_rsm_fit_takes_empty_intervals(results, tmp_path):
    import shutil

    for m in figures.SNR_MODULATIONS:  # what add_noise.py --sweep writes beside each results file
        shutil.copy(results / figures.SNR_FILE.format(modulation=m), results / f"sweep_snr_{m}_cells.csv")
        shutil.copy(ROOT / "results" / "sweep_smollm2-135m_windows.csv", results / f"sweep_snr_{m}_windows.csv")
    rows = list(csv.DictReader((results / "rsm_fit_paper.csv").open()))
    write_csv(
        results / "rsm_fit_paper.csv",
        [
            {**r, "ppl_low": "" if i == 0 else 0.5 * float(r["ppl"]), "ppl_high": "" if i == 0 else 2 * float(r["ppl"])}
            for i, r in enumerate(rows)
        ],
    )  # pandas writes a NaN as ''
    out = tmp_path / "figures"
    assert figures.main(["--only", "snr", "rsm_fit", "--results-dir", str(results), "--figures-dir", str(out)]) == 0


@pytest.mark.parametrize("columns", [("split", "layers_on_ue"), ("layers_on_ue",), ("split",)])
def test_latency_figure_plots_against_the_0_based_split(results, tmp_path, monkeypatch, columns):
    """The table's split column when it has one, else layers_on_ue - 1; the fastest split in the titles."""
    rows = list(csv.DictReader((results / figures.LATENCY_FILE).open()))
    write_csv(
        results / figures.LATENCY_FILE,
        [
            {
                **{k: v for k, v in r.items() if k != "layers_on_ue"},
                **({"split": int(r["layers_on_ue"]) - 1} if "split" in columns else {}),
                **({"layers_on_ue": r["layers_on_ue"]} if "layers_on_ue" in columns else {}),
            }
            for r in rows
        ],
    )
    drawn = {}
    monkeypatch.setattr(channel, "save", lambda fig, folder, name: drawn.setdefault(name, fig) and folder / name)
    figures.fig_latency(results, tmp_path)
    panel = drawn["latency"].axes[0]  # SmolLM2 prefill at 10 dB: layers 1..3 on the UE
    assert sorted({round(p.get_x() + p.get_width() / 2, 6) for p in panel.patches}) == [0, 1, 2]
    assert "fastest: split 0 (1 layer on the UE)" in panel.get_title()
    assert drawn["latency"].axes[-1].get_xlabel() == figures.SPLIT_AXIS
