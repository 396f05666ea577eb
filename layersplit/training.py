"""Train Stable-Baselines3 agents on the layer-splitting environments: vectorised environments (the
batched surrogate environment PaperVecEnv among them), TensorBoard and CSV logs, periodic checkpoints
and resumption after an interruption.

Saves hold no code. A policy or checkpoint is one safetensors file: the policy's weights (and, in a
checkpoint, the optimizer's state), with a JSON description in its header (algorithm, spaces,
network settings, counters) from which the policy is rebuilt; classes are named there, from the
short list SAFE_CLASSES, never stored. Stable-Baselines3's own policy.zip is also written beside a
finished policy for those who want PPO.load, but loading one unpickles whatever the file holds (code
included), so it is read only with trust_zip (the scripts' --trust-zip), for folders one made oneself."""

from __future__ import annotations

import functools
import json
import re
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor
from stable_baselines3.common.monitor import get_monitor_files, load_results
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from tqdm.auto import tqdm

from . import UserError
from . import envs  # registers the environment ids
from .surrogate import Surrogate

ALGOS = {"ppo": PPO, "a2c": A2C, "dqn": DQN}
POLICY_FILE = "policy.safetensors"  # the trained policy: weights, and its JSON description in the header
SB3_POLICY_FILE = "policy.zip"  # Stable-Baselines3's save of the same agent (unpickled on load: trust_zip only)
CONFIG_FILE = "config.json"  # the run's settings, checked on every restart
SUMMARY_FILE = "summary.json"  # the finished run's timing and step count
CHECKPOINTS = "checkpoints"  # folder of periodic saves inside a run folder
SAVE_FORMAT = 1  # version of the safetensors description, refused when it differs
SPEC_KEY = "layersplit"  # the safetensors header entry holding a save's JSON description
SCALE_OBSERVATIONS = True  # policy inputs mapped to [-1, 1] by the observation bounds (False: raw, as the original)


