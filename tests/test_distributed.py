"""Work across processes on a local Ray instance (2 CPUs, the tiny random Llama): the distributed sweep
writes the single-process file, a worker killed mid-task loses nothing, and bad addresses or devices
are refused in one line."""

from __future__ import annotations

import re
import time

import pytest

import add_noise
from conftest import run_script
from layersplit import UserError, distributed

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    marker = tmp_path_factory.mktemp("fault") / "killed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(distributed.KILL_ONCE_ENV, str(marker))  # the workers inherit it: one dies mid-task, once
        distributed.connect("local", num_cpus=2)
    yield marker
    ray.shutdown()


def sweep_args(tiny_model_dir, sample_txt, output, *extra):
    return [
        "--sweep",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(sample_txt),
        "--max-tokens",
        "300",
        "--context-length",
        "64",
        "--splits",
        "all",
        "--draws",
        "2",
        "--dropouts",
        "0.1,0.3",
        "--snrs",
        "10",
        "--output",
        str(output),
        "--no-progress",
        *extra,
    ]


def test_the_distributed_sweep_writes_the_single_process_file_and_survives_a_killed_worker(
    local_ray, tiny_model_dir, sample_txt, tmp_path, capsys
):
    assert add_noise.main(sweep_args(tiny_model_dir, sample_txt, tmp_path / "single.csv")) == 0
    assert not local_ray.exists()
    assert add_noise.main(sweep_args(tiny_model_dir, sample_txt, tmp_path / "ray.csv", "--ray", "--workers", "2")) == 0
    err = capsys.readouterr().err
    assert local_ray.exists()  # a worker died in the middle of a task...
    assert re.search(r"Ray: \d+ tasks on 2 workers \(1 restarted\)", err), err[-500:]
    # ...and the file is the single-process one, byte for byte: no row lost, none twice
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "single.csv").read_bytes()
    assert (tmp_path / "ray_cells.csv").read_bytes() == (tmp_path / "single_cells.csv").read_bytes()


