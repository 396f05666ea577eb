"""PPO with the real LLM in the loop (LayerSplit-LLM-v0): the costly baseline the surrogate replaces.

Every environment step measures the perplexity of the split model on the real text, so a step
costs a forward pass of the LLM over TOKENS tokens; train_rsm.py does the same on the surrogate.

    python train.py                                   # the original's settings: 6,000 steps, n_steps 100, batch 25
    python train.py --total-timesteps 200 --tokens 128 --eval-episodes 2      # a short run that measures the cost
    python train.py --model meta-llama/Llama-2-7b-hf --dataset wikitext-2 --device cuda --tokens 1024
    python train.py --eval-only                       # evaluate only (the LLM-trained policy if it is finished)
    tensorboard --logdir runs

The run goes to runs/LayerSplit-LLM-v0/ppo_s<seed>/ (policy, progress.csv with time/step_s, the
wall time per environment step, TensorBoard events, checkpoints); an interrupted run resumes from
its newest checkpoint when the same command is run again (a finished run is only evaluated again).
The summary goes to results/rl_llm_ppo.json: the measured seconds per step, and the paper's own
comparison: the policy learned here with the LLM in the loop against the PPO policies learned on
the surrogate (train_rsm.py train, --compare), the paper's fixed split, the best static split and
random choices, all on the same episodes of the real LLM, each with its gap to the fixed and to
the best static split paired by episode. The evaluation's measurements are kept in
EVAL_MEASUREMENTS (one line each), so an interrupted evaluation resumes and policies that reach the
same state share a measurement. Every constant below can be overridden from the command line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# light modules only before the arguments are parsed (--help answers at once); torch, the model and
# Stable-Baselines3 are imported once they are
from layersplit import UserError, cli, envs
from layersplit.cli import non_negative_int, positive_int, writable_dir, writable_file
from layersplit.models import EMBEDDED_MODEL

MODEL = EMBEDDED_MODEL  # the LLM in the loop: the embedded SmolLM2-135M, a local folder or a Hugging Face id
DATASET = "wiki"  # the text its perplexity is measured on (embedded Wikipedia test split)
PROTECT = 0  # elements per token over the protected path (add_noise.py --protect K; 0: the original's link)
SEED = 0  # seeds the agent, the environment's start states and the link's noise draws
TOTAL_TIMESTEPS = 6_000  # the original's budget
N_STEPS = 100  # PPO steps per update (the original's n_steps, one environment)
BATCH = 25  # PPO minibatch (the original's batch_size)
CHECKPOINT_EVERY = 100  # save every update: a step is expensive, a lost update is not
EVAL_EPISODES = 100  # evaluation episodes per policy (6 perplexity measurements each), the same for every policy
EVAL_SEED = 10_000  # evaluation episodes start from resets seeded EVAL_SEED + i (training starts use 0, 1, ...)
BEST_STATIC_EPISODES = 5  # training starts on which best-static picks its split (x 10 splits x 6 measurements)
# PPO policies trained on the surrogate (train_rsm.py train --seeds 0,1,2), evaluated here on the real LLM
COMPARE = ",".join(f"runs/LayerSplit-Paper-v0/ppo_s{seed}" for seed in (0, 1, 2))
RUNS_DIR = "runs/LayerSplit-LLM-v0"  # where the run folder goes
RESULTS = "results/rl_llm_ppo.json"  # the summary
EVAL_MEASUREMENTS = "eval_measurements.jsonl"  # the evaluation's perplexities, in the run's parent folder (resumable)
TORCH_THREADS = 0  # 0: torch's default (the LLM forward uses every core)
# tokens per step and how an episode ends: envs.LLM_TOKENS and envs.EPISODE_END (--tokens, --episode-end)


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_run_arguments(
        p,
        model=MODEL,
        seed=SEED,
        seed_help="seeds the agent, the environment's start states and the link's noise draws",
    )
    p.add_argument("--dataset", default=DATASET, help="evaluation text: wiki (embedded), wikitext-2 or a text file")
    p.add_argument("--tokens", type=positive_int, default=envs.LLM_TOKENS, help="tokens scored per step")
    p.add_argument(
        "--protect",
        type=non_negative_int,
        default=PROTECT,
        metavar="K",
        help="also send each token's K largest-magnitude elements over the protected path (they always "
        "arrive; add_noise.py --protect)",
    )
    p.add_argument("--total-timesteps", type=positive_int, default=TOTAL_TIMESTEPS, help="environment steps")
    p.add_argument("--n-steps", type=positive_int, default=N_STEPS, help="PPO steps per update")
    p.add_argument("--batch", type=positive_int, default=BATCH, help="PPO minibatch")
    p.add_argument(
        "--checkpoint-every", type=non_negative_int, default=CHECKPOINT_EVERY, help="steps between checkpoints"
    )
    p.add_argument(
        "--eval-episodes",
        type=non_negative_int,
        default=EVAL_EPISODES,
        help="evaluation episodes per policy, 0 to skip",
    )
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="no training: evaluate (the LLM-trained policy only if its run is finished) into --results",
    )
    p.add_argument(
        "--best-static-episodes",
        type=positive_int,
        default=BEST_STATIC_EPISODES,
        help="training starts on which best-static picks its split",
    )
    p.add_argument(
        "--compare",
        default=COMPARE,
        help="comma-separated LayerSplit-Paper-v0 run folders (PPO trained on the surrogate) whose policies are "
        "evaluated on the same LLM episodes; missing ones are skipped with a note, '' for none",
    )
    p.add_argument(
        "--trust-zip",
        action="store_true",
        help="also read Stable-Baselines3's policy.zip saves (run folders without policy.safetensors): "
        "loading one unpickles it, which can run code stored in it; only for folders you made",
    )
    p.add_argument(
        "--raw-observations",
        action="store_true",
        help="feed the policy raw observations, as the original (otherwise scaled to [-1, 1] by the bounds)",
    )
    p.add_argument(
        "--episode-end",
        default=envs.EPISODE_END,
        choices=envs.EPISODE_ENDS,
        help="how an episode ends after its last step: terminate is the original's",
    )
    p.add_argument("--run-dir", type=writable_dir, default=RUNS_DIR, help="parent folder of the run")
    p.add_argument("--results", type=writable_file, default=RESULTS, help="summary JSON")
    p.add_argument(
        "--torch-threads",
        type=cli.threads,
        default=TORCH_THREADS,
        help="torch threads, 0 for torch's default, at most this machine's CPUs",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)
    if args.tokens < 2:  # the other counts are checked by their types
        p.error("--tokens must be at least 2")
    if args.eval_only and not args.eval_episodes:
        p.error("--eval-only needs --eval-episodes of at least 1")
    # the summary is written beside the run, never over it: the run folder and the measurements are the run's
    results, run_dir = Path(args.results).absolute(), Path(args.run_dir).absolute()
    if results == run_dir / EVAL_MEASUREMENTS or run_dir / f"ppo_s{args.seed}" in results.parents:
        p.error(
            f"--results {args.results} is one of the run's own files (in --run-dir {args.run_dir}): "
            "give the summary another path"
        )
    return args


class Measurements(dict):
    """LLMSplitEnv's measurement memo backed by a JSON-lines file: the settings first, then one
    [link seed, p, split, perplexity] per line, appended as measured (a torn last line is dropped)."""

    def __init__(self, path: Path, settings: dict):
        super().__init__()
        self.path = path
        if path.exists():
            lines = path.read_text().split("\n")
            try:
                found = json.loads(lines[0])
            except ValueError:
                raise UserError(f"{path} is not an evaluation measurement file: move it away") from None
            if found != settings:
                raise UserError(f"{path} holds measurements of other settings ({found}): move it away")
            for line in lines[1:]:
                try:
                    seed, p, split, ppl = json.loads(line)
                except (ValueError, TypeError):
                    continue  # the empty last line, or one cut by a kill
                super().__setitem__((seed, p, split), ppl)
            # rewritten without the torn line (renamed into place: a kill leaves the old file or the new one)
            cli.write_text_atomic(
                path, "\n".join([json.dumps(settings), *(json.dumps([*k, v]) for k, v in self.items())]) + "\n"
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            cli.write_text_atomic(path, json.dumps(settings) + "\n")

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        with self.path.open("a") as f:
            f.write(json.dumps([*key, value]) + "\n")
            f.flush()
            os.fsync(f.fileno())


def compared_policies(folders: str, trust_zip: bool = False) -> dict:
    """name -> policy for each surrogate-trained run folder that exists (a note for each that does not)."""
    from layersplit import policies, run_folders

    found = {}
    for folder in filter(None, (f.strip() for f in folders.split(","))):
        if not (Path(folder) / run_folders.CONFIG_FILE).is_file():
            print(
                f"note: no surrogate-trained run at {folder}; not compared (train it: python train_rsm.py train)",
                file=sys.stderr,
            )
            continue
        if run_folders.run_config(folder)["env"] != "LayerSplit-Paper-v0":
            raise UserError(f"--compare {folder}: not a LayerSplit-Paper-v0 run")
        policy = run_folders.load_policy(folder, trust_zip=trust_zip)
        found[f"surrogate {Path(folder).name}"] = policies.paper_policy_on_llm(policy)
    return found


def evaluate(model, env_kwargs: dict, args, compared: dict) -> dict:
    """The LLM-trained policy (when given), the surrogate-trained ones, fixed, best-static and random on
    the same episodes (resets seeded EVAL_SEED + i): mean return with a 95% t interval over the episodes,
    and the gaps to fixed and to best-static paired by episode (the unit: an episode, with its own start
    and link draws)."""
    import numpy as np

    from layersplit import policies

    settings = {k: str(v) for k, v in env_kwargs.items()}
    measurements = Measurements(Path(args.run_dir) / EVAL_MEASUREMENTS, settings)
    env = envs.make("LayerSplit-LLM-v0", **env_kwargs, measurements=measurements)
    best_static = policies.BestStatic(env.unwrapped, args.best_static_episodes)
    learned = {"learned (LLM in the loop)": policies.learned(model)} if model is not None else {}
    candidates = {
        **learned,
        **compared,
        "fixed": policies.baseline("fixed", env.unwrapped),
        "best-static": best_static,
        "random": policies.baseline("random", env.unwrapped, args.seed),
    }
    returns = {}
    print(
        f"LayerSplit-LLM-v0: mean return over the same {args.eval_episodes} episodes, 95% interval over episodes; "
        "gaps paired by episode"
    )
    for name, policy in candidates.items():
        result = policies.evaluate(env, policy, args.eval_episodes, seed=EVAL_SEED)
        mean, half = policies.confidence_interval(result.returns)
        returns[name] = {"mean": mean, "ci95": half, "per_episode": result.returns.tolist(), "splits": result.splits}
    for name, r in returns.items():
        for other in ("fixed", "best-static"):
            gap, gap_half = policies.confidence_interval(np.subtract(r["per_episode"], returns[other]["per_episode"]))
            r[f"minus_{other.replace('-', '_')}"], r[f"minus_{other.replace('-', '_')}_ci95"] = gap, gap_half
        label = f"best-static ({best_static.choice})" if name == "best-static" else name
        print(
            f"  {label:28s} {r['mean']:9.3f} +- {r['ci95']:7.3f}   - fixed {r['minus_fixed']:+8.3f} +- "
            f"{r['minus_fixed_ci95']:7.3f}   - best static {r['minus_best_static']:+8.3f} +- "
            f"{r['minus_best_static_ci95']:7.3f}   splits of episode 0: {r['splits'][0]}"
        )
    env.close()
    return {
        "episodes": args.eval_episodes,
        "eval_seed": EVAL_SEED,
        "measurements": len(measurements),
        "returns": returns,
        "best_static": {
            "choice": best_static.choice,
            "training_starts": args.best_static_episodes,
            "scores": best_static.scores,
        },
    }


def run(args) -> int:
    import torch

    from layersplit import training
    from layersplit.models import keep_freed_memory

    keep_freed_memory()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    env_kwargs = {
        "model": args.model,
        "dataset": args.dataset,
        "tokens": args.tokens,
        "context_length": args.tokens,
        "device": args.device,
        "dtype": args.dtype,
        "episode_end": args.episode_end,
        **({"protect": args.protect} if args.protect else {}),
    }
    run = Path(args.run_dir) / f"ppo_s{args.seed}"
    # the surrogate-trained policies are read first: a folder refused stops the run before any work
    compared = compared_policies(args.compare, args.trust_zip) if args.eval_episodes else {}
    if args.eval_only:
        return evaluate_only(run, env_kwargs, args, compared)
    print(
        f"PPO on LayerSplit-LLM-v0 ({args.model}, {args.tokens} tokens per step), {args.total_timesteps} steps "
        f"-> {run}",
        file=sys.stderr,
    )
    model, summary = training.train(
        "LayerSplit-LLM-v0",
        "ppo",
        run,
        args.total_timesteps,
        args.seed,
        1,
        {"n_steps": args.n_steps, "batch_size": args.batch},
        env_kwargs,
        args.checkpoint_every,
        progress=not args.no_progress,
        scale_observations=not args.raw_observations,
        trust_zip=args.trust_zip,
    )
    print(
        f"{summary['timesteps']} steps in {summary['wall_s']:.1f} s: {summary['seconds_per_step']:.3f} s per "
        f"environment step (PPO updates included)"
    )
    report = {
        "model": args.model,
        "dataset": args.dataset,
        "tokens_per_step": args.tokens,
        "protect": args.protect,
        "seed": args.seed,
        "run": str(run),
        **summary,
    }
    if args.eval_episodes:
        report["evaluation"] = evaluate(model, env_kwargs, args, compared)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    cli.write_text_atomic(args.results, json.dumps(report, indent=2, default=float))
    print(f"summary in {args.results}", file=sys.stderr)
    return 0


def evaluate_only(run: Path, env_kwargs: dict, args, compared: dict) -> int:
    """--eval-only: the evaluation without training, written into --results (its training summary kept)."""
    from layersplit import run_folders

    model = None
    if (run / run_folders.SUMMARY_FILE).is_file() and any(
        (run / f).is_file() for f in (run_folders.POLICY_FILE, run_folders.SB3_POLICY_FILE)
    ):
        model = run_folders.load_policy(run, trust_zip=args.trust_zip)
    else:
        print(
            f"note: no finished LLM-trained policy at {run}: evaluating the others (train it: python train.py)",
            file=sys.stderr,
        )
    results = Path(args.results)
    report = {}
    if results.is_file():
        try:
            report = json.loads(results.read_text())
        except ValueError:
            raise UserError(f"--results {results} is not a JSON summary: use another --results") from None
    report["evaluation"] = evaluate(model, env_kwargs, args, compared)
    report["evaluation"]["llm_trained_policy"] = str(run) if model is not None else None
    results.parent.mkdir(parents=True, exist_ok=True)
    cli.write_text_atomic(results, json.dumps(report, indent=2, default=float))
    print(f"evaluation in {results}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return cli.run_main("train.py", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
