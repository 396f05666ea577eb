"""LayerSplit-Protect-v0: the protection level K as part of the wireless environment's action, its
'protect'-form surrogate, and the committed sweep it is fitted on."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from layersplit import UserError, envs, policies, run_folders, surrogate, surrogate_fit, training

ROOT = Path(__file__).resolve().parents[1]
PROTECT_SWEEP = ROOT / "results" / "sweep_protect_wireless_smollm2-135m.csv"
WIRELESS_SWEEP = ROOT / "results" / "sweep_wireless_smollm2-135m.csv"


@pytest.fixture(scope="module")
def protect_rsm(tmp_path_factory) -> Path:
    """A protect-form surrogate of a known world: protection helps at a low SNR (accuracy lost to the
    channel is divided by 1 + K) and costs a little air time per protected element."""
    rng = np.random.default_rng(0)
    n = 3000
    x = np.column_stack(
        [
            rng.uniform(10, 40, n),
            rng.integers(1, 11, n),
            rng.choice(envs.WIRELESS_WITHHELD, n),
            rng.choice(envs.PROTECTS, n),
        ]
    )
    damage = np.exp(-(x[:, 0] - 10) / 4) / (1 + x[:, 3])
    accuracy = 0.45 - 0.4 * damage - 0.3 * x[:, 2]
    y = np.column_stack([2.7 + 5 * damage + x[:, 2], accuracy, 0.03 + 0.002 * x[:, 1] + 2e-4 * x[:, 3]])
    path = tmp_path_factory.mktemp("rsm") / "protect.pth"
    surrogate.fit("protect", x, y, seed=0, epochs=1500).save(path)
    return path


def test_the_protect_env_passes_both_checkers_and_acts_on_split_share_and_k(protect_rsm):
    env = envs.make("LayerSplit-Protect-v0", rsm_path=protect_rsm)
    base = env.unwrapped
    assert base.action_space.n == len(envs.WIRELESS_SPLITS) * len(envs.WIRELESS_WITHHELD) * len(envs.PROTECTS) == 250
    gym_check_env(base)
    sb3_check_env(base)
    env.reset(seed=0)
    _, _, _, _, info = env.step(int(np.flatnonzero((base.actions[:, 0] == 3) & (base.actions[:, 2] == 16))[0]))
    assert info["split"] == 3 and info["protect"] == 16


def test_the_reward_reads_k_protection_pays_at_a_low_snr_only(protect_rsm):
    base = envs.make("LayerSplit-Protect-v0", rsm_path=protect_rsm).unwrapped
    chosen = {snr: base.actions[int(np.argmax(base.rewards(snr)["reward"]))] for snr in (10.0, 40.0)}
    assert chosen[10.0][2] > 0  # the surrogate's world: damage / (1 + K) outweighs K's air time near 10 dB
    assert chosen[40.0][2] == 0  # no damage left to undo: every protected element only costs
    assert policies.wireless_fixed(None, base) == int(
        np.flatnonzero((base.actions[:, 0] == 4) & (base.actions[:, 1] == 0) & (base.actions[:, 2] == 0))[0]
    )


def test_the_wireless_env_keeps_its_actions_and_refuses_protection_without_a_protect_surrogate(protect_rsm):
    base = envs.make("LayerSplit-Wireless-v0").unwrapped
    expected = [(s, w) for s in envs.WIRELESS_SPLITS for w in envs.WIRELESS_WITHHELD]
    assert base.actions[:, :2].tolist() == [list(map(float, a)) for a in expected]  # action numbers unchanged
    assert not base.actions[:, 2].any()
    with pytest.raises(UserError, match="needs a 'protect' one"):
        envs.make("LayerSplit-Wireless-v0", protects=(0, 4))
    with pytest.raises(UserError, match="need a 'protect'-form surrogate"):
        envs.make("LayerSplit-Wireless-v0", protects=(0, 4), surrogate=base.surrogate)
    with pytest.raises(UserError, match="needs a 'protect' one"):
        envs.make("LayerSplit-Protect-v0", rsm_path=ROOT / "reward_predictor_wireless.pth")
    # a protect surrogate at K = 0 only serves the Wireless env's action set
    only_zero = envs.make("LayerSplit-Wireless-v0", rsm_path=protect_rsm).unwrapped
    assert only_zero.action_space.n == len(expected)


def test_a_policy_trained_on_the_protect_env_chooses_split_and_k_from_the_snr(protect_rsm, tmp_path):
    training.train(
        "LayerSplit-Protect-v0",
        "ppo",
        tmp_path / "r",
        256,
        0,
        2,
        {"n_steps": 64, "batch_size": 64},
        env_kwargs={"rsm_path": str(protect_rsm)},
        progress=False,
    )
    choose = policies.split_chooser(tmp_path / "r", rsm_path=protect_rsm)
    model = run_folders.load_policy(tmp_path / "r")
    env = envs.make("LayerSplit-Protect-v0", rsm_path=protect_rsm).unwrapped
    for snr in (5.0, 25.0, 60.0):
        obs = np.array([min(max(snr, 10.0), 40.0)], dtype=np.float32)
        split, _, k = env.actions[int(model.predict(obs, deterministic=True)[0])]
        assert choose(snr) == (int(split), int(k))


@pytest.mark.skipif(not PROTECT_SWEEP.is_file(), reason="the committed protect sweep is not in this checkout")
def test_the_committed_protect_sweep_at_k0_is_the_committed_wireless_sweep():
    """K = 0 is today's link exactly: every unprotected cell of the protect sweep (same grid, seed and
    streams) equals the wireless sweep's, computed separately."""
    protect = surrogate_fit.wireless_cells(PROTECT_SWEEP, protect=True)
    plain = surrogate_fit.wireless_cells(WIRELESS_SWEEP)
    assert set(protect["protect"]) == set(envs.PROTECTS)
    at_zero = protect[protect["protect"] == 0].drop(columns="protect").reset_index(drop=True)
    assert len(at_zero) == len(plain) == 300
    for column in ("snr_db", "split", "withheld", "log_ppl", "token_accuracy", "latency_s"):
        assert np.array_equal(at_zero[column].to_numpy(), plain[column].to_numpy()), column
    # what the protected path adds is in the latency the surrogate learns
    cells = protect.set_index(["snr_db", "split", "withheld", "protect"])
    assert (cells.xs(64, level="protect")["latency_s"] > cells.xs(0, level="protect")["latency_s"]).all()


