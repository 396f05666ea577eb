"""The quoted tables of the README and docs/ are what layersplit/claims.py writes from the committed results."""

import json
import shutil

import numpy as np
import pytest

from conftest import ROOT, run_script
from layersplit import UserError, claims, claims_stats, claims_tables

HOMES = {  # each generated block and the one file that holds it
    "claims": "README.md",
    "rl": "docs/surrogate-and-rl.md",
    "ablation": "docs/surrogate-and-rl.md",
    "sweep": "docs/sweep.md",
    "paired": "docs/sweep.md",
    "fairness": "docs/serving.md",
    "gpu": "docs/gpu-and-ray.md",
    "pipeline": "docs/pipeline.md",
    "fresh": "README.md",
    "nr_link": "docs/nr-link.md",
    "nr_latency": "docs/nr-link.md",
    "nr_ldpc": "docs/nr-link.md",
    "protect_arq": "docs/protected-path.md",
    "protect_cost": "docs/protected-path.md",
    "protect_rl": "docs/protected-path.md",
    "protect_quality_snr": "docs/protected-path.md",
    "protect_quality_p": "docs/protected-path.md",
    "nr_residual_read": "docs/nr-link.md",
    "burst": "docs/uncoded-link.md",
    "nr_burst": "docs/nr-link.md",
    "nr_tails": "docs/nr-link.md",
    "nr_rule_cost": "docs/nr-link.md",
}


def test_the_readme_and_docs_quote_what_the_committed_results_give():
    held = claims.held(ROOT)
    assert {name: path.relative_to(ROOT).as_posix() for name, (path, _) in held.items()} == HOMES
    fresh = claims.blocks(ROOT / "results")
    for name, (path, body) in held.items():
        where = path.relative_to(ROOT).as_posix()
        assert body == fresh[name], (
            f"{where} block {name!r} differs from the results: python figures.py --claims {where}"
        )


def test_write_all_rewrites_each_block_where_it_lives(tmp_path):
    (tmp_path / "docs").mkdir()
    stale = "{}\nstale\n{}"
    readme = tmp_path / "README.md"
    readme.write_text("front\n" + stale.format(claims.BEGIN.format("claims"), claims.END.format("claims")) + "\nend\n")
    page = tmp_path / "docs" / "rl.md"
    page.write_text("# RL\n" + stale.format(claims.BEGIN.format("rl"), claims.END.format("rl")) + "\n")
    plain = tmp_path / "docs" / "plain.md"
    plain.write_text("no blocks\n")
    changed = claims.write_all(ROOT / "results", tmp_path)
    assert changed == {readme: ["claims"], page: ["rl"]}
    assert claims.in_readme(readme.read_text())["claims"] == claims_tables.block_claims(ROOT / "results")
    assert claims.in_readme(page.read_text())["rl"] == claims_tables.block_rl(ROOT / "results")
    assert readme.read_text().startswith("front\n") and readme.read_text().endswith("\nend\n")
    assert plain.read_text() == "no blocks\n"
    before = {p: p.read_bytes() for p in (readme, page)}
    assert claims.write_all(ROOT / "results", tmp_path) == {readme: [], page: []}  # current: nothing rewritten
    assert {p: p.read_bytes() for p in (readme, page)} == before


def test_a_block_in_two_places_is_refused(tmp_path):
    (tmp_path / "docs").mkdir()
    block = f"{claims.BEGIN.format('rl')}\nx\n{claims.END.format('rl')}\n"
    (tmp_path / "README.md").write_text(block)
    (tmp_path / "docs" / "rl.md").write_text(block)
    with pytest.raises(UserError, match="'rl' is also in"):
        claims.held(tmp_path)


def test_verdicts_follow_the_stated_rule():
    assert claims_stats.verdict([(1.0, 0.5), (0.2, 0.1)]) == "reproduced"
    assert claims_stats.verdict([(1.0, 0.5), (0.2, 0.3)]) == "partly"  # the second interval reaches 0
    assert claims_stats.verdict([(-1.0, 0.5), (0.0, 0.3)]) == "not reproduced"


def test_shares_are_per_seed_and_gaps_paired_by_seed():
    run = {
        "returns": {
            "learned": {"mean": 2.0, "ci95": 0, "per_seed": [1.0, 3.0]},
            "fixed": {"mean": 1.0, "ci95": 0, "per_seed": [0.5, 1.5]},
            "optimum": {"mean": 3.0, "ci95": 0, "per_seed": [1.0, 5.0]},
        }
    }
    s = claims_stats.run_stats(run, "learned")
    assert s["share"] == pytest.approx((1.0 + 0.6) / 2)  # 1/1 and 3/5, not 2/3
    gap = claims_stats.run_stats(run, "fixed")["gap"]
    half = 12.706 * np.std([0.5, 1.5], ddof=1) / np.sqrt(2)  # t(0.975, 1 df) x SD / sqrt(2)
    assert gap[0] == pytest.approx(1.0) and gap[1] == pytest.approx(half, rel=1e-3)


