"""Baselines, the exact optimum, and the evaluation of any policy on the layer-splitting environments.

A policy here is a callable (obs, env) -> action, where env is the unwrapped environment (the
baselines read its state; a learned policy ignores it). Baselines:
    fixed    the paper's traditional split, 5 layers on the UE (split 4), nothing withheld
    best-static  the one static choice (a split; on the Wireless env a split and withheld share) with the
             highest mean return over BEST_STATIC_EPISODES training starts (reset seeds 0, 1, ...,
             never the evaluation's), then held whatever the channel: the strongest simple baseline
    best-static-per-start  Paper env: for each start split, the static split with the highest mean
             return over the training starts that begin there; it moves there and stays whatever p:
             the strongest simple policy that never looks at the channel
    random   a uniformly random action
    greedy   the action with the best immediate reward
    optimum  Paper: dynamic programming over every state reachable before the episode ends (equal
             to an exhaustive search of all 9^5 action sequences, much cheaper); Wireless: the
             per-step argmax, which is exact there because the SNR does not depend on the actions
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats

from . import UserError
from .envs import (
    PAPER_MOVES,
    PAPER_RESET_P,
    PAPER_RESET_SPLITS,
    SNR_ENV_IDS,
    SNR_RANGE_DB,
    SPLIT_MAX,
    SPLIT_MIN,
    LLMSplitEnv,
    PaperSplitEnv,
    WirelessSplitEnv,
    make,
)
from .surrogate import REFERENCE_SPLIT

Policy = Callable[[np.ndarray, object], int]
BASELINES = ("fixed", "best-static", "best-static-per-start", "random", "greedy", "optimum")
PAPER_ONLY = ("best-static-per-start",)  # baselines defined on LayerSplit-Paper-v0 only
CONFIDENCE = 0.95  # confidence level of the intervals over seeds
BEST_STATIC_EPISODES = 200  # training starts on which best-static picks its choice (reset seeds 0..N-1)
BEST_STATIC_SEED = 0  # first reset seed of those starts; evaluations start at 10,000 and above
MAP_POINTS = 30  # p values of the split-against-p map (split_versus_condition)


# --- the Paper environment -----------------------------------------------------------------------
def paper_plan(env: PaperSplitEnv, p: float, split: int, horizon: int) -> tuple[np.ndarray, list[int]]:
    """Dynamic programming over every state reachable in `horizon` steps: the best total reward after
    each first action, and the optimal action sequence. Many action sequences reach the same state
    (the drift factors commute, moves are cut at the bounds), so states are merged level by level
    (p rounded to 1e-12) and a backward pass takes the max over actions: exact, and far fewer
    surrogate calls than the 9^horizon sequences of a plain exhaustive search (a test compares them)."""
    n = len(PAPER_MOVES)
    ps, splits = np.array([float(p)]), np.array([int(split)])
    children, rewards = [], []
    for _ in range(horizon):
        new_p, new_split = env.transition(np.repeat(ps, n), np.repeat(splits, n), np.tile(np.arange(n), len(ps)))
        keys, index = np.unique(np.stack([np.round(new_p, 12), new_split]), axis=1, return_inverse=True)
        ps, splits = keys[0], keys[1].astype(int)
        children.append(index.reshape(-1, n))
        rewards.append(env.reward(ps, splits))
    value, qs = np.zeros(len(ps)), []
    for child, reward in zip(reversed(children), reversed(rewards)):
        qs.append(reward[child] + value[child])
        value = qs[-1].max(1)
    qs.reverse()
    plan, state = [], 0
    for q, child in zip(qs, children):  # follow the argmax forward: transitions are deterministic
        plan.append(int(np.argmax(q[state])))
        state = child[state, plan[-1]]
    return qs[0][0], plan


def paper_action_values(env: PaperSplitEnv, p: float, split: int, horizon: int) -> np.ndarray:
    """The best total reward over the next `horizon` steps after each first action (paper_plan)."""
    return paper_plan(env, p, split, horizon)[0]


def paper_exhaustive_values(env: PaperSplitEnv, p: float, split: int, horizon: int) -> np.ndarray:
    """The same values by brute force over all 9^horizon action sequences (the reference)."""
    n = len(PAPER_MOVES)
    ps, splits, totals = np.array([p]), np.array([split]), np.zeros(1)
    for _ in range(horizon):
        actions = np.tile(np.arange(n), len(ps))
        ps, splits = env.transition(np.repeat(ps, n), np.repeat(splits, n), actions)
        totals = np.repeat(totals, n) + env.reward(ps, splits)
    return totals.reshape(n, -1).max(1)


class PaperOptimum:
    """The exact optimum: one dynamic programme per episode, whose plan is then followed (the
    dynamics are deterministic); it replans whenever the state is not the one the plan expects."""

    def __init__(self):
        self.plan, self.expected = [], None

    def __call__(self, obs, env: PaperSplitEnv) -> int:
        if self.expected != (env.p, env.split, env.steps) or not self.plan:
            self.plan = paper_plan(env, env.p, env.split, env.episode_steps - env.steps)[1]
        action = self.plan.pop(0)
        p, split = env.transition(env.p, env.split, action)
        self.expected = (float(p), int(split), env.steps + 1)
        return action


def paper_greedy(obs, env: PaperSplitEnv) -> int:
    return int(np.argmax(paper_action_values(env, env.p, env.split, 1)))


def paper_toward(target: int) -> Policy:
    """Move toward `target` (the largest legal move that does not overshoot), then stay there."""

    def policy(obs, env: PaperSplitEnv) -> int:
        wanted = int(np.clip(target - env.split, PAPER_MOVES.min(), PAPER_MOVES.max()))
        return int(np.flatnonzero(PAPER_MOVES == wanted)[0])

    return policy


paper_fixed = paper_toward(REFERENCE_SPLIT)


# --- the Wireless environment --------------------------------------------------------------------
def wireless_optimum(obs, env: WirelessSplitEnv) -> int:
    return int(np.argmax(env.rewards(env.snr_db)["reward"]))


def wireless_fixed(obs, env: WirelessSplitEnv) -> int:
    return int(
        np.flatnonzero((env.actions[:, 0] == REFERENCE_SPLIT) & (env.actions[:, 1] == 0.0) & (env.actions[:, 2] == 0))[
            0
        ]
    )


def llm_fixed(obs, env: LLMSplitEnv) -> int:
    return REFERENCE_SPLIT - 1  # action a sets split a + 1


def static_choices(env) -> dict[str, Policy]:
    """Every static choice of this environment, by label: hold one split (Paper, LLM), or one
    (split, withheld share[, K]) action (Wireless, Protect)."""
    if isinstance(env, PaperSplitEnv):
        return {f"split {s}": paper_toward(s) for s in range(SPLIT_MIN, SPLIT_MAX + 1)}
    if isinstance(env, LLMSplitEnv):
        return {f"split {s}": (lambda obs, env_, a=s - SPLIT_MIN: a) for s in range(SPLIT_MIN, SPLIT_MAX + 1)}
    if isinstance(env, WirelessSplitEnv):
        protecting = len(env.protects) > 1
        return {
            f"split {s}, {w:.0%} withheld" + (f", K={int(k)}" if protecting else ""): (lambda obs, env_, a=a: a)
            for a, (s, w, k) in enumerate(env.actions)
        }
    raise UserError(f"no static choices defined for {type(env).__name__}")


def static_returns(env: WirelessSplitEnv, episodes: int, seed: int = 0) -> np.ndarray:
    """(episodes x actions): every static action's return on the episodes evaluate() plays from resets
    seeded seed, seed + 1, ... The SNR path does not depend on the actions, so one rollout per episode
    gives them all (the same sums as evaluating each static action on its own, tested), where the
    Protect env's 250 actions would otherwise take 250 rollouts."""
    totals = np.zeros((episodes, env.action_space.n))
    for i in range(episodes):
        env.reset(seed=seed + i)
        done = False
        while not done:
            totals[i] += env.rewards(env.snr_db)["reward"]
            _, _, terminated, truncated, _ = env.step(0)
            done = terminated or truncated
    return totals


