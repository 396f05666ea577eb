"""Model-based RL for the split point: fit the reward surrogate (RSM), train agents on it, evaluate them.

    python train_rsm.py fit      # sweep CSVs -> reward_predictor(_wireless, _protect, _wireless_nr).pth, R2/MAE
    python train_rsm.py train                      # PPO on LayerSplit-Paper-v0, the original's settings, + evaluation
    python train_rsm.py train --seeds 0,1,2 --algo a2c
    python train_rsm.py train --seeds 0,1,2 --algo ppo,a2c,dqn --ray   # 9 runs as Ray tasks, one CPU each
    python train_rsm.py tune --samples 16 --budget 60000      # Ray Tune (ASHA) over PPO's hyperparameters
    python train_rsm.py train --env LayerSplit-Wireless-v0 --total-timesteps 100000
    python train_rsm.py train --env LayerSplit-Protect-v0 --total-timesteps 200000   # K of the protected path too
    python train_rsm.py train --rsm ../shared/reference/authors_reward_predictor.pth \
        --run-dir runs/authors --name rl_paper_ppo_authors
    python train_rsm.py evaluate runs/LayerSplit-Paper-v0/ppo_s0 runs/LayerSplit-Paper-v0/ppo_s1
    tensorboard --logdir runs

`train` writes each seed's run (policy.zip, progress.csv, TensorBoard events, monitor logs,
checkpoints) to runs/<env>/<algo>_s<seed>/ and resumes a run that was interrupted; then it
evaluates the seeds against the baselines (fixed split of the paper, the best static split chosen
on training starts, random, greedy, exact optimum) on the same episodes and writes
results/rl_<env>_<algo>.json, the learning curves
results/rl_<env>_<algo>_curves.csv and the chosen split against the channel condition
results/rl_<env>_<algo>_policy.csv (--name changes the rl_<env>_<algo> stem). With --ray the runs are
Ray tasks (layersplit/distributed.py) on this machine or a cluster, with the numbers of a run in one
process. `tune` searches PPO's learning rate, discount, rollout, environments and entropy bonus on
the surrogate, scored as the share of the exact optimum, stopping poor trials early (ASHA); the best
configuration is printed and saved to results/tune_ppo.json. Every constant below can be overridden
from the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# light modules only before the arguments are parsed (--help answers at once); torch, Stable-Baselines3,
# pandas and the policies are imported by the commands that use them
from layersplit import UserError, cli, envs, surrogate, surrogate_fit
from layersplit.cli import discount, non_negative_int, open_fraction, positive_int, writable_dir
from layersplit.cli import writable_file
from layersplit.distributed import ADDRESS_HELP

# --- fit ----------------------------------------------------------------------------------------
SWEEP = "results/sweep_smollm2-135m.csv"  # the original link's sweep (p x split): the paper-form RSM
WIRELESS_SWEEP = "results/sweep_wireless_smollm2-135m.csv"  # SNR x split x withheld: the wireless-form RSM
PROTECT_SWEEP = "results/sweep_protect_wireless_smollm2-135m.csv"  # ... x K of the protected path: the protect-form RSM
NR_WIRELESS_SWEEP = "results/sweep_nr_wireless_smollm2-135m.csv"  # the wireless grid over the 5G NR link (--link nr)
FIT_SEED = 0  # seeds the held-out draw and the initial weights
# the fit's epochs and held-out shares: surrogate.EPOCHS, surrogate_fit.HOLDOUT_FRACTION and HOLDOUT_REPEATS;
# the files it writes: envs.PAPER_RSM, envs.WIRELESS_RSM and envs.PROTECT_RSM, the shipped surrogates the
# environments load
# --- train --------------------------------------------------------------------------------------
ENV = "LayerSplit-Paper-v0"  # the original surrogate MDP
ALGO = "ppo"  # ppo (the paper's), a2c or dqn (the paper's comparisons)
SEEDS = "0"  # comma-separated training seeds; the evaluation's intervals are over seeds
TOTAL_TIMESTEPS = 240_000  # the original's PPO budget on the surrogate
N_ENVS = 8  # environments stepped together (vectorised); PPO's rollout stays ROLLOUT steps in all
ROLLOUT = 400  # PPO steps per update summed over environments (the original's n_steps with one env)
BATCH = 100  # PPO minibatch (the original's batch_size)
GAMMA = 0.9  # discount, every algorithm: a horizon of ~10 steps for 5-step episodes (SB3's 0.99: README)
TORCH_THREADS = 1  # a 64-unit policy network gains nothing from more threads, only overhead
CHECKPOINT_EVERY = 20_000  # save the agent every this many steps (resume picks up from there)
RUNS_DIR = "runs"  # training runs: runs/<env>/<algo>_s<seed>/
RESULTS_DIR = "results"  # evaluation summaries, curves and policy maps (what figures.py reads)
# --- evaluate -----------------------------------------------------------------------------------
EVAL_EPISODES = 200  # episodes per seed and policy, the same start states for every policy
EVAL_SEED = 10_000  # episodes of evaluation seed k start from resets seeded EVAL_SEED + 1000 k + i
CURVE_POINTS = 60  # learning-curve resolution (bins over training steps)
# --- tune: Ray Tune over PPO's hyperparameters on the surrogate (distributed.search_space) ------------
TUNE_SAMPLES = 8  # configurations tried
TUNE_BUDGET = 60_000  # environment steps of a trial that ASHA does not stop
TUNE_REPORT_EVERY = 10_000  # steps between a trial's scores (ASHA's rungs)
TUNE_EVAL_EPISODES = 50  # episodes per score (the same start states for the policy and the optimum)


def hyperparameters(algo: str, n_envs: int, rollout: int, batch: int, gamma: float = GAMMA) -> dict:
    """PPO: the original's n_steps=400 and batch_size=100, split over the vectorised environments;
    A2C and DQN: Stable-Baselines3 defaults (the paper does not give theirs). The discount of all."""
    if not 0 < gamma <= 1:
        raise UserError(f"--gamma {gamma} must be in (0, 1]")
    if algo != "ppo":
        return {"gamma": gamma}
    if rollout % n_envs:
        raise UserError(f"--rollout {rollout} must be a multiple of --n-envs {n_envs}")
    return {"n_steps": rollout // n_envs, "batch_size": batch, "gamma": gamma}


def env_kwargs_for(env_id: str, rsm_path: str | None, episode_end: str = envs.EPISODE_END) -> dict:
    kwargs = {"rsm_path": rsm_path} if rsm_path and env_id != "LayerSplit-LLM-v0" else {}
    return {**kwargs, "episode_end": episode_end}


# --- fit ----------------------------------------------------------------------------------------
def cmd_fit(args) -> int:
    check_fit_outputs(args)  # parse_args did; again for a caller that built its own arguments
    for _, sweep_option, _, _ in FIT_FORMS:  # every input before the first fit: a bad last one wastes no work
        if getattr(args, sweep_option):
            surrogate_fit.check_sweep(getattr(args, sweep_option))
    for form, sweep_option, out_option, report in FIT_FORMS:
        if getattr(args, sweep_option):
            surrogate_fit.fit_and_report(
                form,
                getattr(args, sweep_option),
                getattr(args, out_option),
                report,
                args.results_dir,
                args.seed,
                args.epochs,
                args.holdout,
                args.holdout_repeats,
            )
    return 0


# --- train and evaluate ---------------------------------------------------------------------------
def run_dir(args, algo: str, seed: int) -> Path:
    base = Path(args.run_dir) if args.run_dir else Path(RUNS_DIR) / args.env
    return base / f"{algo}_s{seed}"


def cmd_train(args) -> int:
    from layersplit import agents, run_folders, training

    training.limit_threads(args.torch_threads)
    seeds = args.seeds  # cli.seeds: integers in 0..2**32-1, what numpy's and SB3's seeding take
    algos = [a.strip() for a in args.algo.split(",") if a.strip()]
    unknown = [a for a in algos if a not in agents.ALGOS] or ([] if algos else [args.algo])
    if unknown:
        raise UserError(
            f"unknown algorithm {unknown[0]!r} in --algo: use one or more of {', '.join(agents.ALGOS)}, comma-separated"
        )
    if len(algos) > 1 and args.name and "{algo}" not in args.name:
        raise UserError("--name needs {algo} in it with several --algo, e.g. rl_paper_{algo}_authors")
    env_kwargs = env_kwargs_for(args.env, args.rsm, args.episode_end)
    envs.make(args.env, **env_kwargs).close()  # a bad id or surrogate fails here, before any training
    for run in (run_dir(args, algo, seed) for algo in algos for seed in seeds):
        try:  # each run folder must be creatable: refused here, not after the first run has trained
            cli.writable_dir(str(run))
        except argparse.ArgumentTypeError as e:
            raise UserError(f"run folder {e}") from None
        if run.is_dir():
            run_folders.run_saves(run, args.trust_zip)  # a folder of zips alone is refused before any training
    jobs = [
        dict(
            env_id=args.env,
            algo=algo,
            run_dir=str(run_dir(args, algo, seed)),
            total_timesteps=args.total_timesteps,
            seed=seed,
            n_envs=args.n_envs,
            checkpoint_every=args.checkpoint_every,
            env_kwargs=env_kwargs,
            hyperparameters=hyperparameters(algo, args.n_envs, args.rollout, args.batch, args.gamma),
            progress=not args.no_progress and not args.ray,
            scale_observations=not args.raw_observations,
            trust_zip=args.trust_zip,
        )
        for algo in algos
        for seed in seeds
    ]
    for job in jobs:  # a folder of another run is refused here, before any run trains
        training.check_run_folder(**job)
    for job in jobs:
        print(
            f"training {job['algo']} on {args.env}, seed {job['seed']}, {args.total_timesteps} steps -> "
            f"{job['run_dir']}{' (a Ray task)' if args.ray else ''}",
            file=sys.stderr,
        )
    if args.ray:
        from layersplit import distributed

        distributed.connect(args.ray)
        summaries = distributed.train_runs(jobs, args.torch_threads)
    else:
        summaries = [training.train(**job)[1] for job in jobs]
    for job, summary in zip(jobs, summaries):
        print(
            f"  {job['algo']} seed {job['seed']}: {summary['wall_s']:.1f} s, {summary['steps_per_s']:.0f} steps/s",
            file=sys.stderr,
        )
    if args.eval_episodes:
        for algo in algos:
            name = args.name.format(algo=algo) if args.name else None
            evaluate_runs(
                [Path(j["run_dir"]) for j in jobs if j["algo"] == algo],
                argparse.Namespace(**{**vars(args), "algo": algo, "name": name}),
            )
    return 0


def cmd_evaluate(args) -> int:
    from layersplit import run_folders, training

    training.limit_threads(args.torch_threads)
    configs = [run_folders.run_config(r) for r in args.runs]
    if len({(c["env"], c["algo"]) for c in configs}) != 1:
        raise UserError("evaluate runs of one environment and algorithm at a time")
    args.env, args.algo = configs[0]["env"], configs[0]["algo"]
    args.rsm = args.rsm or configs[0]["env_kwargs"].get("rsm_path")
    args.episode_end = configs[0]["env_kwargs"].get("episode_end", envs.EPISODE_END)
    now = envs.surrogate_fingerprint(args.env, **env_kwargs_for(args.env, args.rsm, args.episode_end))
    for run, config in zip(args.runs, configs):  # allowed (a policy on another surrogate), but never unsaid
        if config.get("surrogate_sha256", now) != now:
            print(
                f"warning: {run} was trained on another surrogate (sha256 {str(config['surrogate_sha256'])[:12]}) "
                f"than the one evaluated now ({str(now)[:12]}, {args.rsm or 'the shipped one'})",
                file=sys.stderr,
            )
    return evaluate_runs([Path(r) for r in args.runs], args)


def cmd_tune(args) -> int:
    from layersplit import distributed

    if args.report_every > args.budget:
        raise UserError(
            f"--report-every {args.report_every} is beyond --budget {args.budget}: a trial would never be scored"
        )
    env_kwargs = env_kwargs_for("LayerSplit-Paper-v0", args.rsm)
    envs.make("LayerSplit-Paper-v0", **env_kwargs).close()  # a bad surrogate fails here
    distributed.connect(args.ray)
    print(
        f"tuning PPO on LayerSplit-Paper-v0: {args.samples} configurations, up to {args.budget} steps each, "
        f"scored every {args.report_every} steps (ASHA stops the poor ones)",
        file=sys.stderr,
    )
    start = time.perf_counter()
    found = distributed.tune_ppo(
        env_kwargs,
        args.samples,
        args.budget,
        args.report_every,
        args.eval_episodes,
        args.eval_seed,
        BATCH,
        args.seed,
        args.runs_dir,
    )
    found.update(
        samples=args.samples,
        budget=args.budget,
        report_every=args.report_every,
        eval_episodes=args.eval_episodes,
        rsm=str(args.rsm or "default"),
        wall_s=time.perf_counter() - start,
    )
    path = Path(args.results_dir) / "tune_ppo.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    cli.write_text_atomic(path, json.dumps(found, indent=2, default=float))
    for trial in sorted(found["trials"], key=lambda t: -(t[distributed.TUNE_METRIC] or -1)):
        score = trial[distributed.TUNE_METRIC]
        print(
            f"  {'n/a' if score is None else f'{100 * score:6.2f}%'} of the optimum after {trial['timesteps']} steps: "
            f"{trial['config']}"
        )
    print(
        f"best: {100 * found['best']:.2f}% of the optimum with {found['best_config']} -> {path} "
        f"({found['wall_s']:.0f} s)"
    )
    return 0


def evaluate_runs(runs: list[Path], args) -> int:
    """rl_results.evaluate_runs with the command line's settings."""
    from layersplit import rl_results

    rl_results.evaluate_runs(
        runs,
        args.env,
        args.algo,
        env_kwargs_for(args.env, args.rsm, args.episode_end),
        args.rsm,
        args.eval_episodes,
        args.eval_seed,
        args.results_dir,
        args.name,
        args.trust_zip,
        CURVE_POINTS,
    )
    return 0


