"""Work beyond one process on Ray: the sweep's grid as tasks on worker actors, training runs as tasks,
and the search over PPO's hyperparameters with Ray Tune (ASHA).

    connect("local")        a private Ray instance on this machine (stopped at exit)
    connect("auto")         the cluster this machine joined (`ray start --head` or `ray start --address`)
    connect("HOST:PORT")    the cluster whose head listens there

The sweep: the grid is cut into tasks (a range of splits x a block of windows); each worker actor
loads the model once (one GPU each where the cluster has GPUs) and runs sweep.walk on the tasks it
is given, one at a time; the driver alone adds the scores up (sweep.fold) and writes the resumable
CSV, split by split in order, so the file is the single-process run's. The masks are seeded per
(seed, window, draw), so where a task runs does not change a number. A worker that dies mid-task is
restarted by Ray and the task run again (max_restarts, max_task_retries): nothing is lost, and the
driver takes each task's result once. A killed driver resumes like a single-process sweep.

Training: each (algorithm, seed) run is a task on one CPU, in the driver's folder; a task whose worker
dies is run again and resumes from its run's newest checkpoint. Tuning: each trial trains PPO on the
surrogate and reports its share of the exact optimum; ASHA stops the poor trials early.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
from pathlib import Path

from . import UserError

CONNECT_TIMEOUT_S = 10.0  # how long an address may take to answer before it is called unreachable
TASKS_PER_WORKER = 3  # grid tasks per worker: enough to balance the load, few enough to share window prefixes
KILL_ONCE_ENV = "LAYERSPLIT_TEST_KILL_ONCE"  # tests: a marker path; the first worker to score a window dies
# Ray's switch for clusters on one machine's loopback address (named for macOS and Windows, where it is
# the default); set for --ray local so that no Ray service listens beyond this machine
RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
ADDRESS_HELP = (
    "local (a Ray instance on this machine), auto (the cluster this machine joined with `ray start`), "
    "or HOST:PORT of a cluster's head"
)


def connect(address: str, num_cpus: int | None = None) -> None:
    """Start or join Ray; a UserError in one line (within CONNECT_TIMEOUT_S) when that is not possible."""
    import ray

    if ray.is_initialized():
        return
    # this package travels to every worker (py_modules), so a cluster needs only the same Python packages
    options = {
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
        "runtime_env": {"py_modules": [str(Path(__file__).resolve().parent)]},
    }
    if address == "local":
        # Ray's services listen on the node's address, reachable by anyone who reaches this host; a
        # local instance needs none of that: its node address is made the loopback one
        from ray._private import ray_constants

        os.environ[RAY_LOOPBACK_ENV] = "0"  # for the processes Ray starts
        ray_constants.ENABLE_RAY_CLUSTER = False  # read from the environment when ray was imported
        ray.init(num_cpus=num_cpus, **options)
        return
    if address != "auto":
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise UserError(f"--ray {address!r}: use {ADDRESS_HELP}")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as e:
            raise UserError(
                f"--ray {address}: no Ray cluster answers there ({e.strerror or e}); start one with "
                f"`ray start --head --port {port}` on {host}, or use --ray local"
            ) from None
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--ray {address}: cannot join the cluster ({first})") from None


def result(ref):
    """ray.get, with bad input found in a worker raised here as the one-line UserError it was (Ray's
    wrapper would print the worker's traceback)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, UserError):
            raise UserError(str(e.cause)) from None
        raise


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def uses_gpus(device: str) -> bool:
    """Whether the workers run on GPUs: --device cuda[:N], or auto on a cluster that has GPUs."""
    return str(device).startswith("cuda") or str(device) == "auto" and cluster_gpus() > 0


def workers_for(device: str, workers: int = 0) -> int:
    """The number of workers (0: one per GPU of the cluster when they run on GPUs, else one per CPU),
    refused in one line when the cluster lacks the GPUs for them."""
    import ray

    gpus = uses_gpus(device)
    workers = workers or (cluster_gpus() if gpus else max(1, int(ray.cluster_resources().get("CPU", 1))))
    if gpus and cluster_gpus() < max(workers, 1):
        raise UserError(
            f"--device {device}: the Ray workers need a GPU each ({max(workers, 1)} wanted) and the "
            f"cluster has {cluster_gpus()} (use --device cpu, or fewer --workers)"
        )
    return workers


# --- the sweep --------------------------------------------------------------------------------------
def plan(work: list, n_windows: int, workers: int, per_worker: int = TASKS_PER_WORKER) -> list[tuple[list, list[int]]]:
    """The grid's tasks: (a run of consecutive splits of `work`, a block of consecutive windows). Window
    blocks first (they share nothing), then split runs, about per_worker tasks per worker in all."""
    target = max(1, workers * per_worker)
    blocks = min(n_windows, target)
    runs = min(len(work), math.ceil(target / blocks))
    windows = [list(range(n_windows))[b::blocks] for b in range(blocks)]
    windows = [sorted(w) for w in windows if w]
    split_runs = [work[r * len(work) // runs : (r + 1) * len(work) // runs] for r in range(runs)]
    return [(run, block) for run in split_runs if run for block in windows]


def link_settings() -> dict:
    """The link's settings a command line sets as module constants (add_noise.py's --mcs-rule, --nr-frame,
    --residual-read, --protect-path). A worker is another process that reads its own copies, so they travel
    with each task (apply_link_settings)."""
    from . import nr, nr_frame, protect_arq

    return {
        "mcs_rule": nr.MCS_RULE,
        "frame": nr_frame.FRAME,
        "residual_read": nr.RESIDUAL_READ,
        "protect_path": protect_arq.PROTECT_PATH,
    }


def apply_link_settings(settings: dict) -> None:
    """Set what link_settings read (in a worker, before its task)."""
    from . import nr, nr_frame, protect_arq

    nr.MCS_RULE, nr_frame.FRAME = settings["mcs_rule"], settings["frame"]
    nr.RESIDUAL_READ, protect_arq.PROTECT_PATH = settings["residual_read"], settings["protect_path"]


@contextlib.contextmanager
def link_settings_set(**changes):
    """Set some of link_settings for one command (a script's main), and restore them after it: a test or a notebook
    that runs several commands in one process gives each its own command line."""
    saved = link_settings()
    if unknown := set(changes) - set(saved):
        raise ValueError(f"not a link setting: {', '.join(sorted(unknown))}")
    apply_link_settings({**saved, **changes})
    try:
        yield
    finally:
        apply_link_settings(saved)


def _worker_class():
    import ray

    @ray.remote(max_restarts=-1, max_task_retries=-1)
    class SweepWorker:
        """One model, loaded once, scoring the tasks it is given (sweep.walk)."""

        def __init__(self, model: str, device: str, dtype: str, threads: int):
            import torch

            from layersplit.models import load_model  # absolute: this class travels to the workers by value
            from layersplit.segments import SplitModel

            torch.set_num_threads(threads)
            self.segments = SplitModel(load_model(model, device=device, dtype=dtype)[0])

        def pid(self) -> int:
            return os.getpid()

        def run(self, token_ids, cfg, work, clean_split, window_ids, settings: dict) -> list:
            from layersplit.distributed import apply_link_settings
            from layersplit.sweep import walk

            apply_link_settings(settings)  # the driver's command line, not this process's defaults
            scores = []
            for scored in walk(self.segments, token_ids, cfg, work, clean_split, window_ids):
                scores.append(scored)
                marker = os.environ.get(KILL_ONCE_ENV)
                if marker and not os.path.exists(marker):  # fault injection for the tests: die mid-task, once
                    try:  # created atomically: of two workers here at once, only the one that made it dies
                        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                    except FileExistsError:
                        continue
                    os._exit(1)
            return scores

    return SweepWorker


def run_sweep(
    model: str, device: str, dtype: str, token_ids, cfg, store, dims, workers: int, progress: bool = True
) -> dict:
    """The fast path of sweep.run_fast on `workers` Ray actors; the same rows, written by this process.
    Returns the number of tasks and of workers restarted (a worker's process id changed)."""
    import ray
    from tqdm.auto import tqdm

    from .perplexity import sliding_windows
    from .sweep import clean_scores, fold, work_list

    work, clean_split = work_list(cfg, store)
    n_windows = len(sliding_windows(len(token_ids), cfg.context_length, cfg.stride))
    if not work:
        return {"tasks": 0, "workers": workers, "restarted": 0}
    cuda = uses_gpus(device)
    cpus = ray.cluster_resources().get("CPU", 1.0)
    threads = max(1, int(cpus // workers))
    share = min(threads, cpus / workers)  # more workers than CPUs: each a fraction, so that all of them start
    Worker = _worker_class()
    actors = [
        Worker.options(num_cpus=0 if cuda else share, num_gpus=1 if cuda else 0).remote(model, device, dtype, threads)
        for _ in range(workers)
    ]
    pids = ray.get([a.pid.remote() for a in actors])
    tasks = plan(work, n_windows, workers)
    token_ref, settings = ray.put(token_ids), link_settings()
    queue, running = list(tasks), {}

    def submit(actor):
        if queue:
            run, block = queue.pop(0)
            running[actor.run.remote(token_ref, cfg, run, clean_split, block, settings)] = actor

    for actor in actors:
        submit(actor)
    pending_of, order = dict(work), [split for split, _ in work]
    scored = {split: {} for split in order}
    clean = {}
    bar = tqdm(total=len(work) * n_windows, desc=f"sweep on {workers} Ray workers", unit="window", disable=not progress)
    try:
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            actor = running.pop(done[0])
            submit(actor)
            for split, i, scores, n_targets in result(done[0]):
                scored[split][i] = (scores, n_targets)
                bar.update(1)
            while order and len(scored[order[0]]) == n_windows:  # the next split is complete: write it
                split = order.pop(0)
                if split == clean_split:
                    clean = clean_scores(cfg, scored[split])
                store.append(fold(cfg, split, pending_of[split], scored.pop(split), clean, dims))
        restarted = sum(a != b for a, b in zip(pids, ray.get([a.pid.remote() for a in actors])))
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor)
    return {"tasks": len(tasks), "workers": workers, "restarted": restarted}


# --- training runs ----------------------------------------------------------------------------------
def _train(job: dict, threads: int, cwd: str) -> dict:
    """One training.train(**job) in a Ray worker: in the driver's folder, with its torch threads."""
    from layersplit import training

    os.chdir(cwd)  # run folders and surrogate paths are the driver's (a cluster needs them on a shared disk)
    training.limit_threads(threads)
    return training.train(**job)[1]


def train_runs(jobs: list[dict], threads: int = 1) -> list[dict]:
    """Every job's training.train(**job) as a Ray task on `threads` CPUs; their summaries in job order.
    A task whose worker dies is run again, and its run resumes from its newest checkpoint."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 1.0)
    task = ray.remote(max_retries=3)(_train).options(num_cpus=min(threads, cpus))  # never more than the cluster has
    refs = [task.remote(job, threads, os.getcwd()) for job in jobs]
    remaining = list(refs)
    while remaining:
        done, remaining = ray.wait(remaining, num_returns=1)
        job = jobs[refs.index(done[0])]
        result(done[0])  # raises here if the run failed
        print(
            f"  done: {job['algo']} seed {job['seed']} ({len(jobs) - len(remaining)}/{len(jobs)})",
            file=sys.stderr,
            flush=True,
        )
    return result(refs)


# --- hyperparameter search ------------------------------------------------------------------------------
TUNE_METRIC = "share_of_optimum"  # what a trial is scored by: mean return of its policy / the exact optimum's


def search_space() -> dict:
    """PPO's hyperparameters searched by `train_rsm.py tune` (the original's: lr 3e-4, gamma 0.99 in SB3,
    0.9 here, rollout 400, one environment here 8, no entropy bonus)."""
    from ray import tune

    return {
        "learning_rate": tune.loguniform(1e-4, 3e-3),
        "gamma": tune.choice([0.8, 0.9, 0.95, 0.99]),
        "rollout": tune.choice([200, 400, 800]),
        "n_envs": tune.choice([1, 4, 8]),
        "ent_coef": tune.choice([0.0, 0.001, 0.01]),
    }


def _trial(
    config: dict,
    env_kwargs: dict,
    budget: int,
    report_every: int,
    eval_episodes: int,
    eval_seed: int,
    batch: int,
    seed: int,
    cwd: str,
) -> None:
    """One PPO run on LayerSplit-Paper-v0 with `config`, reporting its share of the optimum every
    report_every steps (what ASHA stops poor trials by)."""
    from ray import tune
    from stable_baselines3.common.callbacks import BaseCallback

    from layersplit import envs, policies, training

    os.chdir(cwd)
    training.limit_threads(1)
    env = envs.make("LayerSplit-Paper-v0", **env_kwargs)
    optimum = policies.evaluate(env, policies.baseline("optimum", env.unwrapped), eval_episodes, eval_seed).mean

    class Report(BaseCallback):
        def __init__(self):
            super().__init__()
            self.next = report_every

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next:
                self.next += report_every
                score = policies.evaluate(env, policies.learned(self.model), eval_episodes, eval_seed).mean / optimum
                tune.report({TUNE_METRIC: score, "timesteps": self.num_timesteps})
            return True

    params = {
        "n_steps": config["rollout"] // config["n_envs"],
        "batch_size": batch,
        "gamma": config["gamma"],
        "learning_rate": config["learning_rate"],
        "ent_coef": config["ent_coef"],
    }
    folder = Path(tune.get_context().get_trial_dir()) / "run"
    training.train(
        "LayerSplit-Paper-v0",
        "ppo",
        folder,
        budget,
        seed,
        config["n_envs"],
        params,
        env_kwargs,
        progress=False,
        callbacks=(Report(),),
    )


def tune_ppo(
    env_kwargs: dict,
    samples: int,
    budget: int,
    report_every: int,
    eval_episodes: int,
    eval_seed: int,
    batch: int,
    seed: int,
    storage: str,
) -> dict:
    """Ray Tune over search_space() with ASHA early stopping; the best trial's configuration and score,
    and every trial's last score."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            env_kwargs=env_kwargs,
            budget=budget,
            report_every=report_every,
            eval_episodes=eval_episodes,
            eval_seed=eval_seed,
            batch=batch,
            seed=seed,
            cwd=os.getcwd(),
        ),
        {"cpu": 1},
    )
    scheduler = ASHAScheduler(metric=TUNE_METRIC, mode="max", max_t=max(1, budget // report_every), grace_period=1)
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(),
        tune_config=tune.TuneConfig(
            num_samples=samples, scheduler=scheduler, search_alg=BasicVariantGenerator(random_state=seed)
        ),
        run_config=tune.RunConfig(name="tune_ppo", storage_path=str(Path(storage).resolve()), verbose=0),
    )
    results = tuner.fit()
    best = results.get_best_result(metric=TUNE_METRIC, mode="max", scope="last")  # a trial's final score
    trials = [
        {
            "config": r.config,
            TUNE_METRIC: (r.metrics or {}).get(TUNE_METRIC),
            "timesteps": (r.metrics or {}).get("timesteps"),
            "error": str(r.error) if r.error else None,
        }
        for r in results
    ]
    return {
        "metric": TUNE_METRIC,
        "best_config": best.config,
        "best": best.metrics.get(TUNE_METRIC),
        "best_timesteps": best.metrics.get("timesteps"),
        "trials": trials,
    }