def test_a_resumed_distributed_sweep_computes_only_what_is_missing(local_ray, tiny_model_dir, sample_txt, tmp_path):
    # 3 workers on 2 CPUs: each gets a fraction of a CPU, so that all of them start
    args = sweep_args(tiny_model_dir, sample_txt, tmp_path / "part.csv", "--ray", "--workers", "3")
    assert add_noise.main([*args[: args.index("all")], "0-1", *args[args.index("all") + 1 :]]) == 0  # splits 0-1 first
    assert add_noise.main(args) == 0  # then all: resumes
    assert add_noise.main(sweep_args(tiny_model_dir, sample_txt, tmp_path / "whole.csv")) == 0
    assert (tmp_path / "part.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()


@pytest.mark.parametrize(
    "common, settings",
    [
        (
            ["--link", "nr", "--snrs", "0,20"],
            ["--mcs-rule", "reliable", "--residual-read", "bound", "--nr-frame", "FDD"],
        ),
        (["--snrs", "10", "--protects", "0,2"], ["--protect-path", "arq"]),
    ],
    ids=["nr-link", "protect-path"],
)
def test_the_links_settings_reach_the_workers(
    local_ray, tiny_model_dir, sample_txt, tmp_path, common, settings, monkeypatch
):
    """--mcs-rule, --residual-read, --nr-frame and --protect-path are module constants a worker reads in its own
    process: they travel with each task, so the Ray file is the single-process one under the same settings (and
    the settings change it: a worker on the defaults would not write it)."""
    from layersplit import nr, nr_frame, protect_arq

    for module, name in ((nr, "MCS_RULE"), (nr_frame, "FRAME"), (nr, "RESIDUAL_READ"), (protect_arq, "PROTECT_PATH")):
        monkeypatch.setattr(module, name, getattr(module, name))  # main() sets them: restored after this test

    def sweep(name: str, *extra: str) -> bytes:
        args = sweep_args(tiny_model_dir, sample_txt, tmp_path / f"{name}.csv", "--dropouts", "", *common, *extra)
        assert add_noise.main(args) == 0
        return (tmp_path / f"{name}.csv").read_bytes() + (tmp_path / f"{name}_cells.csv").read_bytes()

    default, single = sweep("default"), sweep("single", *settings)
    assert sweep("ray", *settings, "--ray", "--workers", "2") == single != default


def test_bad_input_is_one_line_before_any_task_and_from_a_worker(
    local_ray, tiny_model_dir, sample_txt, tmp_path, capsys
):
    args = sweep_args(tiny_model_dir, sample_txt, tmp_path / "s.csv", "--ray", "--workers", "2", "--protects", "65")
    assert add_noise.main(args) == 2  # found by the main process: no task starts, no file is made
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == "add_noise.py: error: --protects 65: a token has only 64 elements (use 0..64)", lines[-3:]
    assert not (tmp_path / "s.csv").exists()

    @ray.remote
    def refuse():
        raise UserError("--protect 65: a token has only 64 elements")

    with pytest.raises(UserError) as caught:  # what a worker finds: its one line, not Ray's wrapper
        distributed.result(refuse.remote())
    assert str(caught.value) == "--protect 65: a token has only 64 elements"


def test_grid_tasks_cover_every_split_and_window_once():
    work = [(s, [(0, 0)]) for s in range(7)]
    for workers in (1, 2, 5):
        tasks = distributed.plan(work, n_windows=4, workers=workers)
        cells = [(split, i) for run, block in tasks for split, _ in run for i in block]
        assert sorted(cells) == [(s, i) for s in range(7) for i in range(4)]
        assert len(tasks) >= min(workers * distributed.TASKS_PER_WORKER, 28) // 2


def test_an_unreachable_address_is_one_line_at_once(tiny_model_dir, sample_txt, tmp_path):
    start = time.monotonic()
    done = run_script(
        "add_noise.py", *sweep_args(tiny_model_dir, sample_txt, tmp_path / "s.csv", "--ray", "127.0.0.1:9")
    )
    assert time.monotonic() - start < 30
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and lines[-1].startswith("add_noise.py: error: --ray 127.0.0.1:9: no Ray cluster"), (
        lines
    )
    assert not (tmp_path / "s.csv").exists()


def test_cuda_on_a_cluster_without_gpus_is_refused(local_ray):
    with pytest.raises(UserError, match=r"need a GPU each \(2 wanted\) and the cluster has 0"):
        distributed.workers_for("cuda", 2)
    assert distributed.workers_for("auto") == 2 and distributed.workers_for("cpu", 3) == 3


def test_training_runs_as_ray_tasks_give_the_numbers_of_one_process(local_ray, tmp_path):
    import json

    import train_rsm

    common = [
        "train",
        "--algo",
        "ppo,a2c",
        "--seeds",
        "0,1",
        "--total-timesteps",
        "800",
        "--eval-episodes",
        "10",
        "--no-progress",
        "--checkpoint-every",
        "0",
    ]
    for name, extra in (("one", []), ("ray", ["--ray"])):
        assert (
            train_rsm.main(
                [*common, "--run-dir", str(tmp_path / name / "runs"), "--results-dir", str(tmp_path / name), *extra]
            )
            == 0
        )
    for algo in ("ppo", "a2c"):
        one, ray_ = (json.loads((tmp_path / name / f"rl_paper_{algo}.json").read_text()) for name in ("one", "ray"))
        for result in (one, ray_):
            del result["runs"], result["training"]  # folders and wall times
        assert one == ray_
        assert (tmp_path / "one" / f"rl_paper_{algo}_policy.csv").read_bytes() == (
            tmp_path / "ray" / f"rl_paper_{algo}_policy.csv"
        ).read_bytes()


def test_tune_runs_trials_and_saves_the_best(local_ray, tmp_path):
    import json

    import train_rsm

    assert (
        train_rsm.main(
            [
                "tune",
                "--samples",
                "4",
                "--budget",
                "800",
                "--report-every",
                "400",
                "--eval-episodes",
                "10",
                "--runs-dir",
                str(tmp_path / "tune"),
                "--results-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    found = json.loads((tmp_path / "tune_ppo.json").read_text())
    assert len(found["trials"]) == 4 and not any(t["error"] for t in found["trials"])
    assert set(found["best_config"]) == {"learning_rate", "gamma", "rollout", "n_envs", "ent_coef"}
    assert 0 < found["best"] <= 1 + 1e-9  # a share of the exact optimum, on the same episodes
    assert found["best"] == max(t["share_of_optimum"] for t in found["trials"])


def test_a_local_ray_listens_on_this_machine_only(local_ray):
    """--ray local: every socket Ray's processes listen on is a loopback one (Ray's default is the
    node's address, which anyone who reaches the host can use)."""
    import ipaddress

    psutil = pytest.importorskip("psutil")

    def loopback(ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return (
            address.is_loopback or getattr(address, "ipv4_mapped", None) is not None and address.ipv4_mapped.is_loopback
        )

    ray.get(ray.remote(lambda: 0).remote())  # a worker process too
    processes = [psutil.Process(), *psutil.Process().children(recursive=True)]
    listening = {
        c.laddr.ip for p in processes for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
    }
    assert listening and all(loopback(ip) for ip in listening), listening
