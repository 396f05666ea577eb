"""Every input file is checked on load: a bad sweep, BLER table or surrogate is refused with exit status 2,
one line naming the file (and its line), no traceback and no file changed; a file that is not the
project's is never modified. Bad data is never pooled in silence: the one documented skip (a draw with
no window scored) is counted in the cell table, and a resumed sweep recomputes rows with invalid values.
The same table form as tests/test_bad_inputs.py, run in-process."""

from __future__ import annotations

import csv
import shutil
import zipfile

import pytest
import torch
from test_bad_inputs import run_main

import figures
from conftest import ROOT
from layersplit import UserError, cells, nr, schema, surrogate, sweep_store

SWEEP = ROOT / "results" / "sweep_smollm2-135m.csv"  # a committed sweep of the original link: every reader takes it
BLER = ROOT / "results" / "nr_bler.csv"


def rows_of(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path, rows: list[dict], columns=None):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def damaged(rows: list[dict], line: int, **change) -> list[dict]:
    """The rows with `change` on file line `line` (the header is line 1)."""
    out = [dict(r) for r in rows]
    out[line - 2].update(change)
    return out


LINE = 40  # the damaged line of every damaged sweep below
SWEEP_DAMAGE = {  # file name -> (change on LINE, what the message says after "file:LINE: ")
    "nll-nan.csv": ({"nll": "nan"}, "nll is nan, not a finite number >= 0"),
    "nll-inf.csv": ({"nll": "inf"}, "nll is inf, not a finite number >= 0"),
    "nll-empty.csv": ({"nll": ""}, "nll is empty, not a finite number >= 0"),
    "nll-negative.csv": ({"nll": "-50"}, "nll is -50, not a finite number >= 0"),
    "accuracy-above-1.csv": ({"token_accuracy": "1.5"}, "token_accuracy is 1.5, not a share in [0, 1]"),
    "p-above-1.csv": ({"dropout": "1.5"}, "dropout is 1.5, not a number in [0, 1]"),
    "split-negative.csv": ({"split": "-1"}, "split is -1, not a whole number >= 0"),
    "tokens-fraction.csv": ({"scored_tokens": "2.5"}, "scored_tokens is 2.5, not a whole number >= 0"),
}


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """The bad files of the table."""
    folder = tmp_path_factory.mktemp("bad-files")
    rows = rows_of(SWEEP)
    for name, (change, _) in SWEEP_DAMAGE.items():
        write_rows(folder / name, damaged(rows, LINE, **change))
    write_rows(folder / "duplicate.csv", rows[: LINE - 2] + [rows[0]] + rows[LINE - 2 :])
    (folder / "header-only.csv").write_text(",".join(schema.COLUMNS) + "\n")
    (folder / "binary.csv").write_bytes(bytes(range(256)) * 8)  # no final newline either
    (folder / "notes.txt").write_text("my notes\nwithout a final newline")
    shutil.copy(ROOT / "reward_predictor.pth", folder / "reward_predictor.pth")
    (folder / "blank-first-line.csv").write_bytes(b"\n" + bytes(range(128, 256)))  # nothing read as a header
    (folder / "out.csv").write_text(",".join(schema.COLUMNS) + "\n")  # ours, beside a windows file that is not
    (folder / "out_windows.csv").write_text("my,own\nfile")
    # windows files beside a valid sweep: a negative NLL sum, more correct tokens than tokens, binary
    windows = rows_of(schema.windows_path(SWEEP))
    for name, change in (("win-negative", {"nll_sum": "-3"}), ("win-correct", {"correct": "1e9"})):
        shutil.copy(SWEEP, folder / f"{name}.csv")
        write_rows(schema.windows_path(folder / f"{name}.csv"), damaged(windows, 7, **change))
    shutil.copy(SWEEP, folder / "win-binary.csv")
    schema.windows_path(folder / "win-binary.csv").write_bytes(bytes(range(256)))
    # surrogates that are not
    good = (ROOT / "reward_predictor.pth").read_bytes()
    (folder / "truncated.pth").write_bytes(good[: len(good) // 2])
    (folder / "text.pth").write_text("not a surrogate\n")
    with zipfile.ZipFile(folder / "other-zip.pth", "w") as z:
        z.writestr("a/data.txt", "something else")
    torch.save(
        {
            "format": surrogate.FORMAT,
            "form": "paper",
            "state_dict": {"fc.0.weight": torch.zeros(3, 3)},
            "normalisation": {},
        },
        folder / "shapes.pth",
    )
    torch.save({"fc.0.weight": torch.zeros(2)}, folder / "other-keys.pth")
    # BLER tables
    table = rows_of(BLER)
    write_rows(folder / "bler-nan.csv", damaged(table, 5, bler="nan"))
    write_rows(folder / "bler-above-1.csv", damaged(table, 6, bler="1.5", bler_high="1.5"))
    write_rows(folder / "bler-snr-inf.csv", damaged(table, 7, snr_db="inf"))
    write_rows(folder / "bler-mcs-fraction.csv", damaged(table, 3, mcs="3.5"))
    write_rows(folder / "bler-duplicate.csv", table + [table[0]])
    write_rows(folder / "bler-no-column.csv", [{k: v for k, v in r.items() if k != "bler_high"} for r in table])
    (folder / "bler-folder").mkdir()
    return folder


def sweep_cases():
    """(id, script, arguments, what the last line must say); {bad} and {tmp} are filled in."""
    cases = []
    for name, (_, message) in SWEEP_DAMAGE.items():
        stem = name.removesuffix(".csv")
        cases += [
            (f"cells-{stem}", "layersplit/cells.py", ["{bad}/" + name, "--write-cells"], f"{name}:{LINE}: {message}"),
            (
                f"fit-{stem}",
                "train_rsm.py",
                [
                    "fit",
                    "--sweep",
                    "{bad}/" + name,
                    "--wireless-sweep",
                    "",
                    "--output",
                    "{tmp}/x.pth",
                    "--results-dir",
                    "{tmp}",
                ],
                f"{name}:{LINE}: {message}",
            ),
        ]
    for name, message in (
        ("duplicate.csv", f"duplicate.csv:{LINE}: the same split, condition and draw as line 2"),
        ("header-only.csv", "has a header and no rows"),
        ("binary.csv", "not UTF-8 text"),
    ):
        stem = name.removesuffix(".csv")
        cases += [
            (f"cells-{stem}", "layersplit/cells.py", ["{bad}/" + name, "--compare", "1,4"], message),
            (
                f"fit-{stem}",
                "train_rsm.py",
                [
                    "fit",
                    "--sweep",
                    "{bad}/" + name,
                    "--wireless-sweep",
                    "",
                    "--output",
                    "{tmp}/x.pth",
                    "--results-dir",
                    "{tmp}",
                ],
                message,
            ),
        ]
    return cases


def cases():
    tiny = ["--model", "{model}", "--dataset", "{data}", "--no-progress", "--sweep", "--splits", "1-2"]
    windows = [
        (f"cells-{n}", "layersplit/cells.py", ["{bad}/" + n + ".csv", "--write-cells"], m)
        for n, m in (
            ("win-negative", "win-negative_windows.csv:7: a damaged row"),
            ("win-correct", "win-correct_windows.csv:7: a"),
            ("win-binary", "win-binary_windows.csv is not a sweep windows file (not UTF-8 text)"),
        )
    ]
    return (
        sweep_cases()
        + windows
        + [
            # the sweep's --output: a file of another kind is refused and left as it was, byte for byte
            ("output-binary", "add_noise.py", tiny + ["--output", "{bad}/binary.csv"], "not a sweep results file"),
            ("output-text", "add_noise.py", tiny + ["--output", "{bad}/notes.txt"], "not a sweep results file"),
            (
                "output-surrogate",
                "add_noise.py",
                tiny + ["--output", "{bad}/reward_predictor.pth"],
                "not a sweep results file",
            ),
            (
                "output-blank-first-line",
                "add_noise.py",
                tiny + ["--output", "{bad}/blank-first-line.csv"],
                "not a sweep results file",
            ),
            (
                "output-windows-foreign",
                "add_noise.py",
                tiny + ["--output", "{bad}/out.csv"],
                "not a sweep windows file",
            ),
            # surrogates (train_rsm.py train --rsm, surrogate.load)
            (
                "rsm-truncated",
                "train_rsm.py",
                ["train", "--rsm", "{bad}/truncated.pth", "--run-dir", "{tmp}/r"],
                "truncated.pth is not a readable PyTorch file",
            ),
            (
                "rsm-text",
                "train_rsm.py",
                ["train", "--rsm", "{bad}/text.pth", "--run-dir", "{tmp}/r"],
                "text.pth is not a readable PyTorch file",
            ),
            (
                "rsm-other-zip",
                "train_rsm.py",
                ["train", "--rsm", "{bad}/other-zip.pth", "--run-dir", "{tmp}/r"],
                "other-zip.pth is not a readable PyTorch file",
            ),
            (
                "rsm-shapes",
                "train_rsm.py",
                ["train", "--rsm", "{bad}/shapes.pth", "--run-dir", "{tmp}/r"],
                "weights do not fit the paper surrogate's network",
            ),
            (
                "rsm-other-keys",
                "train_rsm.py",
                ["train", "--rsm", "{bad}/other-keys.pth", "--run-dir", "{tmp}/r"],
                "is not a reward surrogate",
            ),
            # the NR BLER table (python -m layersplit.nr)
            ("bler-nan", "layersplit/nr_cli.py", ["--bler-table", "{bad}/bler-nan.csv"], "bler-nan.csv:5: bler is nan"),
            (
                "bler-above-1",
                "layersplit/nr_cli.py",
                ["--bler-table", "{bad}/bler-above-1.csv"],
                "bler-above-1.csv:6: bler is 1.5, not a finite number in [0, 1]",
            ),
            ("bler-snr-inf", "layersplit/nr_cli.py", ["--bler-table", "{bad}/bler-snr-inf.csv"], ":7: snr_db is inf"),
            (
                "bler-mcs-fraction",
                "layersplit/nr_cli.py",
                ["--bler-table", "{bad}/bler-mcs-fraction.csv"],
                ":3: mcs is '3.5', not a whole number",
            ),
            (
                "bler-duplicate",
                "layersplit/nr_cli.py",
                ["--bler-table", "{bad}/bler-duplicate.csv"],
                "again (line 2 has it)",
            ),
            (
                "bler-no-column",
                "layersplit/nr_cli.py",
                ["--bler-table", "{bad}/bler-no-column.csv"],
                "no column(s) bler_high",
            ),
            ("bler-garbage", "layersplit/nr_cli.py", ["--bler-table", "{bad}/binary.csv"], "not UTF-8 text"),
            ("bler-folder", "layersplit/nr_cli.py", ["--bler-table", "{bad}/bler-folder"], "is a folder"),
            ("bler-missing", "layersplit/nr_cli.py", ["--bler-table", "{tmp}/none.csv"], "no NR BLER table"),
            (
                "bler-check-nan",
                "layersplit/nr_cli.py",
                ["--bler-table", "{bad}/bler-nan.csv", "--check", "14:10"],
                "bler-nan.csv:5",
            ),
            (
                "bler-resume-foreign",
                "layersplit/nr_cli.py",
                ["--table", "{bad}/notes.txt", "--mcs", "3"],
                "is not an NR BLER table",
            ),
            (
                "nr-latency-folder",
                "layersplit/nr_cli.py",
                ["--latency-table", "{bad}/bler-folder"],
                "a folder, not a file",
            ),
            (
                "channel-latency-folder",
                "layersplit/channel_cli.py",
                ["--latency-table", "{bad}/bler-folder"],
                "a folder, not a file",
            ),
        ]
    )


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name, script_name, argv, message", cases(), ids=[c[0] for c in cases()])
def test_a_bad_file_gives_one_line_and_exit_2(
    name, script_name, argv, message, bad, tiny_model_dir, sample_txt, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    fill = {"{model}": str(tiny_model_dir), "{data}": str(sample_txt), "{bad}": str(bad), "{tmp}": str(tmp_path)}
    argv = [next((a.replace(k, v) for k, v in fill.items() if k in a), a) for a in argv]
    before = snapshot(bad)
    code, err = run_main(script_name, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert lines and "error" in lines[-1] and message in lines[-1], lines[-1:]
    assert sum(": error: " in line for line in lines) == 1, lines
    assert snapshot(bad) == before, "a bad file was changed"
    assert not list(tmp_path.glob("*.pth")) and not (tmp_path / "r").exists(), "a bad file led to work"


@pytest.mark.parametrize("value", ["{bad}/bler-nan.csv", "{bad}/binary.csv", "{bad}/bler-folder", "{tmp}/none.csv"])
def test_a_bad_bler_table_variable_is_named(value, bad, tmp_path, capsys, monkeypatch):
    value = value.format(bad=bad, tmp=tmp_path)
    monkeypatch.setenv(nr.TABLE_ENV, value)
    with pytest.raises(UserError, match=f"^{nr.TABLE_ENV}={value}: "):
        nr.check_environment()
    code, err = run_main("layersplit/nr_cli.py", ["--snr-db", "10"], capsys)  # the link's default table: the variable's
    assert code == 2 and f"{nr.TABLE_ENV}={value}: " in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv(nr.TABLE_ENV, "")  # empty: unset, the committed table
    nr.check_environment()
    monkeypatch.setenv(nr.TABLE_ENV, str(BLER))
    nr.check_environment()


def test_a_nan_bler_no_longer_gives_nan_latencies(bad):
    """Before: a NaN in the table gave nan latencies and an impaired perplexity equal to the clean one."""
    with pytest.raises(UserError, match="bler-nan.csv:5: bler is nan"):
        nr.operating_point(10.0, table=str(bad / "bler-nan.csv"))
    assert nr.operating_point(10.0, table=str(BLER)).air_s(1) > 0


@pytest.mark.parametrize("name", [*SWEEP_DAMAGE, "duplicate.csv", "header-only.csv", "binary.csv"])
def test_verify_reference_is_checked_like_every_sweep(name, bad):
    with pytest.raises(UserError, match=f"^--verify: {bad / name}"):
        sweep_store.read_reference(bad / name)


@pytest.mark.parametrize("name", [*SWEEP_DAMAGE, "duplicate.csv", "header-only.csv", "binary.csv"])
def test_figures_name_the_bad_sweep_and_draw_nothing_from_it(name, bad, tmp_path, capsys):
    (tmp_path / "results").mkdir()
    shutil.copy(bad / name, tmp_path / "results" / figures.SWEEP_FILE)
    assert (
        figures.main(
            ["--only", "sweep", "--results-dir", str(tmp_path / "results"), "--figures-dir", str(tmp_path / "f")]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert f"sweep: malformed {tmp_path / 'results' / figures.SWEEP_FILE}" in err and "Traceback" not in err
    if name in SWEEP_DAMAGE or name == "duplicate.csv":  # (an empty nll: figures' own "is not float")
        assert f"line {LINE}" in err
    assert not (tmp_path / "f" / "sweep.png").exists()


def damage_cells(path):
    rows = rows_of(path)
    write_rows(path, damaged(rows, 5, ppl="-1"))


CLAIMS_DAMAGE = [  # (file in results/, how it is damaged, what the one line says)
    (
        "sweep_smollm2-135m.csv",
        lambda p: write_rows(p, damaged(rows_of(SWEEP), LINE, nll="-50")),
        f"sweep_smollm2-135m.csv:{LINE}: nll is -50",
    ),
    ("sweep_smollm2-135m_cells.csv", damage_cells, "sweep_smollm2-135m_cells.csv:5: ppl is -1, not a number >= 1"),
    ("sweep_smollm2-135m_cells.csv", lambda p: p.write_bytes(bytes(range(256))), "not UTF-8 text"),
    ("rl_paper_ppo.json", lambda p: p.write_text('{"returns": \n'), "rl_paper_ppo.json:2: not JSON"),
    (
        "rl_paper_ppo_policy.csv",
        lambda p: p.write_text("policy,condition,value,split\nppo,p,0.1,deep\n"),
        "rl_paper_ppo_policy.csv:2: not a policy map row",
    ),
]


@pytest.mark.parametrize("name, damage, message", CLAIMS_DAMAGE, ids=[f"{n}-{m[-14:]}" for n, _, m in CLAIMS_DAMAGE])
def test_claims_refuse_a_bad_result_file(name, damage, message, tmp_path, capsys):
    """figures.py --claims reads the committed results: a damaged one is one line, and the README is untouched."""
    results = shutil.copytree(ROOT / "results", tmp_path / "results")
    damage(results / name)
    readme = shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    before = readme.read_bytes()
    code, err = run_main("figures.py", ["--claims", str(readme), "--results-dir", str(results)], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert readme.read_bytes() == before


def test_every_committed_sweep_is_valid_for_every_reader():
    """The rule refuses nothing the project wrote: every committed sweep reads, and so do its cells."""
    for path in sorted((ROOT / "results").glob("sweep_*.csv")):
        if path.name.endswith(("_cells.csv", "_windows.csv")):
            continue
        rows = schema.read_rows(path)
        assert all(schema.row_problem(r) is None for r in rows)
        assert all(c["draws_left_out"] == 0 for c in cells.cell_table(rows))


# --- behaviour ------------------------------------------------------------------------------------
def test_a_draw_with_no_window_scored_is_counted_and_recorded(tmp_path, capsys):
    """The documented skip: a row whose every window was non-finite (scored_tokens 0, nll nan) is valid,
    left out of its cell, counted on stderr and in the cell table's draws_left_out."""
    rows = rows_of(SWEEP)
    i = next(i for i, r in enumerate(rows) if r["split"] == "3" and r["dropout"] == "0.3" and r["draw"] == "2")
    rows[i].update(
        nll="nan",
        ppl="nan",
        token_accuracy="nan",
        scored_tokens="0",
        nonfinite_windows="1",
        windows="0",
        nll_window_sd="nan",
        accuracy_window_sd="nan",
    )
    path = write_rows(tmp_path / "skip.csv", rows)
    code, err = run_main("layersplit/cells.py", [str(path), "--write-cells"], capsys)
    assert code == 0, err
    assert "1 draw(s) in 1 cell(s) scored no finite window and are left out" in err
    table = {(c["split"], c["dropout"]): c for c in rows_of(schema.cells_path(path))}
    assert table["3", "0.3"]["draws_left_out"] == "1" and table["3", "0.3"]["draws"] == str(draws(rows, "3", "0.3") - 1)
    assert {c["draws_left_out"] for k, c in table.items() if k != ("3", "0.3")} == {"0"}
    rows[i]["nonfinite_windows"] = "0"  # no window scored and none non-finite: impossible
    code, err = run_main("layersplit/cells.py", [str(write_rows(tmp_path / "skip.csv", rows)), "--write-cells"], capsys)
    assert code == 2 and f"skip.csv:{i + 2}: scored_tokens is 0 and nonfinite_windows 0" in err


def draws(rows, split, p) -> int:
    return sum(r["split"] == split and r["dropout"] == p and r["link"] == "dropout" for r in rows)


def test_a_resumed_sweep_recomputes_rows_with_invalid_values(tiny_llama, tmp_path, capsys):
    from test_sweep import TOKENS, rows_by_key, run

    reference = run(tiny_llama, tmp_path / "ref.csv")
    path = tmp_path / "resumed.csv"
    shutil.copy(tmp_path / "ref.csv", path)
    shutil.copy(schema.windows_path(tmp_path / "ref.csv"), schema.windows_path(path))
    lines = path.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\r\n").split(",")
    for n, value in ((5, "nan"), (9, "-50")):  # two rows of split 0 with an impossible nll
        fields = lines[n - 1].split(",")
        fields[header.index("nll")] = value
        lines[n - 1] = ",".join(fields)
    path.write_text("".join(lines))
    assert len(TOKENS) == 150
    resumed = run(tiny_llama, path)  # rows_by_key inside: no duplicate rows
    err = capsys.readouterr().err
    assert "2 row(s) with invalid values taken out to be recomputed (line 5: nll is nan" in err
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert float(resumed[key]["nll"]) == pytest.approx(float(reference[key]["nll"]), rel=1e-6)
    assert all(schema.row_problem(r) is None for r in rows_by_key(path).values())


def test_a_torn_last_line_of_our_own_file_is_still_repaired_and_another_file_never(tmp_path):
    """The repair is for the sweep's own file only: a foreign file without a final newline keeps its bytes."""
    ours = tmp_path / "ours.csv"
    row = {c: "1" for c in schema.COLUMNS} | {
        "model": "m",
        "dataset": "d",
        "dtype": "float32",
        "link": "dropout",
        "modulation": "",
        "fading": "",
        "block_fading": "",
        "layers_on_ue": "2",
        "dropout": "0.1",
    }
    write_rows(ours, [row], schema.COLUMNS)
    whole = ours.read_bytes()
    ours.write_bytes(whole + b"m,d,15")
    store = sweep_store.ResultsStore(ours, {k: row[k] for k in schema.RUN_COLUMNS})
    assert ours.read_bytes() == whole and len(store.rows) == 1
    for name, data in (
        ("binary.bin", bytes(range(256)) * 4),
        ("text.txt", b"a,b\nno final newline"),
        ("surrogate.pth", (ROOT / "reward_predictor.pth").read_bytes()),
    ):
        other = tmp_path / name
        other.write_bytes(data)
        with pytest.raises(UserError, match="not a sweep results file"):
            sweep_store.ResultsStore(other, {k: row[k] for k in schema.RUN_COLUMNS})
        assert other.read_bytes() == data and not schema.windows_path(other).exists()


def test_a_surrogate_file_is_never_unpickled(tmp_path):
    """A .pth that holds an object besides tensors is refused before anything in it runs."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("code ran",))

    torch.save({"format": surrogate.FORMAT, "payload": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="holds Python objects besides tensors"):
        surrogate.load(tmp_path / "evil.pth")
    assert not marker.exists()


def test_a_surrogate_with_bad_normalisation_or_weights_is_refused(tmp_path):
    good = surrogate.load(ROOT / "reward_predictor_wireless.pth")
    state = good.net.state_dict()
    norm = {k: getattr(good, k).tolist() for k in ("in_mean", "in_std", "out_mean", "out_std")}
    for name, blob, message in (
        ("short.pth", {"normalisation": {**norm, "in_mean": [0.0, 0.0]}}, "in_mean must be 3 finite number"),
        ("zero-std.pth", {"normalisation": {**norm, "out_std": [1.0, 0.0, 1.0]}}, "out_std must be 3 finite"),
        (
            "nan-weights.pth",
            {"state_dict": {**state, "fc.0.bias": state["fc.0.bias"] * float("nan")}},
            "NaN or infinite",
        ),
        ("unknown-form.pth", {"form": "telepathy"}, "damaged layersplit-rsm/1 file"),
    ):
        torch.save(
            {"format": surrogate.FORMAT, "form": "wireless", "state_dict": state, "normalisation": norm, **blob},
            tmp_path / name,
        )
        with pytest.raises(UserError, match=message):
            surrogate.load(tmp_path / name)
