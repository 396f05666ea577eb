"""Benchmark of model-based RL: what the surrogate saves, and how fast PPO runs on it. One process.

    python bench/rl.py                     # about 2 minutes on 2 CPU cores (two full 240,000-step PPO runs)
    python bench/rl.py --steps 40000       # shorter: both PPO set-ups over 40,000 steps, extrapolated
    python bench/rl.py --ablation          # what each change from the original set-up does, both surrogates
                                           # (30 runs, about 30 min; resumes; writes results/rl_ablation.json)

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
   alone (8 batched environments; scaled observations; gamma 0.9), over --seeds, on each surrogate
   of --surrogates. For every run: its share of the exact optimum on the EVAL_EPISODES evaluation
   episodes; its gap to the best static split and to the original set-up of the same seed, paired
   on those episodes (95% t intervals over seeds); and its policy map, the action at every
   (p, split) of a grid, with whether it depends on p at all (channel-blind when it never does).
   Episodes terminate in all of them, as the original's (--episode-end truncate to compare).
   Each finished run is saved to --output at once; a rerun skips the runs already there.
Parts 1-2 use the authors' released surrogate when it is found beside this checkout (its optimum is
the threshold policy PPO is known to learn), else the shipped reward_predictor.pth (envs.PAPER_RSM).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

# light modules only before the arguments are parsed; torch, Stable-Baselines3 and the model after
from layersplit import cli, envs, paper
from layersplit.cli import positive_int

# the project's defaults: the original's budget, n_steps and batch, and this project's copies and discount
from train_rsm import BATCH, EVAL_EPISODES, EVAL_SEED, GAMMA, N_ENVS, ROLLOUT, TOTAL_TIMESTEPS
from train_rsm import hyperparameters

ROOT = Path(__file__).resolve().parents[1]

AUTHORS_RSM = ROOT.parent / "shared" / "reference" / "authors_reward_predictor.pth"  # if present
LLM_STEPS = 5  # LLM environment steps timed (after one reset)
SURROGATE_STEPS = 20_000  # surrogate environment steps timed
# both set-ups run TOTAL_TIMESTEPS (the original's budget) unless --steps says less, and the times are
# extrapolated to it; each final policy plays the same EVAL_EPISODES episodes from resets EVAL_SEED, +1, ...
SEED = 0  # environment resets, the timed actions and the PPO runs (--seed)
ABLATION_SEEDS = paper.SEEDS  # training seeds of the ablation (--seeds)
ABLATION_SURROGATES = "authors,shipped"  # the ablation's surrogates: the authors' (Llama-2-7B) and envs.PAPER_RSM
ABLATION_OUTPUT = ROOT / "results" / "rl_ablation.json"  # the ablation's record (--output)
COST_OUTPUT = ROOT / "results" / "rl_cost.json"  # parts 1-2's figures, for the README's cost claim (--cost-output)
MAP_P = np.round(np.linspace(0.01, 0.3, 12), 4)  # p values of the ablation's policy map (x splits 1..10)


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
SETUPS = {
    "original: 1 env, raw obs., gamma .99": (1, False, 0.99),
    f"default: {N_ENVS} batched, scaled, {GAMMA:g}": (N_ENVS, True, GAMMA),
    f"only {N_ENVS} batched envs": (N_ENVS, False, 0.99),
    "only scaled observations": (1, True, 0.99),
    f"only gamma {GAMMA:g}": (1, False, GAMMA),
}


def ppo_run(
    rsm: Path,
    steps: int,
    setup: tuple,
    folder: Path,
    seed: int,
    episode_end: str = envs.EPISODE_END,
    keep_model: bool = False,
) -> dict:
    """PPO with one of SETUPS (ROLLOUT steps per update over all environments, minibatch BATCH); the
    summary with the final policy's mean return on the EVAL_EPISODES evaluation episodes (and its
    per-episode returns, final splits and, with keep_model, the model)."""
    from layersplit import policies, training

    training.limit_threads(1)
    n_envs, scaled, gamma = setup
    params = hyperparameters("ppo", n_envs, ROLLOUT, BATCH, gamma=gamma)
    model, summary = training.train(
        "LayerSplit-Paper-v0",
        "ppo",
        folder,
        steps,
        seed,
        n_envs,
        params,
        {"rsm_path": rsm, "episode_end": episode_end},
        progress=False,
        batched=n_envs > 1,
        scale_observations=scaled,
    )
    env = gym.make("LayerSplit-Paper-v0", rsm_path=rsm, episode_end=episode_end)
    result = policies.evaluate(env, policies.learned(model), EVAL_EPISODES, seed=EVAL_SEED)
    return {
        **summary,
        "return": result.mean,
        "returns": result.returns.tolist(),
        "final_splits": [chosen[-1] for chosen in result.splits],
        **({"model": model} if keep_model else {}),
    }


def optimum_return(rsm: Path) -> float:
    """The exact optimum's mean return on the same evaluation episodes (one DP plan per episode)."""
    from layersplit import policies

    env = gym.make("LayerSplit-Paper-v0", rsm_path=rsm)
    return policies.evaluate(env, policies.baseline("optimum", env.unwrapped), EVAL_EPISODES, seed=EVAL_SEED).mean