# --- command line --------------------------------------------------------------------------------
FIT_FORMS = (
    ("paper", "sweep", "output", "paper"),
    ("wireless", "wireless_sweep", "wireless_output", "wireless"),
    ("protect", "protect_sweep", "protect_output", "protect"),
    ("wireless", "nr_wireless_sweep", "nr_wireless_output", "wireless_nr"),
)  # form, input, output, report


def check_fit_outputs(args) -> None:
    """Every file fit writes is its own and none is an input: two surrogates written to one path would
    leave only the last, and a surrogate written over a sweep would destroy it (a UserError otherwise)."""
    written, inputs = {}, {Path(getattr(args, i)).resolve(): i for _, i, _, _ in FIT_FORMS if getattr(args, i)}
    for _, sweep_option, out_option, report in FIT_FORMS:
        if not getattr(args, sweep_option):
            continue
        for option, path in (
            (f"--{out_option.replace('_', '-')}", getattr(args, out_option)),
            *((f"report {path.name}", path) for path in surrogate_fit.report_files(args.results_dir, report)),
        ):
            path = Path(path).resolve()
            if path in inputs:
                raise UserError(
                    f"{option} {path} is the input --{inputs[path].replace('_', '-')}: a fit never writes over a sweep"
                )
            if written.setdefault(path, option) != option:
                raise UserError(f"{option} {path} is also {written[path]}: give each file written its own path")


