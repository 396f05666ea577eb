"""Train Stable-Baselines3 agents on the layer-splitting environments: vectorised environments (the
batched surrogate environment PaperVecEnv among them), TensorBoard and CSV logs, periodic checkpoints
and resumption after an interruption."""
from __future__ import annotations

import functools
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.monitor import get_monitor_files, load_results
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from tqdm.auto import tqdm

from . import UserError
from . import envs  # registers the environment ids
from .surrogate import Surrogate

ALGOS = {"ppo": PPO, "a2c": A2C, "dqn": DQN}
POLICY_FILE = "policy.zip"  # the trained agent, loadable with ALGOS[algo].load
CHECKPOINTS = "checkpoints"  # folder of periodic saves inside a run folder
SCALE_OBSERVATIONS = True  # policy inputs mapped to [-1, 1] by the observation bounds (False: raw, as the original)


# --- LayerSplit-Paper-v0 stepped as arrays ------------------------------------------------------------
class PaperVecEnv(VecEnv):
    """n copies of LayerSplit-Paper-v0 stepped as arrays: one surrogate call per step for all copies
    and no per-copy wrappers. The rules are PaperSplitEnv's own (transition, reward); finished
    episodes reset automatically, with terminal_observation and TimeLimit.truncated in their info,
    as in Stable-Baselines3's vectorised environments. Wrap it in VecMonitor for episode logs."""

    def __init__(self, n_envs: int, rsm_path: str | Path = envs.PAPER_RSM, surrogate: Surrogate | None = None,
                 episode_steps: int = envs.EPISODE_STEPS, episode_end: str = envs.EPISODE_END):
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
        infos = [{"inference_reward": float(i), "load_reward": float(l), "p": float(p), "split": int(s)}
                 for i, l, p, s in zip(inference, load, self.p, self.split)]
        if done.any():
            for i in np.flatnonzero(done):
                infos[i].update({"terminal_observation": obs[i],
                                 "TimeLimit.truncated": self.rules.episode_end == "truncate"})
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


def make_env(env_id: str, n_envs: int, seed: int, env_kwargs: dict | None, monitor_dir: Path | None,
             batched: bool = True):
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
    return make_vec_env(functools.partial(envs.make, env_id), n_envs=n_envs, seed=seed, env_kwargs=env_kwargs or {},
                        monitor_dir=None if monitor_dir is None else str(monitor_dir))


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The run's periodic saves as (step, path), newest first."""
    saved = [(int(m.group(1)), p) for p in (run_dir / CHECKPOINTS).glob("*.zip")
             if (m := re.search(r"_(\d+)_steps\.zip$", p.name))]
    return sorted(saved, reverse=True)


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


def newest_loadable(cls, saves: list[tuple[int, Path]]):
    """The first of saves (step, path) that loads, as (step, path, model), or (0, None, None) when none
    does. A kill while a save is written leaves it truncated, and it would then fail every rerun: each
    unreadable one is renamed to <name>.corrupt (kept, not deleted) and named in one line on stderr."""
    bad, found = [], (0, None, None)
    for step, path in saves:
        try:  # loaded without an env, as train reuses a finished policy; a resumed one is loaded onto its env
            found = step, path, cls.load(path, device="cpu")
            break
        except Exception as e:  # truncated, emptied, not a zip, ...: whatever the loader says
            bad.append((path, e))
    then = f"resuming from {found[1]}" if found[1] else "training from scratch"
    for path, e in bad:
        aside = free_name(path.with_name(path.name + ".corrupt"))
        path.rename(aside)
        why = (str(e).strip().splitlines() or [""])[0]
        print(f"[layersplit] {path} is unreadable ({type(e).__name__}: {why}): set aside as {aside.name}, {then}",
              file=sys.stderr)
    return found