class BestStatic:
    """The static choice with the highest mean return over `episodes` training starts (reset seeds
    seed, seed + 1, ...), chosen once on construction; `choice` names it, `scores` holds every mean."""

    def __init__(self, env, episodes: int = BEST_STATIC_EPISODES, seed: int = BEST_STATIC_SEED):
        if episodes < 1:
            raise UserError(f"best-static needs at least one training start, got {episodes}")
        self.choices, self.episodes, self.seed = static_choices(env), episodes, seed
        # every choice's return per training start (BestStaticPerStart regroups them by start split)
        if isinstance(env.unwrapped, WirelessSplitEnv):  # one rollout per start serves every action
            self.returns = dict(zip(self.choices, static_returns(env.unwrapped, episodes, seed).T))
        else:
            self.returns = {
                label: evaluate(env, policy, episodes, seed).returns for label, policy in self.choices.items()
            }
        self.scores = {label: float(r.mean()) for label, r in self.returns.items()}
        self.choice = max(self.scores, key=self.scores.get)
        self.policy = self.choices[self.choice]

    def __call__(self, obs, env) -> int:
        return self.policy(obs, env)


class BestStaticPerStart:
    """Paper env: for each start split, the static split with the highest mean return over the
    training starts (reset seeds seed, seed + 1, ...) that begin at that split; the policy reads the
    split at the episode's first step, moves to that choice and stays, whatever p. A start split no
    training start began at gets the overall best static split. `choice` names the choices. Given
    `best_static` (a BestStatic of this env), it regroups that one's returns instead of replaying them."""

    def __init__(
        self,
        env,
        episodes: int = BEST_STATIC_EPISODES,
        seed: int = BEST_STATIC_SEED,
        best_static: BestStatic | None = None,
    ):
        if not isinstance(env, PaperSplitEnv):
            raise UserError("best-static-per-start is defined on LayerSplit-Paper-v0 only")
        if episodes < 1:
            raise UserError(f"best-static-per-start needs at least one training start, got {episodes}")
        if best_static is None:
            best_static = BestStatic(env, episodes, seed)
        starts = []
        for i in range(best_static.episodes):
            env.reset(seed=best_static.seed + i)
            starts.append(env.split)
        starts = np.array(starts)
        self.choices = {s: best_static.choice for s in range(SPLIT_MIN, SPLIT_MAX + 1)}
        for start in np.unique(starts):
            scores = {label: r[starts == start].mean() for label, r in best_static.returns.items()}
            self.choices[int(start)] = max(scores, key=scores.get)
        self.choice = ", ".join(f"{s}->{label.removeprefix('split ')}" for s, label in self.choices.items())
        self._policies = {s: best_static.choices[label] for s, label in self.choices.items()}
        self._current = self._policies[SPLIT_MIN]

    def __call__(self, obs, env) -> int:
        if env.steps == 0:  # the episode's first step: the start split decides where to go
            self._current = self._policies[env.split]
        return self._current(obs, env)