def test_the_shipped_protect_surrogate_loads_with_its_metadata():
    if not envs.PROTECT_RSM.is_file():
        pytest.skip("reward_predictor_protect.pth is not in this checkout")
    rsm = surrogate.load(envs.PROTECT_RSM, form="protect")
    assert rsm.metadata["model"] == "smollm2-135m" and "held_out" in rsm.metrics
    assert gym.make("LayerSplit-Protect-v0").unwrapped.surrogate.form == "protect"


def test_the_llm_env_takes_k_every_element_protected_is_the_clean_model():
    import torch
    from transformers import LlamaForCausalLM

    from conftest import tiny_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(num_hidden_layers=11)).eval()
    ids = torch.randint(0, model.config.vocab_size, (48,))
    ppl = {}
    for k in (0, model.config.hidden_size):
        env = envs.LLMSplitEnv(model=model, token_ids=ids, tokens=48, context_length=24, protect=k)
        env.reset(seed=0)
        ppl[k] = [env.perplexity(p, 5) for p in (0.0, 0.3)]
        env.close()
    assert ppl[0][1] != ppl[0][0]  # the link loses elements
    assert (
        ppl[model.config.hidden_size][1] == ppl[model.config.hidden_size][0] == ppl[0][0]
    )  # none lost when all protected


