"""The committed RL results were evaluated on the surrogates committed now: for every results/rl_*.json of a
surrogate environment, the best static action's scores on the 200 training starts, recomputed from the
surrogate file the result names, are the committed ones. A refit committed without rerunning the RL that
reads it fails here (the PPO figures of the README would otherwise describe a surrogate no longer shipped)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import ROOT
from layersplit import envs, policies, shipped_file

RESULTS = sorted(
    path
    for path in (ROOT / "results").glob("rl_*.json")
    if json.loads(path.read_text()).get("env") in envs.ENV_IDS
    and json.loads(path.read_text())["env"] != "LayerSplit-LLM-v0"
)


def surrogate_file(name: str):
    """A result's rsm: a shipped surrogate by file name, else a path from the repository root."""
    shipped = shipped_file(name)
    return shipped if shipped.exists() else ROOT / name


def test_every_surrogate_environments_result_is_checked():
    names = {p.stem for p in RESULTS}
    assert {"rl_paper_ppo", "rl_wireless_ppo", "rl_wireless_nr_ppo", "rl_protect_ppo"} <= names, names


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_the_committed_rl_result_reads_the_committed_surrogate(path):
    result = json.loads(path.read_text())
    rsm = surrogate_file(result["rsm"])
    if not rsm.exists():
        pytest.skip(f"{result['rsm']} is not in this checkout (the authors' surrogate lives outside the repository)")
    env = envs.make(result["env"], rsm_path=rsm, episode_end=result["episode_end"])
    committed = result["best_static"]
    assert committed["training_starts"] == policies.BEST_STATIC_EPISODES
    best = policies.BestStatic(env.unwrapped)
    assert best.choice == committed["choice"] and list(best.scores) == list(committed["scores"])
    np.testing.assert_allclose(list(best.scores.values()), list(committed["scores"].values()), rtol=1e-9, atol=1e-9)