def policy_map(model) -> dict:
    """The deterministic action at every (p in MAP_P, split 1..10) and whether it ever depends on p."""
    actions = {
        str(split): [int(model.predict(np.array([p, split], np.float32), deterministic=True)[0]) for p in MAP_P]
        for split in range(envs.SPLIT_MIN, envs.SPLIT_MAX + 1)
    }
    return {
        "p": MAP_P.tolist(),
        "actions": actions,
        "channel_blind": all(len(set(row)) == 1 for row in actions.values()),
    }


def main(argv=None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--steps", type=positive_int, default=TOTAL_TIMESTEPS, help="PPO steps per set-up")
    p.add_argument("--llm-tokens", type=positive_int, default=envs.LLM_TOKENS, help="tokens per LLM step")
    p.add_argument("--seed", type=cli.seed, default=SEED, help="seed of the resets, the timed actions and the PPO runs")
    p.add_argument(
        "--rsm", type=Path, help="surrogate (default: the authors' if found, else the shipped envs.PAPER_RSM)"
    )
    p.add_argument("--ablation", action="store_true", help="only part 3: every set-up over --seeds")
    p.add_argument("--seeds", type=cli.seeds, default=ABLATION_SEEDS, help="training seeds of the ablation")
    p.add_argument(
        "--episode-end",
        default=envs.EPISODE_END,
        choices=envs.EPISODE_ENDS,
        help="episode end in the ablation: terminate is the original's",
    )
    p.add_argument(
        "--surrogates",
        default=ABLATION_SURROGATES,
        help="the ablation's surrogates: authors (skipped with a note when absent), shipped, or a .pth path",
    )
    p.add_argument(
        "--output",
        type=cli.writable_file,
        default=ABLATION_OUTPUT,
        help="the ablation's JSON (resumed: runs already in it are skipped)",
    )
    p.add_argument(
        "--cost-output",
        type=cli.writable_file,
        default=COST_OUTPUT,
        help="parts 1-2: their figures as JSON (what the README's cost claim is generated from)",
    )
    args = p.parse_args(argv)
    seeds = args.seeds  # cli.seeds: integers in 0..2**32-1, what numpy's and SB3's seeding accept
    if Path(args.output).absolute() == Path(args.cost_output).absolute():  # the cost would replace the record
        p.error(f"--cost-output {args.cost_output} is also --output: give the cost figures their own file")
    if args.rsm is not None and not args.rsm.is_file():
        p.error(f"--rsm {args.rsm}: no such file")
    surrogates = {}
    for name in filter(None, (s.strip() for s in args.surrogates.split(","))):
        path = {"authors": AUTHORS_RSM, "shipped": envs.PAPER_RSM}.get(name, Path(name))
        if name == "authors" and not path.is_file():
            print(f"note: the authors' surrogate is not at {path}; the ablation runs without it", file=sys.stderr)
        elif not path.is_file():
            p.error(f"--surrogates: {name}: no such file (authors, shipped or a .pth path)")
        else:
            surrogates[name] = path
    if args.ablation and not surrogates:
        p.error("--surrogates: none found")
    if args.ablation:
        try:  # a record of other settings, or not one at all, is refused before any work
            ablation_record(args.output, args.steps, seeds, args.episode_end)
        except cli.UserError as e:
            p.error(str(e))
    return cli.run_main("bench/rl.py", lambda: run(args, seeds, surrogates))


def run(args, seeds: list[int], surrogates: dict) -> int:
    import torch

    from layersplit.models import keep_freed_memory

    keep_freed_memory()
    if args.ablation:
        return ablation(surrogates, args.steps, seeds, args.episode_end, args.output)
    rsm = args.rsm or (AUTHORS_RSM if AUTHORS_RSM.exists() else envs.PAPER_RSM)
    print(f"surrogate: {rsm}\n")
    load = os.getloadavg()[0]  # the machine's load when the clock starts: the figures are measured under it

    llm = time_llm_step(args.llm_tokens, args.seed)
    llm_threads = torch.get_num_threads()  # read now: the PPO runs below set one thread
    single, batched = time_surrogate_steps(rsm, args.seed)
    print(f"1. one environment step ({llm_threads} torch threads for the LLM)")
    print(f"   real LLM ({args.llm_tokens} tokens)      {llm * 1e3:10.1f} ms")
    print(f"   surrogate, single env          {single * 1e6:10.1f} us   LLM / surrogate = {llm / single:,.0f}x")
    print(f"   surrogate, batched (per copy)  {batched * 1e6:10.1f} us   LLM / surrogate = {llm / batched:,.0f}x")
    print(
        f"   {TOTAL_TIMESTEPS:,} steps of the LLM environment: "
        f"{llm * TOTAL_TIMESTEPS / 86400:.1f} days (environment alone)\n"
    )

    with tempfile.TemporaryDirectory() as tmp:
        setups = list(SETUPS.values())
        original = ppo_run(rsm, args.steps, setups[0], Path(tmp) / "original", args.seed)
        fast = ppo_run(rsm, args.steps, setups[1], Path(tmp) / "fast", args.seed)
    optimum = optimum_return(rsm)
    print(
        f"2. PPO on LayerSplit-Paper-v0, n_steps {ROLLOUT}, batch {BATCH}, {args.steps:,} steps each, one torch thread"
    )
    print(f"   {'set-up':38s}{'steps/s':>9s}{'240k run':>11s}{'return':>9s}{'of optimum':>12s}")
    for name, r in zip(SETUPS, (original, fast)):
        print(
            f"   {name:38s}{r['steps_per_s']:9.0f}{TOTAL_TIMESTEPS / r['steps_per_s']:10.1f}s{r['return']:9.3f}"
            f"{100 * r['return'] / optimum:11.2f}%"
        )
    print(
        f"   speed-up {fast['steps_per_s'] / original['steps_per_s']:.2f}x; the 240k run in "
        f"{TOTAL_TIMESTEPS / fast['steps_per_s']:.0f} s (target 120 s; the paper reported 7.7 min)"
    )
    print(
        f"   LLM-in-the-loop 240k run / surrogate 240k run = "
        f"{llm * TOTAL_TIMESTEPS / (TOTAL_TIMESTEPS / fast['steps_per_s']):,.0f}x"
    )
    cost = {
        "llm_tokens": args.llm_tokens,
        "llm_step_s": llm,
        "surrogate_step_s": single,
        "surrogate_batched_step_s": batched,
        "llm_over_surrogate_step": llm / single,
        "torch_threads_llm": llm_threads,
        "load_average_at_start": load,
        "total_timesteps": TOTAL_TIMESTEPS,
        "steps_run": args.steps,
        "surrogate": Path(rsm).name,
        "llm_run_days": llm * TOTAL_TIMESTEPS / 86400,
        "ppo": {
            name: {
                "steps_per_s": r["steps_per_s"],
                "run_s": TOTAL_TIMESTEPS / r["steps_per_s"],
                "share_of_optimum": r["return"] / optimum,
            }
            for name, r in zip(SETUPS, (original, fast))
        },
        "llm_run_over_surrogate_run": llm * fast["steps_per_s"],
    }
    cli.write_text_atomic(args.cost_output, json.dumps(cost, indent=1) + "\n")
    print(f"-> {args.cost_output}")
    return 0


def ablation_record(path: Path, steps: int, seeds: list[int], episode_end: str) -> dict:
    """The ablation's JSON so far ({} for none); refused when it was made with other settings."""
    settings = {"steps": steps, "episode_end": episode_end, "eval_episodes": EVAL_EPISODES, "eval_seed": EVAL_SEED}
    if not Path(path).exists():
        return {"settings": settings, "surrogates": {}}
    try:
        record = json.loads(Path(path).read_bytes())
        if record["settings"] != settings:
            raise cli.UserError(f"{path} was made with other settings ({record['settings']}): use another --output")
        record["surrogates"]
    except (ValueError, KeyError, TypeError):
        raise cli.UserError(f"{path} is not an ablation record of bench/rl.py: use another --output") from None
    return record


def _save(path: Path, record: dict) -> None:
    cli.write_text_atomic(path, json.dumps(record, indent=1) + "\n")


def ablation(surrogates: dict, steps: int, seeds: list[int], episode_end: str, output: Path) -> int:
    """Every set-up of SETUPS x seeds on every surrogate, saved run by run; then the summary."""
    from layersplit import policies

    record = ablation_record(output, steps, seeds, episode_end)
    for name, rsm in surrogates.items():
        entry = record["surrogates"].setdefault(name, {"rsm": rsm.name, "runs": {}})
        env = gym.make("LayerSplit-Paper-v0", rsm_path=rsm, episode_end=episode_end)
        if "optimum" not in entry:
            entry["optimum"] = policies.evaluate(
                env, policies.baseline("optimum", env.unwrapped), EVAL_EPISODES, seed=EVAL_SEED
            ).returns.tolist()
            best = policies.BestStatic(env.unwrapped)
            entry["best_static"] = {
                "choice": best.choice,
                "returns": policies.evaluate(env, best, EVAL_EPISODES, seed=EVAL_SEED).returns.tolist(),
            }
            _save(output, record)
        for setup_name, setup in SETUPS.items():
            for seed in seeds:
                key = f"{setup_name} | seed {seed}"
                if key in entry["runs"]:
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    r = ppo_run(rsm, steps, setup, Path(tmp) / "run", seed, episode_end, keep_model=True)
                entry["runs"][key] = {
                    "setup": setup_name,
                    "seed": seed,
                    "returns": r["returns"],
                    "final_splits": r["final_splits"],
                    "wall_s": r["wall_s"],
                    "policy_map": policy_map(r["model"]),
                }
                _save(output, record)
                print(
                    f"  {name}: {key}: {100 * np.mean(r['returns']) / np.mean(entry['optimum']):.2f}% of the optimum",
                    flush=True,
                )
    record["summary"] = summarise_ablation(record, seeds)  # every surrogate's, those of earlier runs too
    _save(output, record)
    print_ablation(record)
    print(f"-> {output}")
    return 0


def summarise_ablation(record: dict, seeds: list[int]) -> dict:
    """Per surrogate of the record and set-up: the share of the optimum (each seed's return over the optimum
    on the same episodes) and the gaps to best static and to the original set-up, paired by episode and
    seed, with 95% t intervals over seeds; whether the policies are channel-blind and where their
    episodes end. Runs of other seeds stay in the record, unsummarised."""
    from layersplit import policies

    out = {}
    for name, entry in record["surrogates"].items():
        optimum, best = np.mean(entry["optimum"]), np.mean(entry["best_static"]["returns"])
        by_setup = {}
        for run in entry["runs"].values():
            if run["seed"] in seeds:
                by_setup.setdefault(run["setup"], {})[run["seed"]] = run
        original = by_setup.get(next(iter(SETUPS)), {})
        table = {}
        for setup_name, runs in by_setup.items():
            returns = {seed: np.mean(run["returns"]) for seed, run in runs.items()}
            share = policies.confidence_interval([100 * r / optimum for r in returns.values()])
            gap_best = policies.confidence_interval([r - best for r in returns.values()])
            common = sorted(returns.keys() & original.keys())
            gap_original = policies.confidence_interval([returns[s] - np.mean(original[s]["returns"]) for s in common])
            finals = sorted({f for run in runs.values() for f in run["final_splits"]})
            table[setup_name] = {
                "seeds": sorted(runs),
                "share_of_optimum": share[0],
                "share_ci95": share[1],
                "share_per_seed": [100 * returns[s] / optimum for s in sorted(runs)],
                "minus_best_static": gap_best[0],
                "minus_best_static_ci95": gap_best[1],
                "minus_original": gap_original[0],
                "minus_original_ci95": gap_original[1],
                "channel_blind_seeds": sum(run["policy_map"]["channel_blind"] for run in runs.values()),
                "final_splits": finals,
            }
        out[name] = {
            "optimum": optimum,
            "best_static": entry["best_static"]["choice"],
            "best_static_share": 100 * best / optimum,
            "setups": table,
        }
    return out


def print_ablation(record: dict) -> None:
    settings = record["settings"]
    print(
        f"3. PPO set-ups, {settings['steps']:,} steps, episodes end by {settings['episode_end']}; on "
        f"{settings['eval_episodes']} evaluation episodes; 95% t intervals over seeds"
    )
    for name, s in record["summary"].items():
        print(f"  surrogate {name}: best static ({s['best_static']}) {s['best_static_share']:.2f}% of the optimum")
        print(
            f"    {'set-up':34s}{'% of optimum':>18s}{'- best static':>20s}{'- original':>20s}  channel-blind  ends at"
        )
        for setup_name, t in s["setups"].items():
            print(
                f"    {setup_name:34s}{t['share_of_optimum']:10.2f} +- {t['share_ci95']:4.2f}"
                f"{t['minus_best_static']:+12.4f} +- {t['minus_best_static_ci95']:.4f}"
                f"{t['minus_original']:+12.4f} +- {t['minus_original_ci95']:.4f}"
                f"   {t['channel_blind_seeds']}/{len(t['seeds'])}        {t['final_splits']}"
            )


if __name__ == "__main__":
    sys.exit(main())
