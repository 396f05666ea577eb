"""The reward surrogate, the three environments, the baselines and exact optimum, and training."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from transformers import LlamaForCausalLM

from conftest import ROOT, tiny_config
from layersplit import UserError, agents, envs, policies, run_folders, surrogate, surrogate_fit, training

AUTHORS = ROOT.parent / "shared" / "reference" / "authors_reward_predictor.pth"
IDS = torch.randint(0, 300, (96,), generator=torch.Generator().manual_seed(1))


def constant_surrogate(form: str = "paper", value: float = 0.0) -> surrogate.Surrogate:
    """A surrogate whose every output is `value`: rewards that can be checked by hand."""
    spec = surrogate.FORMS[form]
    net = surrogate.network(len(spec["inputs"]), len(spec["outputs"]))
    for p in net.parameters():
        torch.nn.init.zeros_(p)
    with torch.no_grad():
        net.fc[4].bias.fill_(value)
    n_in, n_out = len(spec["inputs"]), len(spec["outputs"])
    return surrogate.Surrogate(form, net, np.zeros(n_in), np.ones(n_in), np.zeros(n_out), np.ones(n_out))


@pytest.fixture(scope="module")
def llm11():
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config(num_hidden_layers=11)).eval()


# --- the surrogate ---------------------------------------------------------------------------------
def test_fit_recovers_a_known_function_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.uniform(5, 40, 400), rng.integers(1, 11, 400), rng.uniform(0, 0.3, 400)])
    y = np.column_stack(
        [
            np.log1p(np.exp(-(x[:, 0] - 15) / 4)) + 0.1 * x[:, 1],
            0.4 / (1 + np.exp(-(x[:, 0] - 15) / 3)) - x[:, 2],
            0.02 + 0.5 / x[:, 0] + 0.004 * x[:, 1],
        ]
    )
    held = surrogate_fit.holdout_mask(len(x), 0.2, seed=0)
    rsm = surrogate.fit("wireless", x[~held], y[~held], seed=0, epochs=1500)
    prediction = rsm.predict(x[held])
    for i in range(3):
        assert surrogate_fit.r_squared(y[held, i], prediction[:, i]) > 0.98
    rsm.metadata["note"] = "synthetic"
    rsm.save(tmp_path / "w.pth")
    again = surrogate.load(tmp_path / "w.pth", form="wireless")
    assert np.allclose(again.predict(x[:5]), rsm.predict(x[:5])) and again.metadata["note"] == "synthetic"


def test_paper_form_takes_raw_inputs_like_the_original(tmp_path):
    rng = np.random.default_rng(1)
    x = np.column_stack([rng.uniform(0, 0.3, 200), rng.integers(1, 11, 200)])
    y = 0.5 * x[:, 0] * x[:, 1] - 0.02 * x[:, 1]
    rsm = surrogate.fit("paper", x, y, epochs=1500)
    raw = rsm.net(torch.tensor(x[:10], dtype=torch.float32)).detach().numpy()[:, 0]
    assert np.allclose(raw, rsm.predict(x[:10])[:, 0], atol=1e-5)  # the scaling is folded into the weights
    assert surrogate_fit.r_squared(y, rsm.predict(x)[:, 0]) > 0.98
    torch.save(rsm.net.state_dict(), tmp_path / "bare.pth")  # the authors' format, written from ours
    assert np.allclose(surrogate.load(tmp_path / "bare.pth").predict(x[:10]), rsm.predict(x[:10]), atol=1e-6)


@pytest.mark.skipif(not AUTHORS.exists(), reason="the authors' surrogate is not beside this checkout")
def test_the_authors_state_dict_loads_with_its_published_values():
    rsm = surrogate.load(AUTHORS, form="paper")
    got = rsm.predict([[0.01, 1], [0.10, 5], [0.30, 10], [0.20, 7]])[:, 0]
    assert np.allclose(got, [-0.030, -0.000, 0.073, 0.033], atol=6e-4)


def test_the_shipped_surrogates_load_with_their_metadata():
    paper = surrogate.load(ROOT / "reward_predictor.pth", form="paper")
    wireless = surrogate.load(ROOT / "reward_predictor_wireless.pth", form="wireless")
    for rsm in (paper, wireless):
        assert rsm.metadata["model"] == "smollm2-135m" and "held_out" in rsm.metrics
    assert paper.metadata["reference_split"] == surrogate.REFERENCE_SPLIT
    assert wireless.metrics["held_out"]["r2_token_accuracy"] > 0.9


def test_paper_cells_define_the_reward_against_the_fixed_split(tmp_path):
    rows = ["split,link,dropout,draw,nll,token_accuracy,scored_tokens,model,dataset"]
    for split, ppl in ((1, 20.0), (4, 40.0), (7, 30.0)):
        rows += [
            f"{split},dropout,0.1,0,{np.log(ppl)},0.3,100,m,d",
            f"{split},dropout,0.2,0,{np.log(2 * ppl)},0.2,100,m,d",
        ]
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    cells = surrogate_fit.paper_cells(tmp_path / "s.csv")
    reward = cells.set_index(["dropout", "split"])["inference_reward"]
    assert reward[(0.1, 1)] == pytest.approx(0.5) and reward[(0.1, 4)] == 0 and reward[(0.2, 7)] == pytest.approx(0.25)


def test_paper_cells_pool_draws_by_tokens_and_pair_each_draw_with_the_reference(tmp_path):
    nll = {(1, 0): 3.0, (1, 1): 3.2, (1, 2): 2.9, (4, 0): 3.1, (4, 1): 3.5, (4, 2): 3.0}  # (split, draw) at p = 0.1
    rows = [
        "split,link,dropout,draw,nll,token_accuracy,scored_tokens,windows,nll_window_sd,accuracy_window_sd,model,dataset"
    ]
    rows += [f"{s},dropout,0.1,{d},{v},0.3,100,2,0.1,0.01,m,d" for (s, d), v in nll.items()]
    rows += [f"{s},dropout,0.2,0,{v + 1},0.2,100,2,0.1,0.01,m,d" for s, v in ((1, 3.0), (4, 3.1))]
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    cells = surrogate_fit.paper_cells(tmp_path / "s.csv").set_index(["dropout", "split"])
    assert cells.loc[(0.1, 1), "nll"] == pytest.approx(np.mean([3.0, 3.2, 2.9]))  # equal tokens: the plain mean
    assert cells.loc[(0.1, 1), "samples"] == 6 and cells.loc[(0.1, 1), "ppl_low"] < cells.loc[(0.1, 1), "ppl"]
    paired = [1 - np.exp(nll[(1, d)] - nll[(4, d)]) for d in range(3)]
    assert cells.loc[(0.1, 1), "inference_reward_se"] == pytest.approx(np.std(paired, ddof=1) / np.sqrt(3))
    assert cells.loc[(0.1, 4), "inference_reward_se"] == 0 and cells.loc[(0.2, 1), "inference_reward_se"] == 0


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00garbage" * 10, "not a readable PyTorch file"),
        ("dict", "is not a reward surrogate"),
        ("shapes", "do not fit"),
    ],
)
def test_bad_surrogate_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if content == "dict":
        torch.save({"weights": torch.zeros(3)}, path)
    elif content == "shapes":
        torch.save({k: torch.zeros(3) for k in surrogate.AUTHORS_KEYS}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        surrogate.load(path)


def test_a_surrogate_of_the_other_form_is_refused():
    with pytest.raises(UserError, match="is a 'wireless' surrogate"):
        envs.make("LayerSplit-Paper-v0", rsm_path=ROOT / "reward_predictor_wireless.pth")
    with pytest.raises(UserError, match="no reward surrogate at"):
        surrogate.load(ROOT / "missing.pth")


def test_a_sweep_without_the_needed_columns_is_a_clear_error(tmp_path):
    (tmp_path / "s.csv").write_text("split,ppl\n1,20\n")
    with pytest.raises(UserError, match="no column.*link.*dropout"):
        surrogate_fit.paper_cells(tmp_path / "s.csv")
    with pytest.raises(UserError, match="no column.*snr_db"):
        surrogate_fit.wireless_cells(tmp_path / "s.csv")


# --- the environments ----------------------------------------------------------------------------------
def make_env(env_id, llm11=None, **kwargs):
    if env_id == "LayerSplit-LLM-v0":
        return gym.make(env_id, model=llm11, token_ids=IDS, tokens=64, context_length=32, **kwargs)
    return gym.make(env_id, **kwargs)


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_both_env_checkers_pass(env_id, llm11):
    env = make_env(env_id, llm11)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(make_env(env_id, llm11).unwrapped, warn=True)


def test_unknown_env_id_is_a_clear_error():
    with pytest.raises(UserError, match="unknown environment 'LayerSplit-Nope-v0'"):
        envs.make("LayerSplit-Nope-v0")


def original_step(split, action):
    """The original train__rsm.py step(), transcribed line by line: the action is remapped at the
    bounds first, then the (remapped) action picks the move and the p factor."""
    if split == 1 and action in [1, 3, 5, 7]:
        action = 0
    elif split == 10 and action in [2, 4, 6, 8]:
        action = 0
    if split == 2 and action in [3, 5, 7]:
        action = 1
    elif split == 9 and action in [4, 6, 8]:
        action = 2
    if split == 3 and action in [5, 7]:
        action = 3
    elif split == 8 and action in [6, 8]:
        action = 4
    if split == 4 and action in [7]:
        action = 5
    elif split == 7 and action in [8]:
        action = 6
    factor = 1.0
    if action == 1:
        split, factor = max(1, split - 1), 1.0005
    elif action == 2:
        split, factor = min(10, split + 1), 0.9995
    elif action == 3:
        split, factor = max(1, split - 2), 1.001
    elif action == 4:
        split, factor = min(10, split + 2), 0.999
    elif action == 5:
        split, factor = max(1, split - 3), 1.0015
    elif action == 6:
        split, factor = min(10, split + 3), 0.9995  # sic
    elif action == 7:
        split, factor = max(1, split - 4), 1.002
    elif action == 8:
        split, factor = min(10, split + 4), 0.998
    return split, factor


def test_original_bound_rule_spot_checks():
    # the notes' examples: at split 1 a shallower request leaves p unchanged; at 2, 3/5/7 act as 1
    assert original_step(1, 7) == (1, 1.0) and original_step(2, 7) == (1, 1.0005)
    assert original_step(3, 5) == (1, 1.001) and original_step(7, 8) == (10, 0.9995)


@pytest.mark.parametrize("start", range(1, 11))
def test_paper_transitions_follow_the_original_step_for_every_split_and_action(start):
    env = gym.make("LayerSplit-Paper-v0")
    for action in range(9):
        split, factor = original_step(start, action)
        env.reset(seed=0, options={"p": 0.2, "split": start})
        obs, reward, terminated, truncated, info = env.step(action)
        assert (info["split"], info["p"]) == (split, pytest.approx(0.2 * factor, rel=1e-12)), (start, action)
        rsm = env.unwrapped.surrogate.predict([[info["p"], split]])[0, 0]
        assert info["inference_reward"] == pytest.approx(rsm) and info["load_reward"] == pytest.approx(
            (10 - split) / 10
        )
        assert reward == pytest.approx(10 * rsm + (10 - split) / 10)
        assert np.allclose(obs, [info["p"], split]) and not terminated and not truncated
    # the vectorised transition (used by the optimum and greedy) agrees on all 90 pairs at once
    starts, actions = np.repeat(np.arange(1, 11), 9), np.tile(np.arange(9), 10)
    new_p, new_split = envs.PaperSplitEnv.transition(np.full(90, 0.2), starts, actions)
    expected = [original_step(int(s), int(a)) for s, a in zip(starts, actions)]
    assert new_split.tolist() == [e[0] for e in expected]
    assert np.allclose(new_p, [0.2 * e[1] for e in expected], rtol=1e-12, atol=0)


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_episodes_terminate_after_their_last_step_as_the_original(env_id, llm11):
    env = make_env(env_id, llm11)
    env.reset(seed=0)
    steps = env.unwrapped.episode_steps
    flags = [env.step(env.action_space.sample())[2:4] for _ in range(steps)]
    assert flags == [(False, False)] * (steps - 1) + [(True, False)]


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_truncation_is_an_option(env_id, llm11):
    env = make_env(env_id, llm11, episode_end="truncate")
    env.reset(seed=0)
    steps = env.unwrapped.episode_steps
    flags = [env.step(env.action_space.sample())[2:4] for _ in range(steps)]
    assert flags[-1] == (False, True)
    with pytest.raises(UserError, match="unknown episode end 'stop'"):
        make_env(env_id, llm11, episode_end="stop")


def test_paper_p_is_clipped_and_start_states_follow_the_original():
    env = gym.make("LayerSplit-Paper-v0")
    obs, info = env.reset(seed=3, options={"p": 0.2999, "split": 5})
    for _ in range(5):
        env.step(7)
    assert env.unwrapped.p == 0.3
    starts = [env.reset(seed=s)[1] for s in range(300)]
    assert all(0.01 <= s["p"] <= 0.3 and 1 <= s["split"] <= 9 for s in starts)
    assert {s["split"] for s in starts} == set(range(1, 10))


@pytest.mark.parametrize("episode_end", envs.EPISODE_ENDS)
def test_batched_paper_env_tells_sb3_whether_to_bootstrap(episode_end):
    vec = training.PaperVecEnv(3, episode_end=episode_end)
    vec.seed(1)
    vec.reset()
    for _ in range(5):
        _, _, dones, infos = vec.step(np.zeros(3, dtype=int))
    assert dones.all() and all(i["TimeLimit.truncated"] == (episode_end == "truncate") for i in infos)


def test_batched_paper_env_steps_exactly_like_the_single_one():
    vec = training.PaperVecEnv(4)
    vec.seed(5)
    obs = vec.reset()
    singles = [gym.make("LayerSplit-Paper-v0") for _ in range(4)]
    for env, (p, split) in zip(singles, zip(vec.p, vec.split)):
        env.reset(options={"p": float(p), "split": int(split)})
    rng = np.random.default_rng(0)
    for step in range(5):
        actions = rng.integers(9, size=4)
        obs, rewards, dones, infos = vec.step(actions)
        for env, a, r, d, info in zip(singles, actions, rewards, dones, infos):
            _, reward, terminated, _, single_info = env.step(int(a))
            assert r == pytest.approx(reward, rel=1e-6) and d == terminated
            assert info["split"] == single_info["split"] and info["p"] == pytest.approx(single_info["p"])
    assert all("terminal_observation" in i for i in infos)  # all ended at step 5 and were reset


def test_llm_env_measures_every_step_and_follows_the_original_rules(llm11):
    env = make_env("LayerSplit-LLM-v0", llm11)
    obs, info = env.reset(seed=0, options={"p": 0.2, "split": 4})
    ppl0 = info["ppl"]
    _, reward, _, _, info = env.step(6)  # split 7: deeper
    assert info["split"] == 7 and info["p"] == pytest.approx(0.2 * 0.9995)
    assert reward == pytest.approx(10.5 * (ppl0 - info["ppl"]) / ppl0 + (10 - 7) / 10)
    measured = [env.step(6)[4]["ppl"] for _ in range(3)]  # same split: still measured, fresh noise each time
    assert len(set(measured)) == 3 and env.unwrapped.p == pytest.approx(0.2 * 0.9995)
    _, _, _, _, info = env.step(0)  # split 1: shallower
    assert info["p"] == pytest.approx(0.2 * 0.9995 * 1.0005)
    starts = [env.reset(seed=s)[1] for s in range(40)]
    assert all(0.08 <= s["p"] <= 0.22 and 3 <= s["split"] <= 6 for s in starts)


def test_llm_env_needs_eleven_layers(tiny_llama):
    with pytest.raises(UserError, match="at least 11 decoder layers"):
        gym.make("LayerSplit-LLM-v0", model=tiny_llama, token_ids=IDS)


def test_wireless_env_reward_is_the_weighted_sum_of_its_parts():
    env = gym.make("LayerSplit-Wireless-v0")
    obs, _ = env.reset(seed=1, options={"snr_db": 18.0})
    assert obs[0] == 18.0
    base = env.unwrapped
    action = int(np.flatnonzero((base.actions[:, 0] == 3) & (base.actions[:, 1] == 0.1))[0])
    _, reward, _, _, info = env.step(action)
    assert info["split"] == 3 and info["withheld"] == 0.1 and info["snr_db"] == 18.0
    assert reward == pytest.approx(info["accuracy_reward"] + info["latency_reward"] + info["ue_compute_reward"])
    assert info["accuracy_reward"] == pytest.approx(envs.ACCURACY_WEIGHT * info["token_accuracy"])
    assert info["latency_reward"] == pytest.approx(-envs.LATENCY_WEIGHT * info["latency_s"])
    snrs = [env.step(0)[0][0] for _ in range(19)]
    assert env.unwrapped.steps == 20 and len(set(snrs)) > 10  # the SNR moves on its own


# --- baselines, optimum, evaluation --------------------------------------------------------------------
def test_optimum_on_a_hand_checkable_case():
    # with an inference reward of 0 only the load term (10 - split)/10 counts: from split 9 the best
    # is to jump shallower by 4 (split 5: 0.5), again (split 1: 0.9), then stay (0.9 x 3) = 4.1
    env = envs.PaperSplitEnv(surrogate=constant_surrogate())
    values = policies.paper_action_values(env, 0.1, 9, 5)
    assert values.max() == pytest.approx(4.1) and int(np.argmax(values)) == 7
    assert values[0] == pytest.approx(0.1 + 0.5 + 0.9 * 3)  # stay first: split 9, then 5, then 1 x 3


def test_dynamic_programming_equals_exhaustive_search():
    env = gym.make("LayerSplit-Paper-v0").unwrapped
    for p, split, horizon in ((0.05, 3, 5), (0.29, 9, 4), (0.21, 1, 5), (0.3, 10, 3)):
        assert np.allclose(
            policies.paper_action_values(env, p, split, horizon),
            policies.paper_exhaustive_values(env, p, split, horizon),
            atol=1e-9,
        )


def test_optimum_beats_every_baseline_and_evaluation_is_reproducible():
    env = gym.make("LayerSplit-Paper-v0")
    means = {
        name: policies.evaluate(env, policies.baseline(name, env.unwrapped, 0), 20, seed=7).mean
        for name in policies.BASELINES
    }
    assert means["optimum"] >= max(means.values()) - 1e-9
    again = policies.evaluate(env, policies.baseline("random", env.unwrapped, 0), 20, seed=7).mean
    assert again == means["random"]
    fixed = policies.evaluate(env, policies.baseline("fixed", env.unwrapped), 3, seed=1)
    assert all(s[-1] == surrogate.REFERENCE_SPLIT for s in fixed.splits)  # at most 4 moves reach split 4


def test_best_static_holds_the_split_with_the_best_mean_return_on_training_starts():
    env = gym.make("LayerSplit-Paper-v0")
    best = policies.BestStatic(env.unwrapped, episodes=30)
    # each static split's mean over the same 30 training starts, computed independently here
    by_hand = {}
    for target in range(1, 11):
        totals = []
        for i in range(30):
            env.reset(seed=policies.BEST_STATIC_SEED + i)
            total = 0.0
            for _ in range(5):
                gap = int(np.clip(target - env.unwrapped.split, -4, 4))
                total += env.step(int(np.flatnonzero(envs.PAPER_MOVES == gap)[0]))[1]
            totals.append(total)
        by_hand[target] = np.mean(totals)
    assert best.scores == pytest.approx({f"split {s}": v for s, v in by_hand.items()})
    chosen = max(by_hand, key=by_hand.get)
    assert best.choice == f"split {chosen}"
    run = policies.evaluate(env, best, 5, seed=10_000)
    assert all(s[-2:] == [chosen, chosen] for s in run.splits)  # it reaches the split within 3 moves and holds it
    with pytest.raises(UserError, match="at least one training start"):
        policies.BestStatic(env.unwrapped, episodes=0)


def test_best_static_on_the_wireless_env_equals_each_static_action_played_on_its_own():
    env = gym.make("LayerSplit-Wireless-v0")
    best = policies.BestStatic(env.unwrapped, episodes=6)  # one rollout per start for all 50 actions
    for label, policy in best.choices.items():  # each static action's episodes, played separately
        assert np.array_equal(
            best.returns[label], policies.evaluate(env.unwrapped, policy, 6, policies.BEST_STATIC_SEED).returns
        )
    assert best.choice == max(best.scores, key=best.scores.get)


def test_best_static_per_start_picks_per_start_split_and_ignores_p():
    env = gym.make("LayerSplit-Paper-v0")
    n = 60
    per_start = policies.BestStaticPerStart(env.unwrapped, episodes=n)
    best = policies.BestStatic(env.unwrapped, episodes=n)
    assert policies.BestStaticPerStart(env.unwrapped, episodes=n, best_static=best).choices == per_start.choices
    # by hand: every static split's return from each training start, grouped by the start split
    returns, starts = {}, []
    for i in range(n):
        env.reset(seed=policies.BEST_STATIC_SEED + i)
        starts.append(env.unwrapped.split)
    starts = np.array(starts)
    for target in range(1, 11):
        returns[target] = policies.evaluate(env, policies.paper_toward(target), n, policies.BEST_STATIC_SEED).returns
    for start in np.unique(starts):
        chosen = max(returns, key=lambda t: returns[t][starts == start].mean())
        assert per_start.choices[int(start)] == f"split {chosen}"
    # on the training starts it scores the per-start maxima, at least the one best static split
    run = policies.evaluate(env, per_start, n, policies.BEST_STATIC_SEED)
    expected = np.mean([returns[int(per_start.choices[int(s)].split()[1])][i] for i, s in enumerate(starts)])
    assert run.mean == pytest.approx(expected) and run.mean >= max(best.scores.values()) - 1e-9
    # p-blind: the same start split gives the same final split at any p
    finals = set()
    for p in (0.01, 0.15, 0.3):
        obs, _ = env.reset(seed=0, options={"p": p, "split": 6})
        for _ in range(5):
            obs, _, _, _, info = env.step(per_start(obs, env.unwrapped))
        finals.add(info["split"])
    assert finals == {int(per_start.choices[6].split()[1])}
    with pytest.raises(UserError, match="Paper-v0 only"):
        policies.BestStaticPerStart(gym.make("LayerSplit-Wireless-v0").unwrapped, episodes=2)


def test_best_static_on_the_wireless_env_picks_one_action_and_beats_fixed():
    env = gym.make("LayerSplit-Wireless-v0")
    best = policies.baseline("best-static", env.unwrapped, best_static_episodes=10)
    assert len(best.scores) == len(env.unwrapped.actions)
    fixed = policies.evaluate(env, policies.baseline("fixed", env.unwrapped), 10, seed=policies.BEST_STATIC_SEED).mean
    assert max(best.scores.values()) >= fixed - 1e-9  # fixed is one of the static choices
    actions = {best(None, env.unwrapped) for _ in range(3)}
    assert len(actions) == 1


def test_wireless_optimum_is_the_per_step_argmax():
    env = gym.make("LayerSplit-Wireless-v0")
    env.reset(seed=0, options={"snr_db": 12.0})
    base = env.unwrapped
    best = policies.baseline("optimum", base)(None, base)
    assert base.rewards(12.0)["reward"][best] == base.rewards(12.0)["reward"].max()
    assert tuple(base.actions[policies.baseline("fixed", base)(None, base)]) == (surrogate.REFERENCE_SPLIT, 0.0, 0)


def test_confidence_interval_is_the_t_interval():
    mean, half = policies.confidence_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)
    assert policies.confidence_interval([5.0]) == (5.0, 0.0)


# --- training ------------------------------------------------------------------------------------------
def test_training_logs_checkpoints_and_resumes(tmp_path):
    params = {"n_steps": 50, "batch_size": 100}
    run = tmp_path / "run"
    training.train("LayerSplit-Paper-v0", "ppo", run, 800, 0, 8, params, checkpoint_every=400, progress=False)
    assert (run / "policy.safetensors").exists() and (run / "progress.csv").exists()
    assert (
        list(run.glob("events.out.tfevents*"))
        and run_folders.latest_checkpoint(run).name == "model_800_steps.safetensors"
    )
    (run / "policy.safetensors").unlink()  # as if killed after the last checkpoint
    model, summary = training.train(
        "LayerSplit-Paper-v0", "ppo", run, 1200, 0, 8, params, checkpoint_every=400, progress=False
    )
    assert model.num_timesteps == 1200 and summary["resumed_from"] == 800
    log = run_folders.episode_log(run)
    assert log["timesteps"].max() == 1200 and len(log) == 1200 // 5
    model, summary = training.train("LayerSplit-Paper-v0", "ppo", run, 1200, 0, 8, params, progress=False)
    assert summary["resumed_from"] == 800  # finished: reused, not retrained
    model, summary = training.train("LayerSplit-Paper-v0", "ppo", run, 1600, 0, 8, params, progress=False)
    assert model.num_timesteps == 1600 and summary["resumed_from"] == 1200  # a larger budget goes on
    with pytest.raises(UserError, match="another configuration"):
        training.train("LayerSplit-Paper-v0", "a2c", run, 1200, 0, 8, {}, progress=False)


def test_same_seed_same_policy(tmp_path):
    params = {"n_steps": 50, "batch_size": 100}
    a, _ = training.train("LayerSplit-Paper-v0", "ppo", tmp_path / "a", 800, 3, 8, params, progress=False)
    b, _ = training.train("LayerSplit-Paper-v0", "ppo", tmp_path / "b", 800, 3, 8, params, progress=False)
    for x, y in zip(a.policy.parameters(), b.policy.parameters()):
        assert torch.equal(x, y)


def test_policy_inputs_are_scaled_by_the_bounds_inside_the_saved_policy(tmp_path):
    env = envs.make("LayerSplit-Paper-v0")
    extractor = agents.ScaledObservation(env.observation_space)
    bounds = torch.tensor([[0.0, 1.0], [0.3, 10.0], [0.15, 5.5]])
    assert torch.allclose(extractor(bounds), torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]), atol=1e-6)
    params = {"n_steps": 50, "batch_size": 100}
    training.train("LayerSplit-Paper-v0", "ppo", tmp_path / "s", 400, 0, 8, params, progress=False)
    raw, _ = training.train(
        "LayerSplit-Paper-v0", "ppo", tmp_path / "r", 400, 0, 8, params, progress=False, scale_observations=False
    )
    loaded = run_folders.load_policy(tmp_path / "s")  # a saved policy takes raw observations: the scaling is inside
    assert isinstance(loaded.policy.features_extractor, agents.ScaledObservation)
    assert type(raw.policy.features_extractor).__name__ == "FlattenExtractor"
    assert json.loads((tmp_path / "r" / "config.json").read_text())["scale_observations"] is False


@pytest.mark.parametrize("algo", ["a2c", "dqn"])
def test_other_algorithms_train(tmp_path, algo):
    model, summary = training.train("LayerSplit-Paper-v0", algo, tmp_path / algo, 400, 0, 4, {}, progress=False)
    assert summary["timesteps"] >= 400
    assert json.loads((tmp_path / algo / "config.json").read_text())["algo"] == algo


# --- the scripts, as a user runs them ------------------------------------------------------------------
def write_sweep(path, rows_per_cell=1):
    """A small sweep CSV of the original link (splits 1..10 x 4 p) from a smooth made-up PPL."""
    lines = ["model,dataset,split,link,snr_db,dropout,withheld,draw,nll,token_accuracy,scored_tokens,total_s"]
    for split in range(1, 11):
        for p in (0.0, 0.1, 0.2, 0.3):
            nll = np.log(15 * (1 + 20 * p * p * (1 + abs(split - 5) / 5)))
            lines.append(f"m,d,{split},dropout,,{p},0.0,0,{nll},{0.44 - p / 2},511,")
    path.write_text("\n".join(lines) + "\n")


def test_train_rsm_fit_train_evaluate_smoke(tmp_path):
    from conftest import run_script

    write_sweep(tmp_path / "sweep.csv")
    fit = run_script(
        "train_rsm.py",
        "fit",
        "--sweep",
        str(tmp_path / "sweep.csv"),
        "--wireless-sweep",
        "",
        "--protect-sweep",
        "",
        "--nr-wireless-sweep",
        "",
        "--output",
        str(tmp_path / "rsm.pth"),
        "--epochs",
        "300",
        "--holdout-repeats",
        "2",
        "--results-dir",
        str(tmp_path / "res"),
    )
    assert fit.returncode == 0, fit.stderr
    assert "held-out, fitted without them (8 cells)" in fit.stdout and (tmp_path / "res" / "rsm_fit_paper.csv").exists()
    repeats = json.loads((tmp_path / "res" / "rsm_fit_paper.json").read_text())["metrics"]["held_out_repeats"]
    assert "2 more held-out draws: R2 inference_reward mean" in fit.stdout and repeats["draws"] == 2
    assert (
        len(repeats["r2_inference_reward"]) == 2
        and repeats["r2_inference_reward"][0] != repeats["r2_inference_reward"][1]
    )
    common = ["--rsm", str(tmp_path / "rsm.pth"), "--results-dir", str(tmp_path / "res"), "--eval-episodes", "3"]
    train = run_script(
        "train_rsm.py",
        "train",
        "--total-timesteps",
        "800",
        "--seeds",
        "0,1",
        "--run-dir",
        str(tmp_path / "runs"),
        "--no-progress",
        *common,
    )
    assert train.returncode == 0, train.stderr
    assert "of optimum" in train.stdout and "% +- " in train.stdout
    result = json.loads((tmp_path / "res" / "rl_paper_ppo.json").read_text())
    assert len(result["returns"]["learned"]["per_seed"]) == 2 and result["returns"]["optimum"]["share_of_optimum"] == 1
    returns = result["returns"]
    learned, optimum = returns["learned"], returns["optimum"]["per_seed"]
    assert learned["share_per_seed"] == pytest.approx([v / o for v, o in zip(learned["per_seed"], optimum)])
    assert learned["share_of_optimum"] == pytest.approx(np.mean(learned["share_per_seed"]))  # per seed, then the mean
    assert learned["share_ci95"] == pytest.approx(policies.confidence_interval(learned["share_per_seed"])[1])
    assert set(returns) == {"learned", "fixed", "best-static", "best-static-per-start", "random", "greedy", "optimum"}
    assert set(result["best_static_per_start"]["choices"]) == {str(s) for s in range(1, 11)}
    gaps = np.subtract(returns["learned"]["per_seed"], returns["best-static"]["per_seed"])  # paired by seed
    assert returns["best-static"]["learned_minus_this"] == pytest.approx(gaps.mean())
    assert returns["best-static"]["learned_minus_this_ci95"] == pytest.approx(policies.confidence_interval(gaps)[1])
    assert result["episode_end"] == "terminate" and result["best_static"]["choice"].startswith("split ")
    assert (tmp_path / "res" / "rl_paper_ppo_curves.csv").exists() and (
        tmp_path / "res" / "rl_paper_ppo_policy.csv"
    ).exists()
    again = run_script(
        "train_rsm.py", "evaluate", str(tmp_path / "runs" / "ppo_s0"), str(tmp_path / "runs" / "ppo_s1"), *common
    )
    assert again.returncode == 0, again.stderr
    assert (
        json.loads((tmp_path / "res" / "rl_paper_ppo.json").read_text())["returns"] == result["returns"]
    )  # same seed, same numbers


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--env", "LayerSplit-Nope-v0"], "unknown environment"),
        (["train", "--rsm", "README.md"], "not a readable PyTorch file"),
        (["train", "--algo", "sac", "--total-timesteps", "10"], "unknown algorithm"),
        (["fit", "--sweep", "results/channel_ber_per.csv", "--wireless-sweep", "", "--protect-sweep", ""], "no column"),
        (["evaluate", "figures"], "training run folder"),
    ],
)
def test_train_rsm_bad_input_is_one_clear_line(args, message, tmp_path):
    from conftest import run_script

    result = run_script("train_rsm.py", *args, "--results-dir", str(tmp_path))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_train_py_smoke_with_a_tiny_model(tmp_path, sample_txt):
    from conftest import make_tokenizer, run_script

    torch.manual_seed(0)
    LlamaForCausalLM(tiny_config(num_hidden_layers=11)).save_pretrained(tmp_path / "m")
    make_tokenizer().save_pretrained(tmp_path / "m")
    training.train(
        "LayerSplit-Paper-v0",
        "ppo",
        tmp_path / "paper" / "ppo_s0",
        400,
        0,
        8,
        {"n_steps": 50, "batch_size": 100},
        progress=False,
    )  # a surrogate-trained policy to compare
    args = [
        "train.py",
        "--model",
        str(tmp_path / "m"),
        "--dataset",
        str(sample_txt),
        "--tokens",
        "32",
        "--protect",
        "2",
        "--total-timesteps",
        "20",
        "--n-steps",
        "10",
        "--batch",
        "5",
        "--eval-episodes",
        "2",
        "--best-static-episodes",
        "1",
        "--run-dir",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "llm.json"),
        "--compare",
        f"{tmp_path / 'paper' / 'ppo_s0'},{tmp_path / 'absent'}",
        "--no-progress",
    ]
    result = run_script(*args)
    assert result.returncode == 0, result.stderr
    assert "no surrogate-trained run at" in result.stderr  # the absent one is named, the rest goes on
    report = json.loads((tmp_path / "llm.json").read_text())
    assert report["timesteps"] == 20 and report["seconds_per_step"] > 0 and report["protect"] == 2
    returns = report["evaluation"]["returns"]
    assert list(returns) == ["learned (LLM in the loop)", "surrogate ppo_s0", "fixed", "best-static", "random"]
    assert returns["fixed"]["splits"][0] == [surrogate.REFERENCE_SPLIT] * 5
    assert all(len(r["per_episode"]) == 2 for r in returns.values())
    assert report["evaluation"]["best_static"]["choice"] in {f"split {s}" for s in range(1, 11)}
    progress = (tmp_path / "runs" / "ppo_s0" / "progress.csv").read_text()
    assert "time/step_s" in progress
    for r in returns.values():  # the gaps are paired by episode
        assert r["minus_fixed"] == pytest.approx(
            np.mean(np.subtract(r["per_episode"], returns["fixed"]["per_episode"]))
        )
    assert returns["best-static"]["minus_best_static"] == 0 and returns["fixed"]["minus_fixed_ci95"] == 0
    measured = (tmp_path / "runs" / "eval_measurements.jsonl").read_text().splitlines()
    assert len(measured) == 1 + report["evaluation"]["measurements"]  # the settings, then one line each
    again = run_script(*args)  # a finished run is reused: the same seed gives the same evaluation
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "llm.json").read_text())["evaluation"] == report["evaluation"]
    (tmp_path / "runs" / "eval_measurements.jsonl").unlink()  # measured afresh, --eval-only: the same numbers
    only = run_script(
        *args[: args.index("--results")],
        "--results",
        str(tmp_path / "eval.json"),
        *args[args.index("--results") + 2 :],
        "--eval-only",
    )
    assert only.returncode == 0, only.stderr
    evaluation = json.loads((tmp_path / "eval.json").read_text())["evaluation"]
    assert evaluation.pop("llm_trained_policy") == str(tmp_path / "runs" / "ppo_s0")
    assert evaluation == report["evaluation"]


def test_shared_measurements_give_the_numbers_of_measuring_again():
    """The memo keyed by (link seed, p, split): two policies on the same episodes, with and without it.
    A model of its own: an environment another test left open would still hook the module's one."""
    torch.manual_seed(0)
    llm11 = LlamaForCausalLM(tiny_config(num_hidden_layers=11)).eval()
    stay, deeper = (lambda obs, env: env.split - 1), (lambda obs, env: min(env.split, 9))
    env = make_env("LayerSplit-LLM-v0", llm11)
    fresh = [policies.evaluate(env, policy, 2, seed=3).returns for policy in (stay, deeper)]
    env.close()  # its link leaves the model
    memo = {}
    env = make_env("LayerSplit-LLM-v0", llm11, measurements=memo)
    shared = [policies.evaluate(env, policy, 2, seed=3).returns for policy in (stay, deeper)]
    env.close()
    np.testing.assert_array_equal(np.array(fresh), np.array(shared))
    assert 0 < len(memo) < 2 * 2 * 6  # the resets (and the first policy's states) were measured once


