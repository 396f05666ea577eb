"""The agents as objects and as files: the algorithms (ALGOS), the policy's observation scaling
(ScaledObservation), and an agent saved without pickles.

Saves hold no code. A policy or checkpoint is one safetensors file: the policy's weights (and, in a
checkpoint, the optimizer's state), with a JSON description in its header (algorithm, spaces,
network settings, counters) from which the policy is rebuilt; classes are named there, from the
short list SAFE_CLASSES, never stored. Stable-Baselines3's own policy.zip is also written beside a
finished policy for those who want PPO.load, but loading one unpickles whatever the file holds (code
included), so it is read only with trust_zip (the scripts' --trust-zip), for folders one made oneself
(run_folders.py)."""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor

from . import UserError

ALGOS = {"ppo": PPO, "a2c": A2C, "dqn": DQN}
SAVE_FORMAT = 1  # version of the safetensors description, refused when it differs
SPEC_KEY = "layersplit"  # the safetensors header entry holding a save's JSON description


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
