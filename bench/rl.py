"""Benchmark of model-based RL: what the surrogate saves, and how fast PPO runs on it. One process.

    python bench/rl.py                     # about 2 minutes on 2 CPU cores (two full 240,000-step PPO runs)
    python bench/rl.py --steps 40000       # shorter: both PPO set-ups over 40,000 steps, extrapolated
    python bench/rl.py --ablation --seeds 0,1,2   # what each change from the original set-up does (about 12 min)

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
3. with --ablation: the original set-up, the default, and each of the default's three changes
   alone (8 batched environments; scaled observations; gamma 0.9), over --seeds, as the mean share
   of the exact optimum with a 95% t interval over seeds. Episodes terminate in all of them, as
   the original's (--episode-end truncate to compare).
The surrogate is the authors' released one when it is found beside this checkout (its optimum is
the threshold policy PPO is known to learn), else the shipped reward_predictor.pth (envs.PAPER_RSM).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# light modules only before the arguments are parsed; torch, Stable-Baselines3 and the model after
from layersplit import cli, envs  # noqa: E402
from layersplit.cli import non_negative_int, positive_int  # noqa: E402
# the project's defaults: the original's budget, n_steps and batch, and this project's copies and discount
from train_rsm import BATCH, EVAL_EPISODES, EVAL_SEED, GAMMA, N_ENVS, ROLLOUT, TOTAL_TIMESTEPS  # noqa: E402
from train_rsm import hyperparameters  # noqa: E402

AUTHORS_RSM = ROOT.parent / "shared" / "reference" / "authors_reward_predictor.pth"  # if present
LLM_STEPS = 5  # LLM environment steps timed (after one reset)
SURROGATE_STEPS = 20_000  # surrogate environment steps timed
# both set-ups run TOTAL_TIMESTEPS (the original's budget) unless --steps says less, and the times are
# extrapolated to it; each final policy plays the same EVAL_EPISODES episodes from resets EVAL_SEED, +1, ...
SEED = 0  # environment resets, the timed actions and the PPO runs (--seed)
ABLATION_SEEDS = "0,1,2"  # training seeds of the ablation (--seeds)


def time_llm_step(tokens: int, seed: int) -> float:
    from layersplit.data import load_text, tokenize
    from layersplit.models import EMBEDDED_MODEL, load_model

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
    from layersplit.training import PaperVecEnv

    env = gym.make("LayerSplit-Paper-v0", rsm_path=rsm)
    env.reset(seed=seed)
    actions = np.random.default_rng(seed).integers(9, size=SURROGATE_STEPS)
    start = time.perf_counter()
    for a in actions:
        if env.step(int(a))[3]:
            env.reset()
    single = (time.perf_counter() - start) / SURROGATE_STEPS
    vec = PaperVecEnv(N_ENVS, rsm_path=rsm)
    vec.seed(seed)
    vec.reset()
    batches = actions[: SURROGATE_STEPS - SURROGATE_STEPS % N_ENVS].reshape(-1, N_ENVS)
    start = time.perf_counter()
    for a in batches:
        vec.step(a)
    return single, (time.perf_counter() - start) / batches.size


# set-up name -> (environments, observations scaled, gamma); the first has the original's settings
SETUPS = {"original: 1 env, raw obs., gamma .99": (1, False, 0.99),
          f"default: {N_ENVS} batched, scaled, {GAMMA:g}": (N_ENVS, True, GAMMA),
          f"only {N_ENVS} batched envs": (N_ENVS, False, 0.99),
          "only scaled observations": (1, True, 0.99),
          f"only gamma {GAMMA:g}": (1, False, GAMMA)}


def ppo_run(rsm: Path, steps: int, setup: tuple, folder: Path, seed: int, episode_end: str = envs.EPISODE_END) -> dict:
    """PPO with one of SETUPS (ROLLOUT steps per update over all environments, minibatch BATCH); the
    summary with the final policy's mean return on the EVAL_EPISODES evaluation episodes."""
    import torch

    from layersplit import policies, training

    torch.set_num_threads(1)
    n_envs, scaled, gamma = setup
    params = hyperparameters("ppo", n_envs, ROLLOUT, BATCH, gamma=gamma)
    model, summary = training.train("LayerSplit-Paper-v0", "ppo", folder, steps, seed, n_envs, params,
                                    {"rsm_path": rsm, "episode_end": episode_end}, progress=False,
                                    batched=n_envs > 1, scale_observations=scaled)
    env = gym.make("LayerSplit-Paper-v0", rsm_path=rsm)
    return {**summary, "return": policies.evaluate(env, policies.learned(model), EVAL_EPISODES, seed=EVAL_SEED).mean}