def train(env_id: str, algo: str, run_dir: str | Path, total_timesteps: int, seed: int, n_envs: int,
          hyperparameters: dict, env_kwargs: dict | None = None, checkpoint_every: int = 0,
          progress: bool = True, resume: bool = True, batched: bool = True,
          scale_observations: bool = SCALE_OBSERVATIONS, callbacks: tuple = ()):
    """Train (or resume) an agent; returns (model, summary). A run folder holding a finished policy is
    reused as is; one holding checkpoints continues from the newest of them."""
    if algo not in ALGOS:
        raise UserError(f"unknown algorithm {algo!r}: use one of {', '.join(ALGOS)}")
    if total_timesteps < 1 or n_envs < 1:
        raise UserError("--total-timesteps and --n-envs must be at least 1")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"env": env_id, "algo": algo, "batched": batched, "seed": seed, "n_envs": n_envs, "total_timesteps": total_timesteps,
              "hyperparameters": hyperparameters, "scale_observations": scale_observations, "env_kwargs": {k: str(v) for k, v in (env_kwargs or {}).items()}}
    config_path = run_dir / "config.json"
    same = ("total_timesteps",)  # a resumed run may be given a larger budget; anything else must match
    if config_path.exists() and {k: v for k, v in json.loads(config_path.read_text()).items() if k not in same} != {
            k: v for k, v in config.items() if k not in same}:
        raise UserError(f"{run_dir} holds a run with another configuration (see its config.json): "
                        "use another --run-dir, or the same options to resume")
    torch.distributions.Distribution.set_default_validate_args(False)  # per-step argument checks: pure overhead here
    cls = ALGOS[algo]
    start_step, checkpoint = 0, None
    if resume:  # go on from the newest save that loads: the finished policy, else the newest checkpoint
        saves = checkpoints(run_dir)
        if (run_dir / POLICY_FILE).exists() and (run_dir / "summary.json").exists():
            try:
                summary = json.loads((run_dir / "summary.json").read_text())
                saves.insert(0, (int(summary["timesteps"]), run_dir / POLICY_FILE))
            except (ValueError, KeyError, TypeError) as e:  # cut short by a kill: the policy's step is unknown
                aside = free_name(run_dir / "summary.json.corrupt")
                (run_dir / "summary.json").rename(aside)
                print(f"[layersplit] {run_dir / 'summary.json'} is unreadable ({type(e).__name__}): set aside as "
                      f"{aside.name}; going on from the newest checkpoint", file=sys.stderr)
        start_step, checkpoint, loaded = newest_loadable(cls, saves)
        if checkpoint == run_dir / POLICY_FILE and start_step >= total_timesteps:  # finished: reuse it
            return loaded, summary
    # one monitor folder per (re)start, named by its first step: the episode log survives a resume
    env = make_env(env_id, n_envs, seed + start_step, env_kwargs, run_dir / "monitor" / f"from_{start_step}", batched)
    # written once the environment is built: bad settings refused there leave no run to be refused next time
    config_path.write_text(json.dumps(config, indent=2))
    if checkpoint is not None:
        model = cls.load(checkpoint, env=env, device="cpu")
    else:
        policy_kwargs = {"features_extractor_class": ScaledObservation} if scale_observations else {}
        model = cls("MlpPolicy", env, seed=seed, device="cpu", verbose=0, policy_kwargs=policy_kwargs, **hyperparameters)
    done = model.num_timesteps
    # SB3's CSV logger starts a new file: keep the old part. Two restarts from the same save (or from
    # scratch) would give it the same name, so a later part gets a free one (_2, ...), not the earlier's
    if (run_dir / "progress.csv").exists():
        (run_dir / "progress.csv").rename(free_name(run_dir / f"progress_until_{done}.csv"))
    model.set_logger(configure(str(run_dir), ["csv", "tensorboard"]))
    timer = StepTimer()
    callbacks = [ProgressBar(total_timesteps, done, progress), timer, *callbacks]
    if checkpoint_every > 0:
        callbacks.append(CheckpointCallback(max(checkpoint_every // n_envs, 1), str(run_dir / CHECKPOINTS), "model"))
    start = time.perf_counter()
    if total_timesteps > done:
        model.learn(total_timesteps - done, callback=CallbackList(callbacks), reset_num_timesteps=checkpoint is None,
                    tb_log_name="tb")
    seconds = time.perf_counter() - start
    model.save(run_dir / POLICY_FILE)
    summary = {"timesteps": int(model.num_timesteps), "resumed_from": int(done), "wall_s": seconds,
               "seconds_per_step": timer.seconds_per_step, "steps_per_s": (model.num_timesteps - done) / max(seconds, 1e-9),
               "torch_threads": torch.get_num_threads()}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    env.close()
    return model, summary


def load_policy(path: str | Path, algo: str | None = None):
    """A saved agent; the algorithm is read from the run's config.json when not given."""
    path = Path(path)
    if path.is_dir():
        path = path / POLICY_FILE
    if not path.is_file():
        raise UserError(f"no saved policy at {path} (train one with: python train_rsm.py train)")
    if algo is None:
        config = path.parent / "config.json"
        algo = json.loads(config.read_text())["algo"] if config.exists() else "ppo"
    try:
        return ALGOS[algo].load(path, device="cpu")
    except Exception as e:
        raise UserError(f"{path} is not a saved {algo} policy ({type(e).__name__}: {e})") from None


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
    return log[["timesteps", "r"]].rename(columns={"r": "return"}).reset_index(drop=True)