# --- LayerSplit-Paper-v0 stepped as arrays ------------------------------------------------------------
class PaperVecEnv(VecEnv):
    """n copies of LayerSplit-Paper-v0 stepped as arrays: one surrogate call per step for all copies
    and no per-copy wrappers. The rules are PaperSplitEnv's own (transition, reward); finished
    episodes reset automatically, with terminal_observation and TimeLimit.truncated in their info,
    as in Stable-Baselines3's vectorised environments. Wrap it in VecMonitor for episode logs."""

    def __init__(
        self,
        n_envs: int,
        rsm_path: str | Path = envs.PAPER_RSM,
        surrogate: Surrogate | None = None,
        episode_steps: int = envs.EPISODE_STEPS,
        episode_end: str = envs.EPISODE_END,
    ):
        self.rules = envs.PaperSplitEnv(rsm_path, surrogate, episode_steps, episode_end)
        super().__init__(n_envs, self.rules.observation_space, self.rules.action_space)
        self.rng = np.random.default_rng()
        self.p, self.split = np.zeros(n_envs), np.zeros(n_envs, dtype=np.int64)
        self.steps = np.zeros(n_envs, dtype=np.int64)
        self.actions = np.zeros(n_envs, dtype=np.int64)

    def _restart(self, which: np.ndarray) -> None:
        n = int(which.sum())
        self.p[which] = self.rng.uniform(*envs.PAPER_RESET_P, size=n)
        self.split[which] = self.rng.integers(envs.PAPER_RESET_SPLITS[0], envs.PAPER_RESET_SPLITS[1] + 1, size=n)
        self.steps[which] = 0

    def _obs(self) -> np.ndarray:
        return np.stack([self.p, self.split], 1).astype(np.float32)

    def reset(self):
        if self._seeds[0] is not None:  # one generator drives every copy
            self.rng = np.random.default_rng(self._seeds[0])
        self._reset_seeds()
        self._restart(np.ones(self.num_envs, dtype=bool))
        return self._obs()

    def step_async(self, actions) -> None:
        self.actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)

    def step_wait(self):
        self.p, self.split = self.rules.transition(self.p, self.split, self.actions)
        inference = self.rules.inference_reward(self.p, self.split)
        load = envs.load_term(self.split)
        rewards = envs.original_reward(inference, self.split).astype(np.float32)
        self.steps += 1
        done = self.steps >= self.rules.episode_steps
        obs = self._obs()
        infos = [
            {"inference_reward": float(i), "load_reward": float(ld), "p": float(p), "split": int(s)}
            for i, ld, p, s in zip(inference, load, self.p, self.split)
        ]
        if done.any():
            for i in np.flatnonzero(done):
                infos[i].update(
                    {"terminal_observation": obs[i], "TimeLimit.truncated": self.rules.episode_end == "truncate"}
                )
            self._restart(done)
            obs = self._obs()
        return obs, rewards, done, infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name, indices=None):
        return [getattr(self.rules, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name, value, indices=None) -> None:
        raise NotImplementedError("PaperVecEnv copies share one set of rules")

    def env_method(self, method_name, *method_args, indices=None, **method_kwargs):
        return [getattr(self.rules, method_name)(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * len(self._get_indices(indices))


class ScaledObservation(BaseFeaturesExtractor):
    """The policy's first step: each observation entry mapped from its Box bounds to [-1, 1]. The
    original fed [p, split] raw (p spans 0.3, split 10), and PPO then stopped short of the optimum
    (README, "Observation scaling"). Inside the policy, a saved agent takes raw observations."""

    def __init__(self, observation_space):
        super().__init__(observation_space, get_flattened_obs_dim(observation_space))
        low = torch.as_tensor(observation_space.low, dtype=torch.float32).flatten()
        high = torch.as_tensor(observation_space.high, dtype=torch.float32).flatten()
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise UserError("observation scaling needs finite bounds: train with --raw-observations")
        self.register_buffer("low", low)
        self.register_buffer("scale", 2.0 / (high - low))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return (observations.flatten(1) - self.low) * self.scale - 1.0


# the classes a save may name (policy network pieces and optimizers): rebuilt by name, never unpickled
SAFE_CLASSES = {
    c.__name__: c
    for c in (
        torch.nn.Tanh,
        torch.nn.ReLU,
        torch.nn.LeakyReLU,
        torch.nn.ELU,
        torch.nn.GELU,
        torch.nn.SiLU,
        torch.nn.Sigmoid,
        FlattenExtractor,
        ScaledObservation,
        torch.optim.Adam,
        torch.optim.RMSprop,
        torch.optim.SGD,
    )
}
# what a save keeps of an agent beyond its weights: SB3's load restores the same from its zip
COUNTERS = ("num_timesteps", "_n_updates", "_episode_num", "_n_calls")


# --- saves without pickles ----------------------------------------------------------------------------
class UnsafeSave(Exception):
    """A save that cannot be read (damaged, not a layersplit save, or naming a class not in SAFE_CLASSES)."""


def _to_json(value):
    if isinstance(value, type):
        if SAFE_CLASSES.get(value.__name__) is not value:
            raise ValueError(f"{value.__name__} cannot be saved by name: add it to SAFE_CLASSES")
        return {"class": value.__name__}
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"a policy setting of type {type(value).__name__} cannot be saved as JSON")


def _from_json(value):
    if isinstance(value, dict):
        if set(value) == {"class"}:
            if value["class"] not in SAFE_CLASSES:
                raise UnsafeSave(f"names the class {value['class']!r}, which is not one of SAFE_CLASSES")
            return SAFE_CLASSES[value["class"]]
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _space_to_json(space) -> dict:
    if isinstance(space, spaces.Box):
        return {"type": "Box", "low": space.low.tolist(), "high": space.high.tolist(), "dtype": str(space.dtype)}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    raise ValueError(f"a {type(space).__name__} space cannot be saved")


def _space_from_json(d: dict):
    if d.get("type") == "Box":
        return spaces.Box(np.array(d["low"], dtype=d["dtype"]), np.array(d["high"], dtype=d["dtype"]), dtype=d["dtype"])
    if d.get("type") == "Discrete":
        return spaces.Discrete(int(d["n"]), start=int(d["start"]))
    raise UnsafeSave(f"has a space of unknown type {d.get('type')!r}")


def algo_name(cls) -> str:
    return next(name for name, c in ALGOS.items() if c is cls)


def save(model, path: Path, with_optimizer: bool, config: dict | None = None) -> None:
    """The agent as one safetensors file (written beside, then renamed into place): the policy's
    weights, with with_optimizer the optimizer's state too (what a resumed run needs), and the JSON
    description load_save reads. Tensors that modules share are stored once per name."""
    params = model.policy._get_constructor_parameters()
    for k in ("observation_space", "action_space", "lr_schedule"):
        params.pop(k, None)
    tensors = {f"policy.{k}": v.detach().cpu().clone().contiguous() for k, v in model.policy.state_dict().items()}
    spec = {
        "format": SAVE_FORMAT,
        "algo": algo_name(type(model)),
        "policy_class": type(model.policy).__name__,
        "observation_space": _space_to_json(model.observation_space),
        "action_space": _space_to_json(model.action_space),
        "policy_kwargs": _to_json(params),
        "counters": {k: int(getattr(model, k)) for k in COUNTERS if hasattr(model, k)},
        # each entry as [value, numpy type]: the logged means are then the same to the last digit
        "ep_info_buffer": [
            {k: [float(v), np.asarray(v).dtype.name] for k, v in info.items()} for info in (model.ep_info_buffer or [])
        ],
        "ep_success_buffer": [float(v) for v in (model.ep_success_buffer or [])],
        "config": config,
    }
    if with_optimizer:
        state = model.policy.optimizer.state_dict()
        for index, entries in state["state"].items():
            for name, value in entries.items():
                tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value).detach().cpu().clone().contiguous()
        spec["optimizer_groups"] = _to_json(state["param_groups"])
    data = safetensors_bytes(tensors, metadata={SPEC_KEY: json.dumps(spec)})
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def load_save(path: Path) -> tuple[dict, dict]:
    """A save's (description, tensors); UnsafeSave when the file is not a whole layersplit save."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            spec = json.loads((f.metadata() or {})[SPEC_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # truncated, emptied, not safetensors, no description: whatever the reader says
        why = (str(e).strip().splitlines() or [""])[0]
        raise UnsafeSave(f"is not a readable policy save ({type(e).__name__}: {why})") from None
    if not isinstance(spec, dict) or spec.get("format") != SAVE_FORMAT or spec.get("algo") not in ALGOS:
        raise UnsafeSave(f"is not a layersplit policy save of format {SAVE_FORMAT}")
    return spec, tensors


def _policy_state(tensors: dict) -> dict:
    return {k.removeprefix("policy."): v for k, v in tensors.items() if k.startswith("policy.")}


def _number(value: float, dtype: str):
    if np.dtype(dtype).kind not in "biuf":
        raise UnsafeSave(f"has an episode entry of type {dtype!r}")
    return np.dtype(dtype).type(value)


def restore(model, spec: dict, tensors: dict) -> None:
    """Put a save's weights, optimizer state and counters into a freshly built agent of the same
    settings: the state Stable-Baselines3's load gives from its zip."""
    model.policy.load_state_dict(_policy_state(tensors), strict=True)
    if "optimizer_groups" in spec:
        state = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        model.policy.optimizer.load_state_dict({"state": state, "param_groups": spec["optimizer_groups"]})
    for k, v in spec.get("counters", {}).items():
        if k in COUNTERS and hasattr(model, k):
            setattr(model, k, int(v))
    # the window of recent episodes behind rollout/ep_rew_mean (built by learn() when None)
    episodes = [{k: _number(*v) for k, v in info.items()} for info in spec.get("ep_info_buffer", [])]
    model.ep_info_buffer = deque(episodes, maxlen=model._stats_window_size)
    model.ep_success_buffer = deque(spec.get("ep_success_buffer", []), maxlen=model._stats_window_size)


@dataclass
class SavedPolicy:
    """A trained policy rebuilt from a save; predict() as Stable-Baselines3's."""

    policy: torch.nn.Module
    algo: str
    num_timesteps: int

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = False):
        return self.policy.predict(observation, state, episode_start, deterministic)