def write_protect_sweep(path: Path) -> Path:
    """A small physical-link sweep with a protect column, from a made-up world like protect_rsm's."""
    lines = ["model,dataset,split,link,snr_db,dropout,withheld,protect,draw,nll,token_accuracy,scored_tokens,total_s"]
    for snr in (10.0, 20.0, 30.0, 40.0):
        for split in range(1, 11):
            for withheld in (0.0, 0.1, 0.3):
                for k in (0, 4, 64):
                    damage = np.exp(-(snr - 10) / 4) / (1 + k)
                    lines.append(
                        f"m,d,{split},erasure,{snr},0.1,{withheld},{k},0,{2.7 + 5 * damage + withheld},"
                        f"{max(0.45 - 0.4 * damage - 0.3 * withheld, 0.0)},511,"  # a share: never < 0
                        f"{0.03 + 0.002 * split + 2e-4 * k}"
                    )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_rsm_fits_and_trains_the_protect_env_from_the_command_line(tmp_path):
    from conftest import run_script

    sweep = write_protect_sweep(tmp_path / "sweep.csv")
    fit = run_script(
        "train_rsm.py",
        "fit",
        "--sweep",
        "",
        "--wireless-sweep",
        "",
        "--nr-wireless-sweep",
        "",
        "--protect-sweep",
        str(sweep),
        "--protect-output",
        str(tmp_path / "p.pth"),
        "--epochs",
        "300",
        "--holdout-repeats",
        "0",
        "--results-dir",
        str(tmp_path / "res"),
    )
    assert fit.returncode == 0, fit.stderr
    assert "protect surrogate: snr_db, split, withheld, protect -> log_ppl" in fit.stdout
    assert (tmp_path / "res" / "rsm_fit_protect.csv").is_file()
    train = run_script(
        "train_rsm.py",
        "train",
        "--env",
        "LayerSplit-Protect-v0",
        "--rsm",
        str(tmp_path / "p.pth"),
        "--total-timesteps",
        "800",
        "--seeds",
        "0",
        "--run-dir",
        str(tmp_path / "runs"),
        "--no-progress",
        "--results-dir",
        str(tmp_path / "res"),
        "--eval-episodes",
        "3",
    )
    assert train.returncode == 0, train.stderr
    result = json.loads((tmp_path / "res" / "rl_protect_ppo.json").read_text())
    assert ", K=" in result["best_static"]["choice"] and "greedy" not in result["returns"]  # greedy is the optimum here
    policy = (tmp_path / "res" / "rl_protect_ppo_policy.csv").read_text().splitlines()
    assert "protect" in policy[0].split(",")
    # a sweep without K cannot make a protect-form surrogate
    (tmp_path / "flat.csv").write_text(
        "\n".join(line for i, line in enumerate(sweep.read_text().splitlines()) if i == 0 or line.split(",")[7] == "0")
        + "\n"
    )
    flat = run_script(
        "train_rsm.py",
        "fit",
        "--sweep",
        "",
        "--wireless-sweep",
        "",
        "--nr-wireless-sweep",
        "",
        "--protect-sweep",
        str(tmp_path / "flat.csv"),
        "--protect-output",
        str(tmp_path / "q.pth"),
        "--results-dir",
        str(tmp_path),
    )
    assert flat.returncode == 2 and "one protection level only" in flat.stderr


def test_train_py_refuses_a_k_beyond_the_width_before_the_run_exists(tmp_path, sample_txt):
    import torch
    from transformers import LlamaForCausalLM

    from conftest import make_tokenizer, run_script, tiny_config

    torch.manual_seed(0)
    LlamaForCausalLM(tiny_config(num_hidden_layers=11)).save_pretrained(tmp_path / "m")
    make_tokenizer().save_pretrained(tmp_path / "m")
    common = [
        "train.py",
        "--model",
        str(tmp_path / "m"),
        "--dataset",
        str(sample_txt),
        "--tokens",
        "32",
        "--total-timesteps",
        "4",
        "--n-steps",
        "4",
        "--batch",
        "2",
        "--eval-episodes",
        "0",
        "--run-dir",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "llm.json"),
        "--no-progress",
    ]
    bad = run_script(*common, "--protect", "1000")
    assert bad.returncode == 2 and "--protect 1000: a token has only 64 elements" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "runs" / "ppo_s0" / "config.json").exists()
    good = run_script(*common, "--protect", "2")  # the corrected command is not refused as another run's folder
    assert good.returncode == 0, good.stderr
    assert json.loads((tmp_path / "llm.json").read_text())["protect"] == 2