def optimum_return(rsm: Path) -> float:
    """The exact optimum's mean return on the same evaluation episodes (one DP plan per episode)."""
    from layersplit import policies

    env = gym.make("LayerSplit-Paper-v0", rsm_path=rsm)
    return policies.evaluate(env, policies.baseline("optimum", env.unwrapped), EVAL_EPISODES, seed=EVAL_SEED).mean


def main(argv=None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--steps", type=positive_int, default=TOTAL_TIMESTEPS, help="PPO steps per set-up")
    p.add_argument("--llm-tokens", type=positive_int, default=envs.LLM_TOKENS, help="tokens per LLM step")
    p.add_argument("--seed", type=non_negative_int, default=SEED, help="seed of the resets, the timed actions and the PPO runs")
    p.add_argument("--rsm", type=Path, help="surrogate (default: the authors' if found, else the shipped envs.PAPER_RSM)")
    p.add_argument("--ablation", action="store_true", help="only part 3: every set-up over --seeds")
    p.add_argument("--seeds", default=ABLATION_SEEDS, help="training seeds of the ablation")
    p.add_argument("--episode-end", default=envs.EPISODE_END, choices=envs.EPISODE_ENDS,
                   help="episode end in the ablation: terminate is the original's")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: give comma-separated integers, like 0,1,2")
    if args.rsm is not None and not args.rsm.is_file():
        p.error(f"--rsm {args.rsm}: no such file")
    return cli.run_main("bench/rl.py", lambda: run(args, seeds))


def run(args, seeds: list[int]) -> int:
    import torch

    from layersplit.models import keep_freed_memory

    keep_freed_memory()
    rsm = args.rsm or (AUTHORS_RSM if AUTHORS_RSM.exists() else envs.PAPER_RSM)
    print(f"surrogate: {rsm}\n")
    if args.ablation:
        return ablation(rsm, args.steps, seeds, args.episode_end)

    llm = time_llm_step(args.llm_tokens, args.seed)
    single, batched = time_surrogate_steps(rsm, args.seed)
    print(f"1. one environment step ({torch.get_num_threads()} torch threads for the LLM)")
    print(f"   real LLM ({args.llm_tokens} tokens)      {llm * 1e3:10.1f} ms")
    print(f"   surrogate, single env          {single * 1e6:10.1f} us   LLM / surrogate = {llm / single:,.0f}x")
    print(f"   surrogate, batched (per copy)  {batched * 1e6:10.1f} us   LLM / surrogate = {llm / batched:,.0f}x")
    print(f"   {TOTAL_TIMESTEPS:,} steps of the LLM environment: {llm * TOTAL_TIMESTEPS / 86400:.1f} days (environment alone)\n")

    with tempfile.TemporaryDirectory() as tmp:
        setups = list(SETUPS.values())
        original = ppo_run(rsm, args.steps, setups[0], Path(tmp) / "original", args.seed)
        fast = ppo_run(rsm, args.steps, setups[1], Path(tmp) / "fast", args.seed)
    optimum = optimum_return(rsm)
    print(f"2. PPO on LayerSplit-Paper-v0, n_steps {ROLLOUT}, batch {BATCH}, {args.steps:,} steps each, one torch thread")
    print(f"   {'set-up':38s}{'steps/s':>9s}{'240k run':>11s}{'return':>9s}{'of optimum':>12s}")
    for name, r in zip(SETUPS, (original, fast)):
        print(f"   {name:38s}{r['steps_per_s']:9.0f}{TOTAL_TIMESTEPS / r['steps_per_s']:10.1f}s{r['return']:9.3f}"
              f"{100 * r['return'] / optimum:11.2f}%")
    print(f"   speed-up {fast['steps_per_s'] / original['steps_per_s']:.2f}x; the 240k run in "
          f"{TOTAL_TIMESTEPS / fast['steps_per_s']:.0f} s (target 120 s; the paper reported 7.7 min)")
    print(f"   LLM-in-the-loop 240k run / surrogate 240k run = {llm * TOTAL_TIMESTEPS / (TOTAL_TIMESTEPS / fast['steps_per_s']):,.0f}x")
    return 0


def ablation(rsm: Path, steps: int, seeds: list[int], episode_end: str) -> int:
    from layersplit import policies

    optimum = optimum_return(rsm)
    print(f"3. PPO set-ups, {steps:,} steps, episodes end by {episode_end}; share of the exact optimum "
          f"({optimum:.4f}) on {EVAL_EPISODES} evaluation episodes, 95% interval over seeds {seeds}")
    for name, setup in SETUPS.items():
        with tempfile.TemporaryDirectory() as tmp:
            shares = [100 * ppo_run(rsm, steps, setup, Path(tmp) / str(seed), seed, episode_end)["return"] / optimum
                      for seed in seeds]
        mean, half = policies.confidence_interval(shares)
        print(f"   {name:38s}{mean:8.2f}% +- {half:5.2f}   per seed: {', '.join(f'{s:.2f}' for s in shares)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
