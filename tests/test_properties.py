"""Property-based pass over the numeric options of the main scripts (issue 31): whatever text an option
is given (words, floats with nan and inf, integers far beyond int64, unicode), parsing either accepts
a value that is finite and within the option's bounds, or exits with status 2 and one error line,
never another exception. Parse only: each script's own parse_args, no model is loaded."""

from __future__ import annotations

import contextlib
import io
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import add_noise
import serve
import train
import train_rsm
from layersplit import cli

EXAMPLES = 60  # per option: 55 options x 60 parses, about 15 s in all
# no example database: nothing is written into the checkout (.hypothesis/)
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# what a user can type: any text, any float (nan, inf, subnormals, 1e308) and integers far beyond int64
VALUES = st.one_of(
    st.text(max_size=40),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=5).map(
        lambda xs: ",".join(map(repr, xs))
    ),
    st.lists(st.integers(min_value=-10, max_value=2**40), min_size=1, max_size=5).map(
        lambda xs: ",".join(map(str, xs))
    ),
    st.sampled_from(
        [
            "",
            " ",
            "-",
            "nan",
            "inf",
            "-inf",
            "1e308",
            "-1e308",
            "5000",
            "0x10",
            "1_000",
            "٣",
            "1-3",
            "3-1",
            "0-3000000",
            "all",
            "0,",
            ",",
            "4294967295",
            "4294967296",
            "-0",
        ]
    ),
)


def is_int(v, lo=-cli.INT_MAX, hi=cli.INT_MAX) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def is_float(v, lo=-math.inf, hi=math.inf) -> bool:
    return isinstance(v, float) and math.isfinite(v) and lo <= v <= hi


def seed_ok(v) -> bool:
    return is_int(v, 0, cli.SEED_MAX)


def snr_ok(v) -> bool:
    return is_float(v, cli.SNR_DB_MIN, cli.SNR_DB_MAX)


THREADS_OK = lambda v: is_int(v, 0, cli.cpu_count())  # noqa: E731


def conditions_ok(args) -> bool:
    return all(c.snr_db is None or snr_ok(c.snr_db) for c in args.conditions) and all(
        (c.dropout is None or is_float(c.dropout, 0, 1)) and is_int(c.protect, 0) for c in args.conditions
    )


def splits_ok(args) -> bool:  # the grammar is checked at parse time, the bounds once the model is known
    return cli.split_list(args.splits) == args.splits


