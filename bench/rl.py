"""Benchmark of model-based RL: what the surrogate saves, and how fast PPO runs on it. One process.

    python bench/rl.py                     # about 2 minutes on 2 CPU cores (two full 240,000-step PPO runs)
    python bench/rl.py --steps 40000       # shorter: both PPO set-ups over 40,000 steps, extrapolated

Prints, measured here in one run:
1. one environment step with the real LLM in the loop (LayerSplit-LLM-v0, SmolLM2-135M, the
   step's perplexity over LLM_TOKENS tokens) against one step of the surrogate environment, single
   (gymnasium.make with its wrappers) and batched (PaperVecEnv, per copy); the ratio is the
   paper's headline (about 24 days against 7.7 minutes);
2. PPO on LayerSplit-Paper-v0 with the original's hyperparameters (n_steps 400, batch 100), as
   the original ran it (one environment, per-step wrappers) against this project's default
   (8 batched copies, the same 400 steps per update, one torch thread, observations scaled to
   [-1, 1] inside the policy, gamma 0.9): steps per second, the
   time of the 240,000-step run, and the mean return of each final policy as a share of the
   exact optimum on the same 200 evaluation episodes. The target: the 240,000-step run in
   2 minutes or less with the same final return.
The surrogate is the authors' released one when it is found beside this checkout (its optimum is
the threshold policy PPO is known to learn), else the shipped reward_predictor.pth.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from layersplit import envs, policies, training  # noqa: E402
from layersplit.data import load_text, tokenize  # noqa: E402
from layersplit.models import EMBEDDED_MODEL, keep_freed_memory, load_model  # noqa: E402
from train_rsm import GAMMA, hyperparameters  # noqa: E402  (the project's defaults)

AUTHORS_RSM = ROOT.parent / "shared" / "reference" / "authors_reward_predictor.pth"  # if present
LLM_STEPS = 5  # LLM environment steps timed (after one reset)
SURROGATE_STEPS = 20_000  # surrogate environment steps timed
PPO_STEPS = 240_000  # the original's budget; both set-ups run it in full unless --steps says less
FULL_RUN = 240_000  # what the times are extrapolated to
EVAL_EPISODES = 200  # evaluation episodes of each final policy (the same for both)
EVAL_SEED = 10_000  # the evaluation episodes start from resets seeded EVAL_SEED, EVAL_SEED + 1, ...
N_ENVS = 8  # batched copies of the fast set-up
SEED = 0  # environment resets, the timed actions and the PPO runs (--seed)


def time_llm_step(tokens: int, seed: int) -> float:
    model, tokenizer = load_model(EMBEDDED_MODEL)
    ids = tokenize(tokenizer, load_text("wiki"), tokens)
    env = gym.make("LayerSplit-LLM-v0", model=model, token_ids=ids, tokens=tokens, context_length=tokens)
    env.reset(seed=seed)
    start = time.perf_counter()
    for step in range(LLM_STEPS):
        env.step(step % 10)
    env.close()
    return (time.perf_counter() - start) / LLM_STEPS


def time_surrogate_steps(rsm: Path, seed: int) -> tuple[float, float]:
    env = gym.make("LayerSplit-Paper-v0", rsm_path=rsm)
    env.reset(seed=seed)
    actions = np.random.default_rng(seed).integers(9, size=SURROGATE_STEPS)
    start = time.perf_counter()
    for a in actions:
        if env.step(int(a))[3]:
            env.reset()
    single = (time.perf_counter() - start) / SURROGATE_STEPS
    vec = envs.PaperVecEnv(N_ENVS, rsm_path=rsm)
    vec.seed(seed)
    vec.reset()
    batches = actions[: SURROGATE_STEPS - SURROGATE_STEPS % N_ENVS].reshape(-1, N_ENVS)
    start = time.perf_counter()
    for a in batches:
        vec.step(a)
    return single, (time.perf_counter() - start) / batches.size


def ppo_run(rsm: Path, steps: int, original: bool, folder: Path, seed: int) -> dict:
    """The original set-up (one environment, raw observations, gamma 0.99) or this project's default;
    the summary with the final policy's mean return on the EVAL_EPISODES evaluation episodes."""
    torch.set_num_threads(1)
    n_envs, batched, scaled = (1, False, False) if original else (N_ENVS, True, True)
    params = hyperparameters("ppo", n_envs, 400, 100, gamma=0.99 if original else GAMMA)
    model, summary = training.train("LayerSplit-Paper-v0", "ppo", folder, steps, seed, n_envs, params,
                                    {"rsm_path": rsm}, progress=False, batched=batched,
                                    scale_observations=scaled)
    env = gym.make("LayerSplit-Paper-v0", rsm_path=rsm)
    return {**summary, "return": policies.evaluate(env, policies.learned(model), EVAL_EPISODES, seed=EVAL_SEED).mean}