def baseline(name: str, env, seed: int = 0, best_static_episodes: int = BEST_STATIC_EPISODES) -> Policy:
    """The baseline `name` for this (unwrapped) environment."""
    if name == "best-static":
        return BestStatic(env, best_static_episodes)
    if name == "best-static-per-start":
        return BestStaticPerStart(env, best_static_episodes)
    if name == "random":
        rng = np.random.default_rng(seed)
        return lambda obs, env_: int(rng.integers(env_.action_space.n))
    table = {
        PaperSplitEnv: {"fixed": paper_fixed, "greedy": paper_greedy, "optimum": PaperOptimum()},
        WirelessSplitEnv: {"fixed": wireless_fixed, "greedy": wireless_optimum, "optimum": wireless_optimum},
        LLMSplitEnv: {"fixed": llm_fixed},
    }[type(env)]
    if name not in table:
        extra = ["best-static-per-start"] if isinstance(env, PaperSplitEnv) else []
        raise UserError(
            f"baseline {name!r} is not available on {type(env).__name__}: use one of "
            f"{', '.join(['best-static', *extra, 'random', *table])}"
        )
    return table[name]


def split_chooser(run_dir, rsm_path=None, trust_zip: bool = False) -> Callable[[float], tuple[int, int]]:
    """A policy trained on LayerSplit-Wireless-v0 or LayerSplit-Protect-v0 as `snr_db -> (split, K)` (what
    serve.py's UE asks per request): the split and protection level of the policy's action at that SNR,
    0-based as everywhere (split n puts n + 1 layers on the UE; K is 0 on the Wireless env; the withheld
    share the action also picks is not applied by serve.py)."""
    from .run_folders import load_policy, run_config  # here: Stable-Baselines3 is only imported when needed

    config = run_config(run_dir)
    if config["env"] not in SNR_ENV_IDS:
        raise UserError(
            f"{run_dir} was trained on {config['env']}; choosing a split from the SNR needs a "
            f"policy of {' or '.join(SNR_ENV_IDS)}"
        )
    model = load_policy(run_dir, config["algo"], trust_zip)
    env = make(config["env"], **({"rsm_path": rsm_path} if rsm_path else {})).unwrapped

    def choose(snr_db: float) -> tuple[int, int]:
        low, high = float(env.observation_space.low[0]), float(env.observation_space.high[0])
        obs = np.array([min(max(snr_db, low), high)], dtype=np.float32)  # the SNR range the policy was trained on
        split, _, protect = env.actions[int(model.predict(obs, deterministic=True)[0])]
        return int(split), int(protect)

    return choose