# (option, arguments before it, what an accepted parse must hold: a check of the value, or of all the arguments)
ADD_NOISE = [
    ("--seed", [], "seed", seed_ok),
    ("--split", [], "split", is_int),
    ("--dropout", [], "dropout", lambda v: is_float(v, 0, 1)),
    ("--max-tokens", [], "max_tokens", lambda v: is_int(v, 0)),
    ("--context-length", [], "context_length", lambda v: is_int(v, 1)),
    ("--stride", [], "stride", lambda v: is_int(v, 1, add_noise.CONTEXT_LENGTH)),
    ("--protect", [], "protect", lambda v: is_int(v, 0)),
    ("--max-new-tokens", [], "max_new_tokens", lambda v: is_int(v, 1)),
    ("--snr-db", [], "snr_db", snr_ok),
    (
        "--nakagami-m",
        ["--snr-db", "10", "--fading", "nakagami"],
        "nakagami_m",
        lambda v: is_float(v, cli.NAKAGAMI_M_MIN, cli.NAKAGAMI_M_MAX),
    ),
    ("--bandwidth-hz", ["--snr-db", "10"], "bandwidth_hz", lambda v: is_float(v, 0) and v > 0),
    (
        "--elements-per-packet",
        ["--snr-db", "10"],
        "elements_per_packet",
        lambda v: is_int(v, 1, cli.PACKET_ELEMENTS_MAX),
    ),
    ("--bits-per-element", ["--snr-db", "10"], "bits_per_element", lambda v: is_int(v, 1, cli.BITS_PER_ELEMENT_MAX)),
    ("--header-bits", ["--snr-db", "10"], "header_bits", lambda v: is_int(v, 0)),
    ("--draws", ["--sweep"], "draws", lambda v: is_int(v, 1)),
    ("--workers", ["--sweep"], "workers", lambda v: is_int(v, 0)),
    ("--snrs", ["--sweep", "--dropouts", ""], None, conditions_ok),
    ("--dropouts", ["--sweep"], None, conditions_ok),
    ("--withheld", ["--sweep", "--snrs", "10"], None, lambda a: all(is_float(c.withheld, 0, 1) for c in a.conditions)),
    ("--protects", ["--sweep"], None, conditions_ok),
    ("--splits", ["--sweep"], None, splits_ok),
]
TRAIN_RSM = [
    ("--seeds", ["train"], "seeds", lambda v: bool(v) and all(seed_ok(s) for s in v)),
    ("--seed", ["train"], "seeds", lambda v: bool(v) and all(seed_ok(s) for s in v)),
    ("--eval-seed", ["train"], "eval_seed", seed_ok),
    ("--torch-threads", ["train"], "torch_threads", lambda v: is_int(v, 1, cli.cpu_count())),
    ("--gamma", ["train"], "gamma", lambda v: is_float(v, 0, 1) and v > 0),
    ("--total-timesteps", ["train"], "total_timesteps", lambda v: is_int(v, 1)),
    ("--n-envs", ["train"], "n_envs", lambda v: is_int(v, 1)),
    ("--eval-episodes", ["train"], "eval_episodes", lambda v: is_int(v, 0)),
    ("--seed", ["fit"], "seed", seed_ok),
    ("--epochs", ["fit"], "epochs", lambda v: is_int(v, 1)),
    ("--holdout", ["fit"], "holdout", lambda v: is_float(v, 0, 1) and 0 < v < 1),
    ("--holdout-repeats", ["fit"], "holdout_repeats", lambda v: is_int(v, 0)),
    ("--seed", ["tune"], "seed", seed_ok),
    ("--eval-seed", ["tune"], "eval_seed", seed_ok),
]
TRAIN = [
    ("--seed", [], "seed", seed_ok),
    ("--torch-threads", [], "torch_threads", THREADS_OK),
    ("--tokens", [], "tokens", lambda v: is_int(v, 2)),
    ("--total-timesteps", [], "total_timesteps", lambda v: is_int(v, 1)),
    ("--eval-episodes", [], "eval_episodes", lambda v: is_int(v, 0)),
    ("--protect", [], "protect", lambda v: is_int(v, 0)),
]
SERVE = [
    ("--seed", ["ue"], "seed", seed_ok),
    ("--threads", ["ue"], "threads", THREADS_OK),
    ("--threads", ["edge"], "threads", THREADS_OK),
    ("--snr-db", ["ue"], "snr_mean", lambda v: snr_ok(v) or v == math.inf),
    ("--snr-mean", ["ue"], "snr_mean", lambda v: snr_ok(v) or v == math.inf),
    ("--snr-std", ["ue"], "snr_std", lambda v: is_float(v, 0, serve.MAX_SNR_STD_DB)),
    ("--snr-rho", ["ue"], "snr_rho", lambda v: is_float(v, -1, 1)),
    ("--split", ["ue"], "split", is_int),
    ("--protect", ["ue"], "protect", lambda v: is_int(v, 0)),
    ("--max-new-tokens", ["ue"], "max_new_tokens", lambda v: is_int(v, 1)),
    ("--nakagami-m", ["ue"], "nakagami_m", lambda v: is_float(v, cli.NAKAGAMI_M_MIN, cli.NAKAGAMI_M_MAX)),
    ("--port", ["edge"], "port", is_int),
    ("--max-context", ["edge"], "max_context", lambda v: is_int(v, 1)),
    ("--max-queue", ["edge"], "max_queue", lambda v: is_int(v, 0)),
]
CASES = (
    [("add_noise.py", add_noise.parse_args, *c) for c in ADD_NOISE]
    + [("train_rsm.py", train_rsm.parse_args, *c) for c in TRAIN_RSM]
    + [("train.py", train.parse_args, *c) for c in TRAIN]
    + [("serve.py", serve.parse_args, *c) for c in SERVE]
)


@pytest.mark.parametrize(
    "script, parse, option, before, dest, holds",
    CASES,
    ids=[f"{c[0]}:{' '.join(c[3])}{' ' if c[3] else ''}{c[2]}" for c in CASES],
)
@SETTINGS
@given(value=VALUES)
def test_a_numeric_option_is_in_bounds_or_one_line_and_exit_2(
    script, parse, option, before, dest, holds, value, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # default outputs (results/...) are only ever tried here
    argv = [*before, f"{option}={value}"]  # '=': a value like '-1e308' is not taken for an option
    if script == "add_noise.py" and "--sweep" in before:
        argv += ["--output", str(tmp_path / "s.csv")]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parse(argv)
    except SystemExit as e:
        lines = err.getvalue().strip().splitlines()
        assert e.code == 2, (argv, err.getvalue())
        assert lines and "error:" in lines[-1] and sum("error:" in line for line in lines) == 1, (argv, lines)
        assert len(lines[-1]) < 400, (argv, lines[-1][:200])
        return
    got = getattr(args, dest) if dest else args
    assert holds(got), (argv, got)
    assert not list(tmp_path.iterdir()), "parsing created a file"