def optimum_return(rsm: Path) -> float:
    """The exact optimum's mean return on the same evaluation episodes (one DP plan per episode)."""
    env = gym.make("LayerSplit-Paper-v0", rsm_path=rsm)
    return policies.evaluate(env, policies.baseline("optimum", env.unwrapped), EVAL_EPISODES, seed=EVAL_SEED).mean


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=PPO_STEPS, help=f"PPO steps per set-up (default: {PPO_STEPS})")
    p.add_argument("--llm-tokens", type=int, default=envs.LLM_TOKENS, help=f"tokens per LLM step (default: {envs.LLM_TOKENS})")
    p.add_argument("--seed", type=int, default=SEED, help=f"seed (default: {SEED})")
    p.add_argument("--rsm", type=Path, help="surrogate (default: the authors' if found, else reward_predictor.pth)")
    args = p.parse_args()
    keep_freed_memory()
    rsm = args.rsm or (AUTHORS_RSM if AUTHORS_RSM.exists() else ROOT / "reward_predictor.pth")
    print(f"surrogate: {rsm}\n")

    llm = time_llm_step(args.llm_tokens, args.seed)
    single, batched = time_surrogate_steps(rsm, args.seed)
    print(f"1. one environment step ({torch.get_num_threads()} torch threads for the LLM)")
    print(f"   real LLM ({args.llm_tokens} tokens)      {llm * 1e3:10.1f} ms")
    print(f"   surrogate, single env          {single * 1e6:10.1f} us   LLM / surrogate = {llm / single:,.0f}x")
    print(f"   surrogate, batched (per copy)  {batched * 1e6:10.1f} us   LLM / surrogate = {llm / batched:,.0f}x")
    print(f"   {FULL_RUN:,} steps of the LLM environment: {llm * FULL_RUN / 86400:.1f} days (environment alone)\n")

    with tempfile.TemporaryDirectory() as tmp:
        original = ppo_run(rsm, args.steps, True, Path(tmp) / "original", args.seed)
        fast = ppo_run(rsm, args.steps, False, Path(tmp) / "fast", args.seed)
    optimum = optimum_return(rsm)
    print(f"2. PPO on LayerSplit-Paper-v0, n_steps 400, batch 100, {args.steps:,} steps each, one torch thread")
    print(f"   {'set-up':38s}{'steps/s':>9s}{'240k run':>11s}{'return':>9s}{'of optimum':>12s}")
    for name, r in (("original: 1 env, raw obs., gamma .99", original), (f"default: {N_ENVS} batched, scaled, .9", fast)):
        print(f"   {name:38s}{r['steps_per_s']:9.0f}{FULL_RUN / r['steps_per_s']:10.1f}s{r['return']:9.3f}"
              f"{100 * r['return'] / optimum:11.2f}%")
    print(f"   speed-up {fast['steps_per_s'] / original['steps_per_s']:.2f}x; the 240k run in "
          f"{FULL_RUN / fast['steps_per_s']:.0f} s (target 120 s; the paper reported 7.7 min)")
    print(f"   LLM-in-the-loop 240k run / surrogate 240k run = {llm * FULL_RUN / (FULL_RUN / fast['steps_per_s']):,.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
