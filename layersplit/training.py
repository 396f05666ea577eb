"""Train Stable-Baselines3 agents on the layer-splitting environments: vectorised environments (the
batched surrogate environment PaperVecEnv among them), TensorBoard and CSV logs, periodic checkpoints
and resumption after an interruption (train). The agents and their saves are agents.py's; what a run
folder holds and how it is read back, run_folders.py's."""

from __future__ import annotations

import functools
import inspect
import json
import time
from pathlib import Path

import numpy as np
import threadpoolctl
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from tqdm.auto import tqdm

from . import UserError
from . import envs  # registers the environment ids
from .agents import ALGOS, ScaledObservation, policy_from_save, restore, save
from .run_folders import (
    CHECKPOINTS,
    CONFIG_FILE,
    POLICY_FILE,
    SB3_POLICY_FILE,
    SUMMARY_FILE,
    free_name,
    newest_loadable,
    read_json,
    read_summary,
    run_saves,
    set_aside,
)
from .surrogate import Surrogate

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


def limit_threads(n: int) -> None:
    """n CPU threads for torch and for numpy's BLAS, which computes the surrogate environments' small
    matrix products: a BLAS pool spin-waits for its threads, and beside another busy process it makes
    training several times slower."""
    torch.set_num_threads(n)
    threadpoolctl.threadpool_limits(n, user_api="blas")


# --- run folders' settings -------------------------------------------------------------------------
RESUMABLE_CHANGES = ("total_timesteps",)  # a resumed run may be given a larger budget; any other setting must match


def settings(
    env_id: str,
    algo: str,
    seed: int,
    n_envs: int,
    total_timesteps: int,
    hyperparameters: dict,
    env_kwargs: dict | None,
    batched: bool,
    scale_observations: bool,
) -> dict:
    """A run's config.json: what a restart must share with it. The surrogate is named by its content
    (surrogate_sha256), not only by its path, so a run trained before a refit is not taken for one of the
    refit surrogate."""
    return {
        "env": env_id,
        "algo": algo,
        "batched": batched,
        "seed": seed,
        "n_envs": n_envs,
        "total_timesteps": total_timesteps,
        "hyperparameters": hyperparameters,
        "scale_observations": scale_observations,
        "env_kwargs": {k: str(v) for k, v in (env_kwargs or {}).items()},
        "surrogate_sha256": envs.surrogate_fingerprint(env_id, **(env_kwargs or {})),
    }


def refuse_other_settings(run_dir: Path, config: dict, found: dict, where: Path) -> None:
    """UserError naming the first setting in which `found` (a folder's or a save's) differs from `config`."""
    for key in sorted((config.keys() | found.keys()) - set(RESUMABLE_CHANGES)):
        if found.get(key) != config.get(key):
            was, now = (
                v[:12] if key == "surrogate_sha256" and isinstance(v, str) else v
                for v in (found.get(key), config.get(key))
            )
            hint = ""
            if key == "surrogate_sha256":  # a folder written before the settings named the surrogate has None
                hint = "; the surrogate changed since this run was trained, a refit?" if was else ", not recorded there"
            raise UserError(
                f"{run_dir} holds a run with another configuration (see {where}; {key}: {was} in the file, "
                f"{now} now{hint}): use another --run-dir, or the same options to resume"
            )


def check_run_folder(**job) -> None:
    """What train(**job) would refuse in the run folder's config.json, checked without building or training
    anything: a script with several runs refuses before the first trains. A damaged file is left to train."""
    bound = inspect.signature(train).bind(**job)
    bound.apply_defaults()
    a = bound.arguments
    path = Path(a["run_dir"]) / CONFIG_FILE
    if not path.exists():
        return
    try:
        found = read_json(path)
    except UserError:
        return
    config = settings(**{k: a[k] for k in inspect.signature(settings).parameters})
    refuse_other_settings(Path(a["run_dir"]), config, found, path)


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
    config = settings(
        env_id, algo, seed, n_envs, total_timesteps, hyperparameters, env_kwargs, batched, scale_observations
    )
    config_path = run_dir / CONFIG_FILE

    if config_path.exists():
        try:
            found = read_json(config_path)
        except UserError as e:  # damaged: the newest save's copy of the settings is checked instead
            found = None
            set_aside(config_path, str(e), "checking the settings against the newest save")
        if found is not None:
            refuse_other_settings(run_dir, config, found, config_path)
    torch.distributions.Distribution.set_default_validate_args(False)  # per-step argument checks: pure overhead here
    cls = ALGOS[algo]
    start_step, checkpoint, loaded = 0, None, None
    if resume:  # go on from the newest save that loads: the finished policy, else the newest checkpoint
        saves = run_saves(run_dir, trust_zip)
        summary = read_summary(run_dir) if saves and saves[0].parent == run_dir else None
        start_step, checkpoint, loaded = newest_loadable(cls, saves, trust_zip)
        if isinstance(loaded, dict) and loaded["spec"].get("config") is not None:
            refuse_other_settings(run_dir, config, loaded["spec"]["config"], checkpoint)
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