def policy_from_save(spec: dict, tensors: dict) -> SavedPolicy:
    cls = ALGOS[spec["algo"]].policy_aliases["MlpPolicy"]
    if spec.get("policy_class") != cls.__name__:
        raise UnsafeSave(f"holds a {spec.get('policy_class')}, not the {cls.__name__} of {spec['algo']}")
    try:
        policy = cls(
            _space_from_json(spec["observation_space"]),
            _space_from_json(spec["action_space"]),
            lambda _: 0.0,
            **_from_json(spec["policy_kwargs"]),
        )
        policy.load_state_dict(_policy_state(tensors), strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        why = (str(e).strip().splitlines() or [""])[0]
        raise UnsafeSave(f"does not rebuild into a {cls.__name__} ({type(e).__name__}: {why})") from None
    policy.set_training_mode(False)
    return SavedPolicy(policy, spec["algo"], int(spec.get("counters", {}).get("num_timesteps", 0)))


class SafeCheckpoint(BaseCallback):
    """Every `every` calls (x n_envs steps), the agent with its optimizer to
    <folder>/model_<steps>_steps.safetensors: what CheckpointCallback does, without a pickle."""

    def __init__(self, every: int, folder: Path, config: dict):
        super().__init__()
        self.every, self.folder, self.config = every, Path(folder), config

    def _on_step(self) -> bool:
        if self.n_calls % self.every == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            save(self.model, self.folder / f"model_{self.num_timesteps}_steps.safetensors", True, self.config)
        return True


class ProgressBar(BaseCallback):
    """A tqdm bar over environment steps (SB3's own bar needs rich; this one needs tqdm only)."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        super().__init__()
        self.bar = tqdm(total=total, initial=initial, unit="step", desc="train", disable=not enabled, smoothing=0.05)

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


class StepTimer(BaseCallback):
    """Wall time per environment step, logged (time/step_s) and kept for the run summary."""

    def __init__(self):
        super().__init__()
        self.start, self.steps = time.perf_counter(), 0

    def _on_step(self) -> bool:
        self.steps += self.training_env.num_envs
        return True

    def _on_rollout_end(self) -> None:
        self.logger.record("time/step_s", self.seconds_per_step)

    @property
    def seconds_per_step(self) -> float:
        return (time.perf_counter() - self.start) / max(self.steps, 1)


def make_env(
    env_id: str, n_envs: int, seed: int, env_kwargs: dict | None, monitor_dir: Path | None, batched: bool = True
):
    """n_envs copies of env_id as one VecEnv, logging episodes to monitor_dir. LayerSplit-Paper-v0 is
    stepped as arrays (PaperVecEnv) unless batched is False; the others through DummyVecEnv."""
    if batched and env_id == "LayerSplit-Paper-v0":
        env = PaperVecEnv(n_envs, **(env_kwargs or {}))
        env.seed(seed)
        if monitor_dir is None:
            return env
        Path(monitor_dir).mkdir(parents=True, exist_ok=True)
        return VecMonitor(env, str(Path(monitor_dir) / "all"))
    # through envs.make, not the id: SB3 would ask for render_mode="rgb_array", which these envs lack
    return make_vec_env(
        functools.partial(envs.make, env_id),
        n_envs=n_envs,
        seed=seed,
        env_kwargs=env_kwargs or {},
        monitor_dir=None if monitor_dir is None else str(monitor_dir),
    )


def checkpoints(run_dir: Path, trust_zip: bool = False) -> list[tuple[int, Path]]:
    """The run's periodic saves as (step, path), newest first; Stable-Baselines3's zips only with
    trust_zip (after the safetensors save of the same step)."""
    kinds = {".safetensors": 1, **({".zip": 0} if trust_zip else {})}
    saved = [
        (int(m.group(1)), kinds[m.group(2)], p)
        for p in (run_dir / CHECKPOINTS).glob("model_*")
        if (m := re.search(r"_(\d+)_steps(\.safetensors|\.zip)$", p.name)) and m.group(2) in kinds
    ]
    return [(step, path) for step, _, path in sorted(saved, reverse=True)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    saved = checkpoints(run_dir)
    return saved[0][1] if saved else None


def free_name(path: Path) -> Path:
    """path, or path with _2, _3, ... before its last suffix when that is taken: moving a file there
    overwrites nothing."""
    k, free = 2, path
    while free.exists():
        free, k = path.with_name(f"{path.stem}_{k}{path.suffix}"), k + 1
    return free


def set_aside(path: Path, why: str, then: str) -> None:
    """Rename an unreadable file of a run to <name>.corrupt (kept, not deleted), said in one line."""
    aside = free_name(path.with_name(path.name + ".corrupt"))
    path.rename(aside)
    print(f"[layersplit] {path} is unreadable ({why}): set aside as {aside.name}, {then}", file=sys.stderr)


def read_json(path: Path) -> dict:
    """A run folder's JSON object; UserError naming path:line when it is damaged."""
    try:
        value = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}:1: not a JSON object")
    return value


