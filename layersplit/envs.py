"""The Gymnasium environments of layer splitting, registered on import of this module.

LayerSplit-Paper-v0     the original surrogate MDP (its train__rsm.py), rule for rule (tested pair by pair)
LayerSplit-LLM-v0       the original MDP with the real LLM in the loop (its train.py), defect fixed
LayerSplit-Wireless-v0  the physical version: SNR follows an AR(1) process, the agent picks the
                        split and a withheld share, the reward weighs accuracy, latency, UE compute
LayerSplit-Protect-v0   the same with the protection level K (elements per token sent over the
                        protected path, add_noise.py --protect) as a third part of the action

`split` is the 0-based decoder layer after which the link sits (split + 1 layers on the UE), as in
the original code. An episode ends by termination after its last step, as the original's: its old
gym API returned done=True, which Stable-Baselines3 (through shimmy) takes as terminated=True, so no
value is bootstrapped from the last state. episode_end="truncate" is an option, for comparison.

No torch or Stable-Baselines3 here (the scripts read these settings before parsing their arguments);
the batched surrogate environment, an SB3 VecEnv, is training.PaperVecEnv.
"""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from . import UserError, channel, compute, shipped_file
from . import surrogate as rsm
from .data import EMBEDDED_DATASET
from .models import EMBEDDED_MODEL

PAPER_RSM = shipped_file("reward_predictor.pth")  # the shipped paper-form surrogate (embedded model)
WIRELESS_RSM = shipped_file("reward_predictor_wireless.pth")  # the shipped wireless-form surrogate
PROTECT_RSM = shipped_file("reward_predictor_protect.pth")  # the shipped protect-form surrogate (K an input too)
WIRELESS_NR_RSM = shipped_file("reward_predictor_wireless_nr.pth")  # the wireless form over the 5G NR link
P_MAX = 0.3  # element loss probabilities live in [0, P_MAX] (the original's clip)
EPISODE_STEPS = 5  # the original's episodes: 5 decisions
SPLIT_MIN, SPLIT_MAX = 1, 10  # the original's split values
LOAD_WEIGHT = 1.0  # the original's weight on the load term (10 - split) / 10
PAPER_INFERENCE_WEIGHT = 10.0  # the original's weight on the surrogate's inference reward (original_reward)
EPISODE_ENDS = ("terminate", "truncate")
EPISODE_END = "terminate"  # the original's (done=True under the old gym API); "truncate" bootstraps the last state


def check_episode_end(episode_end: str) -> str:
    if episode_end not in EPISODE_ENDS:
        raise UserError(f"unknown episode end {episode_end!r}: use one of {', '.join(EPISODE_ENDS)}")
    return episode_end


def episode_over(steps: int, episode_steps: int, episode_end: str) -> tuple[bool, bool]:
    """(terminated, truncated) after `steps` decisions of an episode of `episode_steps`."""
    over = steps >= episode_steps
    return over and episode_end == "terminate", over and episode_end == "truncate"


# --- LayerSplit-Paper-v0: the original surrogate environment ---------------------------------------
PAPER_RESET_P = (0.01, 0.3)  # p ~ U(0.01, 0.3) at reset
PAPER_RESET_SPLITS = (1, 9)  # split ~ {1..9} at reset
# action -> (split change, p factor); 1/3/5/7 shallower by 1..4, 2/4/6/8 deeper by 1..4
PAPER_MOVES = np.array([0, -1, +1, -2, +2, -3, +3, -4, +4])
PAPER_P_FACTORS = np.array([1.0, 1.0005, 0.9995, 1.001, 0.999, 1.0015, 0.9995, 1.002, 0.998])  # 0.9995 at 6: sic


def paper_bound_action(split, action) -> np.ndarray:
    """The original's bound rule: a move past the bounds 1..10 is remapped to the largest legal move
    the same way (at split 1, 1/3/5/7 become 0; at 3, 5/7 become 3; ...), BEFORE the p factor is
    picked, so the factor is the remapped action's. Vectorised over states."""
    action = np.asarray(action)
    split = np.asarray(split)
    legal = np.clip(split + PAPER_MOVES[action], SPLIT_MIN, SPLIT_MAX) - split  # the move actually made
    # moves -4..+4 -> actions: 0 stays, -k is 2k - 1, +k is 2k
    return np.where(legal < 0, -2 * legal - 1, 2 * legal)