def test_a_surrogate_policy_acts_on_the_llm_env_through_the_original_moves(llm11):
    class Moves:  # stands in for a trained model: always the same relative move
        def __init__(self, move):
            self.move = move

        def predict(self, obs, deterministic=True):
            return np.array(self.move), None

    env = make_env("LayerSplit-LLM-v0", llm11)
    for start, move, expected_split in ((5, 8, 9), (2, 7, 1), (10, 2, 10), (1, 0, 1), (7, 8, 10)):
        env.reset(seed=0, options={"p": 0.2, "split": start})
        action = policies.paper_policy_on_llm(Moves(move))(None, env.unwrapped)
        assert action + 1 == original_step(start, move)[0] == expected_split


def test_a_wireless_policy_chooses_the_split_from_the_snr(tmp_path):
    training.train(
        "LayerSplit-Wireless-v0", "ppo", tmp_path / "w", 256, 0, 2, {"n_steps": 64, "batch_size": 64}, progress=False
    )
    choose = policies.split_chooser(tmp_path / "w")
    model = run_folders.load_policy(tmp_path / "w")
    env = envs.make("LayerSplit-Wireless-v0").unwrapped
    for snr in (5.0, 12.0, 25.0, 60.0):
        obs = np.array([min(max(snr, 10.0), 40.0)], dtype=np.float32)
        split = env.actions[int(model.predict(obs, deterministic=True)[0]), 0]
        assert choose(snr) == (split, 0)  # the 0-based split, and K = 0 on this environment
    training.train(
        "LayerSplit-Paper-v0", "ppo", tmp_path / "p", 400, 0, 8, {"n_steps": 50, "batch_size": 100}, progress=False
    )
    with pytest.raises(UserError, match="needs a policy of LayerSplit-Wireless-v0 or LayerSplit-Protect-v0"):
        policies.split_chooser(tmp_path / "p")


def test_the_optimum_follows_its_plan_and_equals_replanning_every_step():
    env = gym.make("LayerSplit-Paper-v0")
    base = env.unwrapped

    def replanning(obs, e):
        return int(np.argmax(policies.paper_action_values(e, e.p, e.split, e.episode_steps - e.steps)))

    planned = policies.evaluate(env, policies.PaperOptimum(), 15, seed=4)
    every_step = policies.evaluate(env, replanning, 15, seed=4)
    assert np.allclose(planned.returns, every_step.returns) and planned.splits == every_step.splits
    values, plan = policies.paper_plan(base, 0.1, 9, 5)
    assert len(plan) == 5 and plan[0] == int(np.argmax(values))