def result_stem(text: str) -> str:
    """--name: a file stem in --results-dir, where {algo} may stand for the algorithm."""
    try:
        stem = text.format(algo="ppo")
    except (KeyError, IndexError, ValueError) as e:
        raise argparse.ArgumentTypeError(
            f"{text!r}: only {{algo}} may stand in braces ({type(e).__name__}: {e})"
        ) from None
    if not stem.strip() or "/" in stem or "\\" in stem or stem in (".", ".."):
        raise argparse.ArgumentTypeError(f"{text!r}: give a file stem, not a path (the files go to --results-dir)")
    return text


def parse_args(argv=None):
    p = cli.parser(__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit the reward surrogates from sweep results", formatter_class=cli.HelpFormatter)
    f.add_argument("--sweep", default=SWEEP, help="sweep of the original link for the paper form ('' to skip)")
    f.add_argument(
        "--wireless-sweep",
        default=WIRELESS_SWEEP,
        help="sweep with --snrs/--withheld for the wireless form ('' to skip)",
    )
    f.add_argument("--output", type=writable_file, default=str(envs.PAPER_RSM), help="paper-form surrogate file")
    f.add_argument(
        "--wireless-output", type=writable_file, default=str(envs.WIRELESS_RSM), help="wireless-form surrogate file"
    )
    f.add_argument(
        "--protect-sweep",
        default=PROTECT_SWEEP,
        help="sweep with --snrs/--withheld/--protects for the protect form ('' to skip)",
    )
    f.add_argument(
        "--protect-output", type=writable_file, default=str(envs.PROTECT_RSM), help="protect-form surrogate file"
    )
    f.add_argument(
        "--nr-wireless-sweep",
        default=NR_WIRELESS_SWEEP,
        help="the wireless grid swept over the 5G NR link (add_noise.py --link nr) for its wireless form ('' to skip)",
    )
    f.add_argument(
        "--nr-wireless-output",
        type=writable_file,
        default=str(envs.WIRELESS_NR_RSM),
        help="the NR link's wireless-form surrogate file",
    )
    f.add_argument("--epochs", type=positive_int, default=surrogate.EPOCHS, help="full-batch Adam steps")
    f.add_argument(
        "--holdout",
        type=open_fraction,
        default=surrogate_fit.HOLDOUT_FRACTION,
        help="share of sweep cells held out to measure the fit",
    )
    f.add_argument(
        "--holdout-repeats",
        type=non_negative_int,
        default=surrogate_fit.HOLDOUT_REPEATS,
        help="further held-out draws whose R2 is reported as a spread (0: none); the shipped fit is unchanged",
    )
    f.add_argument("--seed", type=cli.seed, default=FIT_SEED, help="seed of the held-out draw and the initial weights")
    f.add_argument("--results-dir", type=writable_dir, default=RESULTS_DIR, help="where fit reports go")
    t = sub.add_parser(
        "tune",
        help="search PPO's hyperparameters with Ray Tune (ASHA) on the surrogate",
        formatter_class=cli.HelpFormatter,
    )
    t.add_argument("--samples", type=positive_int, default=TUNE_SAMPLES, help="configurations tried")
    t.add_argument("--budget", type=positive_int, default=TUNE_BUDGET, help="environment steps of a full trial")
    t.add_argument(
        "--report-every", type=positive_int, default=TUNE_REPORT_EVERY, help="steps between a trial's scores"
    )
    t.add_argument("--eval-episodes", type=positive_int, default=TUNE_EVAL_EPISODES, help="episodes per score")
    t.add_argument("--eval-seed", type=cli.seed, default=EVAL_SEED, help="first reset seed of the scoring episodes")
    t.add_argument("--seed", type=cli.seed, default=0, help="seeds the search and every trial's training")
    t.add_argument("--rsm", help="surrogate file (default: the shipped one; the authors' state_dict works too)")
    t.add_argument("--ray", default="local", metavar="ADDRESS", help=ADDRESS_HELP)
    t.add_argument("--runs-dir", type=writable_dir, default=f"{RUNS_DIR}/tune", help="where Ray Tune keeps the trials")
    t.add_argument("--results-dir", type=writable_dir, default=RESULTS_DIR, help="where tune_ppo.json goes")
    for name, helptext in (
        ("train", "train agents on an environment, then evaluate them"),
        ("evaluate", "evaluate trained runs against the baselines"),
    ):
        s = sub.add_parser(name, help=helptext, formatter_class=cli.HelpFormatter)
        if name == "train":
            s.add_argument("--env", default=ENV, help=", ".join(envs.ENV_IDS))
            s.add_argument(
                "--algo",
                default=ALGO,
                help="ppo (the paper's), a2c or dqn (Stable-Baselines3); several "
                "comma-separated, each evaluated on its own",
            )
            s.add_argument("--seeds", type=cli.seeds, default=SEEDS, help="comma-separated training seeds")
            s.add_argument("--seed", dest="seeds", type=cli.seeds, help="one training seed (same as --seeds N)")
            s.add_argument(
                "--total-timesteps", type=positive_int, default=TOTAL_TIMESTEPS, help="environment steps per seed"
            )
            s.add_argument("--n-envs", type=positive_int, default=N_ENVS, help="vectorised environments")
            s.add_argument(
                "--rollout", type=positive_int, default=ROLLOUT, help="PPO steps per update over all environments"
            )
            s.add_argument("--batch", type=positive_int, default=BATCH, help="PPO minibatch")
            s.add_argument(
                "--checkpoint-every",
                type=non_negative_int,
                default=CHECKPOINT_EVERY,
                help="steps between checkpoints, 0 for none",
            )
            s.add_argument("--gamma", type=discount, default=GAMMA, help="discount (SB3's and the original's: 0.99)")
            s.add_argument(
                "--raw-observations",
                action="store_true",
                help="feed the policy raw observations, as the original (otherwise scaled to [-1, 1] by the bounds)",
            )
            s.add_argument(
                "--episode-end",
                default=envs.EPISODE_END,
                choices=envs.EPISODE_ENDS,
                help="how an episode ends after its last step: terminate is the original's; truncate makes "
                "SB3 bootstrap from the last state",
            )
            s.add_argument(
                "--run-dir", type=writable_dir, help=f"parent folder of the runs (default: {RUNS_DIR}/<env>)"
            )
            s.add_argument("--no-progress", action="store_true", help="hide the progress bar")
            s.add_argument(
                "--ray",
                nargs="?",
                const="local",
                metavar="ADDRESS",
                help="train the runs (seeds x algorithms) as Ray tasks, one CPU each; ADDRESS: "
                f"{ADDRESS_HELP} (default: local)",
            )
        else:
            s.add_argument("runs", nargs="+", help="training run folders (one per seed) of one env and algorithm")
        s.add_argument(
            "--rsm",
            help="surrogate file for the environment (default: the shipped one; a bare state_dict "
            "in the authors' format works for LayerSplit-Paper-v0)",
        )
        s.add_argument(
            "--eval-episodes",
            type=non_negative_int,
            default=EVAL_EPISODES,
            help="evaluation episodes per seed and policy, 0 to skip",
        )
        s.add_argument("--eval-seed", type=cli.seed, default=EVAL_SEED, help="first evaluation reset seed")
        s.add_argument("--results-dir", type=writable_dir, default=RESULTS_DIR, help="where summaries go")
        s.add_argument(
            "--name",
            type=result_stem,
            help="stem of the result files, {algo} replaced (default: rl_<env>_<algo>, e.g. rl_paper_ppo)",
        )
        s.add_argument(
            "--trust-zip",
            action="store_true",
            help="also read Stable-Baselines3's policy.zip saves (runs without policy.safetensors): "
            "loading one unpickles it, which can run code stored in it; only for folders you made",
        )
        s.add_argument(
            "--torch-threads",
            type=cli.positive_threads,
            default=TORCH_THREADS,
            help="torch threads (of each Ray task with --ray), at most this machine's CPUs",
        )
    args = p.parse_args(argv)
    if args.command == "fit":
        try:
            check_fit_outputs(args)
        except UserError as e:
            p.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = {"fit": cmd_fit, "train": cmd_train, "evaluate": cmd_evaluate, "tune": cmd_tune}[args.command]
    return cli.run_main("train_rsm.py", lambda: command(args))


if __name__ == "__main__":
    sys.exit(main())