def load_term(split) -> np.ndarray | float:
    """The original's UE load reward: (10 - split) / 10, higher when fewer layers run on the UE."""
    return LOAD_WEIGHT * (10 - np.asarray(split, dtype=np.float64)) / 10


def original_reward(inference, split, inference_weight: float = PAPER_INFERENCE_WEIGHT):
    """The original's reward, the one place it is written: inference_weight * inference + the load term;
    10 * RSM([p, split]) + (10 - split) / 10 on LayerSplit-Paper-v0 (LLM_INFERENCE_WEIGHT on -LLM-v0)."""
    return inference_weight * inference + load_term(split)


class PaperSplitEnv(gym.Env):
    """The original surrogate MDP. Observation [p, split]; Discrete(9) relative moves of the split,
    an action past the bounds 1..10 remapped to the largest legal move first (paper_bound_action),
    then the move and the remapped action's p drift factor (p clipped to [0, 0.3]); reward
    original_reward(RSM([p, split]), split) after the move; 5 steps, then termination.

    reset(options={"p": .., "split": ..}) starts from a given state (evaluation, tests)."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        rsm_path: str | Path = PAPER_RSM,
        surrogate: rsm.Surrogate | None = None,
        episode_steps: int = EPISODE_STEPS,
        episode_end: str = EPISODE_END,
    ):
        self.surrogate = surrogate if surrogate is not None else rsm.load(rsm_path, form="paper")
        if self.surrogate.form != "paper":
            raise UserError(f"LayerSplit-Paper-v0 needs a 'paper' surrogate, got a '{self.surrogate.form}' one")
        self.episode_steps, self.episode_end = episode_steps, check_episode_end(episode_end)
        self.observation_space = spaces.Box(
            np.array([0.0, SPLIT_MIN], np.float32), np.array([P_MAX, SPLIT_MAX], np.float32)
        )
        self.action_space = spaces.Discrete(len(PAPER_MOVES))
        self.p, self.split, self.steps = 0.0, SPLIT_MIN, 0

    # pure transition and reward, vectorised over states: the optimum search and greedy use them too
    @staticmethod
    def transition(p, split, action):
        action = paper_bound_action(split, action)
        new_split = np.asarray(split) + PAPER_MOVES[action]
        new_p = np.clip(np.asarray(p) * PAPER_P_FACTORS[action], 0.0, P_MAX)
        return new_p, new_split

    def inference_reward(self, p, split) -> np.ndarray:
        return self.surrogate.predict(np.stack([np.ravel(p), np.ravel(split)], 1))[:, 0]

    def reward(self, p, split) -> np.ndarray:
        return original_reward(self.inference_reward(p, split), np.ravel(split))

    def _obs(self) -> np.ndarray:
        return np.array([self.p, self.split], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        options = options or {}
        self.p = float(options.get("p", self.np_random.uniform(*PAPER_RESET_P)))
        self.split = int(
            options.get("split", self.np_random.integers(PAPER_RESET_SPLITS[0], PAPER_RESET_SPLITS[1] + 1))
        )
        self.steps = 0
        return self._obs(), {"p": self.p, "split": self.split}

    def step(self, action):
        p, split = self.transition(self.p, self.split, int(action))
        self.p, self.split = float(p), int(split)
        self.steps += 1
        inference = float(self.inference_reward(self.p, self.split)[0])
        reward = float(original_reward(inference, self.split))
        info = {
            "inference_reward": inference,
            "load_reward": float(load_term(self.split)),
            "p": self.p,
            "split": self.split,
        }
        return self._obs(), reward, *episode_over(self.steps, self.episode_steps, self.episode_end), info


# --- LayerSplit-LLM-v0: the real model in the loop ------------------------------------------------
LLM_INFERENCE_WEIGHT = 10.5  # original_reward's weight on (PPL_initial - PPL) / PPL_initial here
LLM_RESET_P = (0.08, 0.22)  # p ~ U(0.08, 0.22) at reset
LLM_RESET_SPLITS = (3, 6)  # split ~ {3..6} at reset
LLM_P_DEEPER, LLM_P_SHALLOWER = 0.9995, 1.0005  # p drift when the split moves deeper / shallower
LLM_TOKENS = 256  # tokens scored per perplexity measurement: bounds the cost of one step
LLM_CONTEXT = 256  # window length of that measurement


class LLMSplitEnv(gym.Env):
    """The original train.py MDP with perplexity measured on the real model at every step.

    Discrete(10): action a sets split = a + 1. Observation [p, split]. The perplexity is measured at
    reset (PPL_initial) and after every step, on the first `tokens` tokens of the text, with a fresh
    noise draw from the environment's seeded generator (the original reused a stale value when the
    split did not change; here every step measures). Needs a model of at least 11 decoder layers.

    `measurements` (a dict, optional) memoises perplexity by (link seed, p, split): a measurement is a
    deterministic function of them, and the link seed of an episode's k-th measurement depends only on
    the reset seed, so policies evaluated on the same episodes share the measurements where their
    states coincide (the same numbers as measuring again, tested).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        model=EMBEDDED_MODEL,
        dataset=EMBEDDED_DATASET,
        tokens: int = LLM_TOKENS,
        context_length: int = LLM_CONTEXT,
        device: str = "auto",
        dtype: str = "auto",
        episode_steps: int = EPISODE_STEPS,
        token_ids=None,
        tokenizer=None,
        episode_end: str = EPISODE_END,
        protect: int = 0,
        measurements: dict | None = None,
    ):
        from .data import load_text, tokenize
        from .link import SplitLink
        from .models import load_model

        if isinstance(model, str):
            model, tokenizer = load_model(model, device=device, dtype=dtype)
        if token_ids is None:
            if tokenizer is None:
                raise UserError("LayerSplit-LLM-v0 needs token_ids or a tokenizer with the model")
            token_ids = tokenize(tokenizer, load_text(dataset), tokens)
        self.model, self.token_ids = model, token_ids[:tokens]
        self.context_length = min(context_length, len(self.token_ids))
        self.link = SplitLink(model, split=SPLIT_MIN)
        self.link.set_protect(protect)  # add_noise.py --protect K (on the original's link they always arrive)
        if self.link.n_layers <= SPLIT_MAX:
            raise UserError(
                f"LayerSplit-LLM-v0 moves the split over 1..{SPLIT_MAX}: the model needs at least "
                f"{SPLIT_MAX + 1} decoder layers, it has {self.link.n_layers}"
            )
        self.episode_steps, self.episode_end = episode_steps, check_episode_end(episode_end)
        self.observation_space = spaces.Box(
            np.array([0.0, SPLIT_MIN], np.float32), np.array([P_MAX, SPLIT_MAX], np.float32)
        )
        self.action_space = spaces.Discrete(SPLIT_MAX - SPLIT_MIN + 1)
        self.p, self.split, self.steps, self.ppl_initial = 0.0, SPLIT_MIN, 0, float("nan")
        self.measurements = measurements

    def perplexity(self, p: float, split: int) -> float:
        from .perplexity import evaluate

        seed = int(self.np_random.integers(2**31))
        key = (seed, repr(float(p)), int(split))
        if self.measurements is not None and key in self.measurements:
            return self.measurements[key]
        self.link.set_split(split)
        self.link.set_dropout(p)
        self.link.reseed(seed)
        self.link.reset_stats()
        ppl = evaluate(self.model, self.token_ids, self.context_length, self.context_length, progress=False).ppl
        if self.measurements is not None:
            self.measurements[key] = ppl
        return ppl

    def _obs(self) -> np.ndarray:
        return np.array([self.p, self.split], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        options = options or {}
        self.p = float(options.get("p", self.np_random.uniform(*LLM_RESET_P)))
        self.split = int(options.get("split", self.np_random.integers(LLM_RESET_SPLITS[0], LLM_RESET_SPLITS[1] + 1)))
        self.steps = 0
        self.ppl_initial = self.perplexity(self.p, self.split)
        return self._obs(), {"p": self.p, "split": self.split, "ppl": self.ppl_initial}

    def step(self, action):
        new_split = int(action) + SPLIT_MIN
        if new_split > self.split:
            self.p *= LLM_P_DEEPER
        elif new_split < self.split:
            self.p *= LLM_P_SHALLOWER
        self.p, self.split = min(max(self.p, 0.0), P_MAX), new_split
        self.steps += 1
        ppl = self.perplexity(self.p, self.split)
        inference = (self.ppl_initial - ppl) / self.ppl_initial
        reward = original_reward(inference, self.split, LLM_INFERENCE_WEIGHT)
        info = {
            "inference_reward": inference,
            "load_reward": float(load_term(self.split)),
            "ppl": ppl,
            "p": self.p,
            "split": self.split,
        }
        return self._obs(), float(reward), *episode_over(self.steps, self.episode_steps, self.episode_end), info

    def close(self):
        self.link.detach()


# --- LayerSplit-Wireless-v0: split and withheld share against a fading channel ---------------------
WIRELESS_SPLITS = tuple(range(SPLIT_MIN, SPLIT_MAX + 1))  # split choices (0-based layer of the cut)
WIRELESS_WITHHELD = (0.0, 0.05, 0.1, 0.2, 0.3)  # shares of the activation the UE may choose not to send
WIRELESS_STEPS = 20  # decisions per episode (one request each)
SNR_RANGE_DB = (10.0, 40.0)  # the SNR is clipped to the surrogate's training range (no extrapolation)
ACCURACY_WEIGHT = 10.0  # reward per unit of token accuracy (0.01 accuracy = 0.1)
LATENCY_WEIGHT = 20.0  # penalty per second of end-to-end latency (50 ms = 1, worth 0.1 of token accuracy)
UE_COMPUTE_WEIGHT = 10.0  # extra penalty per second of UE compute: the UE's energy and load (10 ms = 0.1)
PROTECTS = (0, 1, 4, 16, 64)  # LayerSplit-Protect-v0: elements per token over the protected path (the sweep's K)


class WirelessSplitEnv(gym.Env):
    """Observation [SNR dB]; Discrete(splits x withheld shares x protection levels) picks all three for
    the next request (one level, K = 0, on LayerSplit-Wireless-v0: splits x shares, the surrogate's
    'wireless' form; LayerSplit-Protect-v0 has PROTECTS and a 'protect'-form surrogate, K an input);
    reward = ACCURACY_WEIGHT * accuracy - LATENCY_WEIGHT * latency_s - UE_COMPUTE_WEIGHT * ue_compute_s,
    accuracy and latency predicted by the wireless surrogate, UE compute from the model's FLOPs.
    The SNR evolves as an AR(1) process whatever the agent does, so the exact optimum is the
    per-step argmax of the reward (see policies.optimum_action)."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        rsm_path: str | Path = WIRELESS_RSM,
        surrogate: rsm.Surrogate | None = None,
        splits=WIRELESS_SPLITS,
        withheld=WIRELESS_WITHHELD,
        protects=(0,),
        episode_steps: int = WIRELESS_STEPS,
        snr_mean_db: float = channel.SNR_MEAN_DB,
        snr_std_db: float = channel.SNR_STD_DB,
        snr_rho: float = channel.SNR_RHO,
        model_dims: compute.ModelDims = compute.SMOLLM2_135M,
        tokens: int = 512,
        episode_end: str = EPISODE_END,
    ):
        self.splits, self.withheld = np.asarray(splits), np.asarray(withheld, dtype=np.float64)
        self.protects = np.asarray(protects, dtype=np.int64)
        protecting = self.protects.tolist() != [0]
        self.surrogate = (
            surrogate if surrogate is not None else rsm.load(rsm_path, form="protect" if protecting else None)
        )
        if self.surrogate.form not in ("wireless", "protect"):
            raise UserError(
                f"this environment needs a 'wireless' or 'protect' surrogate, got a '{self.surrogate.form}' one"
            )
        if self.surrogate.form == "wireless" and protecting:
            raise UserError(
                f"protection levels {self.protects.tolist()} need a 'protect'-form surrogate (K an input: "
                f"python train_rsm.py fit --protect-sweep ...), not a '{self.surrogate.form}' one"
            )
        # action -> (split, withheld share, K); with one K = 0 the order of the (split, share) actions is unchanged
        self.actions = np.array([(s, w, k) for s in self.splits for w in self.withheld for k in self.protects])
        self.episode_steps, self.episode_end = episode_steps, check_episode_end(episode_end)
        self.snr = channel.SnrProcess(snr_mean_db, snr_std_db, snr_rho)
        # UE seconds per request: layers on the UE times one layer's FLOPs over the UE's throughput
        layer = compute.latency_breakdown(channel.LinkConfig(), model_dims, 0, tokens)["ue_compute_s"]  # one layer
        self.ue_seconds = (self.actions[:, 0] + 1) * layer
        self.observation_space = spaces.Box(np.float32(SNR_RANGE_DB[0]), np.float32(SNR_RANGE_DB[1]), (1,), np.float32)
        self.action_space = spaces.Discrete(len(self.actions))
        self.snr_db, self.steps = channel.SNR_MEAN_DB, 0

    def rewards(self, snr_db: float) -> dict[str, np.ndarray]:
        """Every action's reward and its parts at this SNR (one surrogate call for all actions)."""
        x = np.column_stack([np.full(len(self.actions), snr_db), self.actions[:, : len(self.surrogate.inputs) - 1]])
        log_ppl, accuracy, latency = self.surrogate.predict(x).T
        accuracy_part = ACCURACY_WEIGHT * accuracy
        latency_part = -LATENCY_WEIGHT * latency
        ue_part = -UE_COMPUTE_WEIGHT * self.ue_seconds
        return {
            "reward": accuracy_part + latency_part + ue_part,
            "accuracy_reward": accuracy_part,
            "latency_reward": latency_part,
            "ue_compute_reward": ue_part,
            "log_ppl": log_ppl,
            "token_accuracy": accuracy,
            "latency_s": latency,
        }

    def _observe(self, snr_db: float) -> np.ndarray:
        self.snr_db = float(np.clip(snr_db, *SNR_RANGE_DB))
        return np.array([self.snr_db], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.snr.reset(int(self.np_random.integers(2**63)))
        self.steps = 0
        if "snr_db" in (options or {}):
            self.snr.snr_db = float(options["snr_db"])
        return self._observe(self.snr.snr_db), {"snr_db": self.snr_db}

    def step(self, action):
        a = int(action)
        parts = self.rewards(self.snr_db)
        info = {k: float(v[a]) for k, v in parts.items() if k != "reward"}
        info.update(
            snr_db=self.snr_db,
            split=int(self.actions[a, 0]),
            withheld=float(self.actions[a, 1]),
            protect=int(self.actions[a, 2]),
            ppl=math.exp(info["log_ppl"]),
        )
        self.steps += 1
        obs = self._observe(self.snr.step())
        return obs, float(parts["reward"][a]), *episode_over(self.steps, self.episode_steps, self.episode_end), info


ENV_IDS = ("LayerSplit-Paper-v0", "LayerSplit-LLM-v0", "LayerSplit-Wireless-v0", "LayerSplit-Protect-v0")
SNR_ENV_IDS = ENV_IDS[2:]  # the WirelessSplitEnv ones: the SNR observed, the action (split, share, K)
for _id, _cls, _kwargs in zip(
    ENV_IDS,
    (PaperSplitEnv, LLMSplitEnv, WirelessSplitEnv, WirelessSplitEnv),
    ({}, {}, {}, {"rsm_path": PROTECT_RSM, "protects": PROTECTS}),
):
    if _id not in gym.registry:
        gym.register(_id, entry_point=f"{__name__}:{_cls.__name__}", kwargs=_kwargs)


def make(env_id: str, **kwargs) -> gym.Env:
    """gym.make with a clear error for an unknown id."""
    if env_id not in ENV_IDS:
        raise UserError(f"unknown environment {env_id!r}: use one of {', '.join(ENV_IDS)}")
    return gym.make(env_id, **kwargs)


def surrogate_fingerprint(env_id: str, **kwargs) -> str | None:
    """The fingerprint of the surrogate env_id with kwargs reads (Surrogate.fingerprint); None for the
    LLM environment, which has none."""
    if env_id == "LayerSplit-LLM-v0":
        return None
    env = make(env_id, **kwargs)
    try:
        return env.unwrapped.surrogate.fingerprint
    finally:
        env.close()