def learned(model) -> Policy:
    """A Stable-Baselines3 model as a policy (deterministic actions)."""
    return lambda obs, env: int(model.predict(obs, deterministic=True)[0])


def paper_policy_on_llm(model) -> Policy:
    """A policy trained on LayerSplit-Paper-v0 (relative moves) acting on LayerSplit-LLM-v0 (absolute
    splits), the paper's own comparison: the split its move leads to (cut at the bounds by the
    original's rule) is the split set. p then drifts by the LLM environment's rule (x0.9995 deeper,
    x1.0005 shallower), which differs from the surrogate environment's only in the fourth decimal."""

    def policy(obs, env: LLMSplitEnv) -> int:
        move = int(model.predict(obs, deterministic=True)[0])
        return int(PaperSplitEnv.transition(env.p, env.split, move)[1]) - SPLIT_MIN

    return policy


# --- evaluation ---------------------------------------------------------------------------------
@dataclass
class Evaluation:
    returns: np.ndarray  # one per episode
    splits: list  # chosen split per step, per episode

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))


def evaluate(env, policy: Policy, episodes: int, seed: int = 0) -> Evaluation:
    """Run `episodes` episodes from resets seeded seed, seed + 1, ...: every policy evaluated with the
    same seed sees the same start states (and, where the dynamics are random, the same draws)."""
    base = env.unwrapped
    returns, splits = [], []
    for i in range(episodes):
        obs, info = env.reset(seed=seed + i)
        total, done, chosen = 0.0, False, []
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy(obs, base))
            total += reward
            chosen.append(info.get("split"))
            done = terminated or truncated
        returns.append(total)
        splits.append(chosen)
    return Evaluation(np.array(returns), splits)


def confidence_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Mean and half-width of the t interval over independent values (seeds); 0 width for one value."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), 0.0
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)


def share_of_optimum(values, optimum_values, confidence: float = CONFIDENCE) -> tuple[float, float, list[float]]:
    """Each seed's return over the optimum's return on that seed's own episodes (seed k of both played
    the same episodes), their mean and the half-width of the t interval over seeds, and the shares."""
    shares = [float(v / o) for v, o in zip(values, optimum_values, strict=True)]
    mean, half = confidence_interval(shares, confidence)
    return mean, half, shares


def split_versus_condition(env_id: str, policy_for: Callable[[object], Policy], env_kwargs: dict) -> list[dict]:
    """Where each policy puts the split as a function of the channel condition.
    Paper: the split after a whole episode from each start split 1..9, averaged, per p on a grid over the
    start states' range; Wireless: the action chosen at each SNR of the observed range, 1 dB apart
    (split and withheld share)."""
    env = make(env_id, **env_kwargs)
    base = env.unwrapped
    policy = policy_for(base)
    rows = []
    if isinstance(base, PaperSplitEnv):
        for p in np.round(np.linspace(*PAPER_RESET_P, MAP_POINTS), 4):
            finals = []
            for start in range(PAPER_RESET_SPLITS[0], PAPER_RESET_SPLITS[1] + 1):
                obs, _ = env.reset(seed=0, options={"p": float(p), "split": start})
                done = False
                while not done:
                    obs, _, terminated, truncated, info = env.step(policy(obs, base))
                    done = terminated or truncated
                finals.append(info["split"])
            rows.append({"condition": "p", "value": float(p), "split": float(np.mean(finals)), "withheld": 0.0})
    elif isinstance(base, WirelessSplitEnv):
        for snr in np.arange(SNR_RANGE_DB[0], SNR_RANGE_DB[1] + 0.01, 1.0):
            obs, _ = env.reset(seed=0, options={"snr_db": float(snr)})
            split, withheld, protect = base.actions[policy(obs, base)]
            rows.append(
                {
                    "condition": "snr_db",
                    "value": float(snr),
                    "split": float(split),
                    "withheld": float(withheld),
                    "protect": int(protect),
                }
            )
    else:
        raise UserError(f"split against channel condition is drawn for the surrogate environments, not {env_id}")
    env.close()
    return rows