def run_config(run_dir: str | Path) -> dict:
    """A training run folder's config.json, checked; UserError in one line when missing or damaged."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(
            f"{run_dir} is not a training run folder (no {CONFIG_FILE}): train one with python train_rsm.py train"
        )
    config = read_json(path)
    if (
        config.get("env") not in envs.ENV_IDS
        or config.get("algo") not in ALGOS
        or not isinstance(config.get("seed"), int)
        or not isinstance(config.get("env_kwargs"), dict)
    ):
        raise UserError(f"{path}:1: not a training run's settings (env, algo, seed and env_kwargs expected)")
    return config


def _read_save(cls, path: Path, trust_zip: bool):
    """(step, what) of one save: {"spec", "tensors"} of a safetensors save, or the agent of a trusted zip."""
    if path.suffix == ".zip":
        if not trust_zip:
            raise UnsafeSave("is a Stable-Baselines3 zip, read only with --trust-zip")
        model = cls.load(path, device="cpu")
        return int(model.num_timesteps), model
    spec, tensors = load_save(path)
    if spec["algo"] != algo_name(cls):
        raise UnsafeSave(f"holds a {spec['algo']} agent, not {algo_name(cls)}")
    return int(spec.get("counters", {}).get("num_timesteps", 0)), {"spec": spec, "tensors": tensors}


def newest_loadable(cls, saves: list[Path], trust_zip: bool = False):
    """The first of saves (newest first) that loads, as (step, path, what), or (0, None, None) when
    none does. A kill while a save is written leaves it truncated, and it would then fail every rerun:
    each unreadable one is renamed to <name>.corrupt (kept, not deleted) and named in one line on stderr."""
    bad, found = [], (0, None, None)
    for path in saves:
        try:
            step, what = _read_save(cls, path, trust_zip)
            found = step, path, what
            break
        except Exception as e:  # truncated, emptied, not a save, ...: whatever the loader says
            bad.append((path, e))
    then = f"resuming from {found[1]}" if found[1] else "training from scratch"
    for path, e in bad:
        set_aside(path, f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}", then)
    return found


ZIP_REFUSED = (
    "{} holds only Stable-Baselines3 zips, and loading one unpickles it, which runs any code stored in "
    "it: pass --trust-zip if you made this folder yourself"
)


def run_saves(run_dir: Path, trust_zip: bool) -> list[Path]:
    """A run folder's saves, newest first: the finished policy, then the checkpoints. Zips are listed
    only with trust_zip; a folder with zips and no safetensors save is refused without it."""
    policies = [run_dir / POLICY_FILE] if (run_dir / POLICY_FILE).exists() else []
    if not policies and trust_zip and (run_dir / SB3_POLICY_FILE).exists():
        policies = [run_dir / SB3_POLICY_FILE]
    saves = policies + [path for _, path in checkpoints(run_dir, trust_zip)]
    if not saves and not trust_zip and ((run_dir / SB3_POLICY_FILE).exists() or checkpoints(run_dir, True)):
        raise UserError(ZIP_REFUSED.format(run_dir))
    return saves


def read_summary(run_dir: Path) -> dict | None:
    """The finished run's summary.json, or None when absent; one that a kill cut short is set aside."""
    path = run_dir / SUMMARY_FILE
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
        int(summary["timesteps"])
        return summary
    except (ValueError, KeyError, TypeError) as e:  # cut short by a kill: the policy's step is unknown
        set_aside(path, type(e).__name__, "going on from the newest save")
        return None