def test_figures_claims_rewrites_only_the_generated_blocks(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{claims.BEGIN.format('rl')}\nstale\n{claims.END.format('rl')}\noutro\n")
    done = run_script("figures.py", "--claims", str(readme), "--results-dir", str(ROOT / "results"))
    assert done.returncode == 0, done.stderr
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "stale" not in text
    assert claims.in_readme(text)["rl"] == claims_tables.block_rl(ROOT / "results")
    again = run_script("figures.py", "--claims", str(readme), "--results-dir", str(ROOT / "results"))
    assert "1 generated block(s), 0 rewritten" in again.stdout and readme.read_text() == text
    (tmp_path / "plain.md").write_text("no blocks\n")
    refused = run_script("figures.py", "--claims", str(tmp_path / "plain.md"))
    assert refused.returncode == 2 and "holds no generated block" in refused.stderr


def test_a_changed_result_changes_the_generated_table(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "results", results)
    before = claims_tables.block_rl(results)
    run = json.loads((results / "rl_paper_ppo.json").read_text())
    run["returns"]["learned"]["per_seed"][0] += 1.0
    (results / "rl_paper_ppo.json").write_text(json.dumps(run))
    assert claims_tables.block_rl(results) != before


def test_the_committed_windows_belong_to_the_committed_rows():
    """The surrogate sweep's windows file (recomputed with the current code) against its committed rows:
    the same cells, and each row's token-weighted NLL, accuracy and window spread from its windows."""
    import csv
    import math

    from layersplit import cells

    path = ROOT / "results" / claims_stats.SWEEP
    with path.open(newline="") as f:
        rows = {cells.row_key(r): r for r in csv.DictReader(f)}
    with cells.windows_path(path).open(newline="") as f:
        found = {}
        for w in csv.DictReader(f):
            found.setdefault(cells.row_key(w), []).append(w)
    assert found.keys() == rows.keys()
    for key, row in rows.items():
        ws = found[key]
        assert sorted(int(w["window"]) for w in ws) == list(range(int(row["windows"])))
        tokens = sum(int(w["tokens"]) for w in ws)
        assert tokens == int(row["scored_tokens"])
        assert sum(float(w["nll_sum"]) for w in ws) / tokens == pytest.approx(float(row["nll"]), rel=1e-5)
        # float32 rounding differs from the code that made the rows: a near-tie may flip one token's argmax
        assert abs(sum(int(w["correct"]) for w in ws) - float(row["token_accuracy"]) * tokens) <= 1.01
        means = [float(w["nll_sum"]) / int(w["tokens"]) for w in ws]
        mean = sum(means) / len(means)
        sd = math.sqrt(sum((x - mean) ** 2 for x in means) / (len(means) - 1))
        assert sd == pytest.approx(float(row["nll_window_sd"]), rel=1e-4, abs=1e-6)


def test_the_readme_reading_of_the_ablation_holds_in_the_record():
    """docs/surrogate-and-rl.md: on SmolLM2's surrogate, every seed of the original set-up ends every
    episode at the best static split with its return to the last digit; on both surrogates the default
    beats the best static split and the original set-up with intervals above 0."""
    record = json.loads((ROOT / "results" / "rl_ablation.json").read_text())
    shipped = record["surrogates"]["shipped"]
    originals = [r for r in shipped["runs"].values() if r["setup"].startswith("original")]
    assert len(originals) == 3 and shipped["best_static"]["choice"] == "split 10"
    assert all(r["returns"] == shipped["best_static"]["returns"] for r in originals)
    assert all(set(r["final_splits"]) == {10} and r["policy_map"]["channel_blind"] for r in originals)
    for summary in record["summary"].values():
        default = summary["setups"]["default: 8 batched, scaled, 0.9"]
        assert default["minus_best_static"] - default["minus_best_static_ci95"] > 0
        assert default["minus_original"] - default["minus_original_ci95"] > 0
    # scaled observations alone beat the original set-up on both; on the authors' not the best static split
    for summary in record["summary"].values():
        scaled = summary["setups"]["only scaled observations"]
        assert scaled["minus_original"] - scaled["minus_original_ci95"] > 0
        gamma = summary["setups"]["only gamma 0.9"]  # gamma 0.9 alone: no measurable change
        assert abs(gamma["minus_original"]) <= gamma["minus_original_ci95"]
    authors_scaled = record["summary"]["authors"]["setups"]["only scaled observations"]
    assert authors_scaled["minus_best_static"] - authors_scaled["minus_best_static_ci95"] <= 0
    batched = [r for r in shipped["runs"].values() if r["setup"] == "only 8 batched envs"]
    assert sum(r["returns"] != shipped["best_static"]["returns"] for r in batched) == 1  # one seed of three freed
    authors_batched = record["summary"]["authors"]["setups"]["only 8 batched envs"]
    assert abs(authors_batched["minus_original"]) <= authors_batched["minus_original_ci95"]  # none measurably


def test_no_share_of_the_optimum_where_returns_are_below_zero():
    def run(optimum):
        per_seed = {"learned": [-9.0, -10.0, -11.0], "fixed": [-12.0, -13.0, -14.0], "optimum": optimum}
        return {"returns": {k: {"per_seed": v, "mean": sum(v) / 3, "ci95": 0.0} for k, v in per_seed.items()}}

    negative = claims_stats.run_stats(run([-8.0, -9.0, -10.0]), "fixed")
    assert negative["share"] != negative["share"]  # NaN: -12 / -8 = 150% would read as better than the optimum
    assert claims_tables.pct(negative["share"]) == "no share: returns < 0"
    assert negative["gap"][0] == 3.0  # the paired gap learned - fixed stays
    positive = claims_stats.run_stats(run([20.0, 20.0, 20.0]), "fixed")
    assert positive["share"] == -0.65