def train(
    env_id: str,
    algo: str,
    run_dir: str | Path,
    total_timesteps: int,
    seed: int,
    n_envs: int,
    hyperparameters: dict,
    env_kwargs: dict | None = None,
    checkpoint_every: int = 0,
    progress: bool = True,
    resume: bool = True,
    batched: bool = True,
    scale_observations: bool = SCALE_OBSERVATIONS,
    callbacks: tuple = (),
    trust_zip: bool = False,
):
    """Train (or resume) an agent; returns (model, summary). A run folder holding a finished policy is
    reused as is (model is then a SavedPolicy); one holding checkpoints continues from the newest of
    them. Stable-Baselines3 zips in the folder are read only with trust_zip."""
    if algo not in ALGOS:
        raise UserError(f"unknown algorithm {algo!r}: use one of {', '.join(ALGOS)}")
    if total_timesteps < 1 or n_envs < 1:
        raise UserError("--total-timesteps and --n-envs must be at least 1")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "env": env_id,
        "algo": algo,
        "batched": batched,
        "seed": seed,
        "n_envs": n_envs,
        "total_timesteps": total_timesteps,
        "hyperparameters": hyperparameters,
        "scale_observations": scale_observations,
        "env_kwargs": {k: str(v) for k, v in (env_kwargs or {}).items()},
    }
    config_path = run_dir / CONFIG_FILE
    same = ("total_timesteps",)  # a resumed run may be given a larger budget; anything else must match

    def check(found: dict, where: Path) -> None:
        if {k: v for k, v in found.items() if k not in same} != {k: v for k, v in config.items() if k not in same}:
            raise UserError(
                f"{run_dir} holds a run with another configuration (see {where}): "
                "use another --run-dir, or the same options to resume"
            )

    if config_path.exists():
        try:
            found = read_json(config_path)
        except UserError as e:  # damaged: the newest save's copy of the settings is checked instead
            found = None
            set_aside(config_path, str(e), "checking the settings against the newest save")
        if found is not None:
            check(found, config_path)
    torch.distributions.Distribution.set_default_validate_args(False)  # per-step argument checks: pure overhead here
    cls = ALGOS[algo]
    start_step, checkpoint, loaded = 0, None, None
    if resume:  # go on from the newest save that loads: the finished policy, else the newest checkpoint
        saves = run_saves(run_dir, trust_zip)
        summary = read_summary(run_dir) if saves and saves[0].parent == run_dir else None
        start_step, checkpoint, loaded = newest_loadable(cls, saves, trust_zip)
        if isinstance(loaded, dict) and loaded["spec"].get("config") is not None:
            check(loaded["spec"]["config"], checkpoint)
        finished = checkpoint is not None and checkpoint.parent == run_dir and summary is not None
        if finished and start_step >= total_timesteps:  # reuse it
            policy = policy_from_save(loaded["spec"], loaded["tensors"]) if isinstance(loaded, dict) else loaded
            return policy, summary
    # one monitor folder per (re)start, named by its first step: the episode log survives a resume
    env = make_env(env_id, n_envs, seed + start_step, env_kwargs, run_dir / "monitor" / f"from_{start_step}", batched)
    # written once the environment is built: bad settings refused there leave no run to be refused next time
    tmp = config_path.with_name(f"{config_path.name}.tmp")
    tmp.write_text(json.dumps(config, indent=2))
    tmp.replace(config_path)
    policy_kwargs = {"features_extractor_class": ScaledObservation} if scale_observations else {}
    if isinstance(loaded, dict) or loaded is None:
        model = cls(
            "MlpPolicy", env, seed=seed, device="cpu", verbose=0, policy_kwargs=policy_kwargs, **hyperparameters
        )
        if loaded is not None:
            restore(model, loaded["spec"], loaded["tensors"])
    else:  # a trusted zip
        model = cls.load(checkpoint, env=env, device="cpu")
    done = model.num_timesteps
    # SB3's CSV logger starts a new file: keep the old part. Two restarts from the same save (or from
    # scratch) would give it the same name, so a later part gets a free one (_2, ...), not the earlier's
    if (run_dir / "progress.csv").exists():
        (run_dir / "progress.csv").rename(free_name(run_dir / f"progress_until_{done}.csv"))
    model.set_logger(configure(str(run_dir), ["csv", "tensorboard"]))
    timer = StepTimer()
    callbacks = [ProgressBar(total_timesteps, done, progress), timer, *callbacks]
    if checkpoint_every > 0:
        callbacks.append(SafeCheckpoint(max(checkpoint_every // n_envs, 1), run_dir / CHECKPOINTS, config))
    start = time.perf_counter()
    if total_timesteps > done:
        model.learn(
            total_timesteps - done,
            callback=CallbackList(callbacks),
            reset_num_timesteps=checkpoint is None,
            tb_log_name="tb",
        )
    seconds = time.perf_counter() - start
    save(model, run_dir / POLICY_FILE, True, config)
    model.save(run_dir / SB3_POLICY_FILE)  # for PPO.load in one's own code; never read back without trust_zip
    summary = {
        "timesteps": int(model.num_timesteps),
        "resumed_from": int(done),
        "wall_s": seconds,
        "seconds_per_step": timer.seconds_per_step,
        "steps_per_s": (model.num_timesteps - done) / max(seconds, 1e-9),
        "torch_threads": torch.get_num_threads(),
    }
    tmp = run_dir / f"{SUMMARY_FILE}.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(run_dir / SUMMARY_FILE)
    env.close()
    return model, summary


def load_policy(path: str | Path, algo: str | None = None, trust_zip: bool = False):
    """A saved policy (predict() as Stable-Baselines3's): a run folder's policy.safetensors, or that file
    itself, or a checkpoint. A Stable-Baselines3 zip is read only with trust_zip (it unpickles)."""
    path = Path(path)
    if path.is_dir():
        for name in (POLICY_FILE, SB3_POLICY_FILE):
            if (path / name).is_file():
                path = path / name
                break
    if not path.is_file():
        raise UserError(f"no saved policy at {path} (train one with: python train_rsm.py train)")
    if path.suffix == ".zip":
        if not trust_zip:
            raise UserError(ZIP_REFUSED.format(path.parent if path.name == SB3_POLICY_FILE else path))
        if algo is None:
            algo = run_config(path.parent)["algo"] if (path.parent / CONFIG_FILE).exists() else "ppo"
        try:
            return ALGOS[algo].load(path, device="cpu")
        except Exception as e:
            raise UserError(f"{path} is not a saved {algo} policy ({type(e).__name__}: {e})") from None
    try:
        policy = policy_from_save(*load_save(path))
    except UnsafeSave as e:
        raise UserError(f"{path} {e}") from None
    if algo is not None and policy.algo != algo:
        raise UserError(f"{path} holds a {policy.algo} policy, not a {algo} one")
    return policy


def episode_log(run_dir: str | Path):
    """Every training episode of a run as (timesteps at its end, return), from the monitor files: one
    folder per (re)start, from_<its first step>, read by Stable-Baselines3's load_results."""
    import pandas as pd

    folders = [f for f in Path(run_dir, "monitor").glob("from_*") if get_monitor_files(str(f))]
    if not folders:
        raise UserError(f"{run_dir} has no monitor files: is it a training run folder?")
    log = pd.concat(load_results(str(f)).assign(start=int(f.name.removeprefix("from_"))) for f in folders)
    # in the order they ended; episodes that ended at once stay in their file's order (load_results'
    # sort is not stable)
    log = log.sort_values(["start", "t", "index"], kind="stable")
    log["timesteps"] = log.groupby("start")["l"].cumsum() + log["start"]
    # a stretch abandoned by a kill and trained again from an earlier save is shown once: each part
    # keeps the episodes that ended by the step the next part started from
    starts = sorted(log["start"].unique())
    until = dict(zip(starts, [*starts[1:], np.inf]))
    log = log[log["timesteps"] <= log["start"].map(until)]
    return log[["timesteps", "r"]].rename(columns={"r": "return"}).reset_index(drop=True)
