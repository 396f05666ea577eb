"""The prose findings of docs/protected-path.md and docs/nr-link.md (and the NR policies' line of
docs/surrogate-and-rl.md) against the committed cells they read: each number the text quotes is recomputed here
from the result file and must appear in the text as quoted (the tables beside the text are generated; this holds
the sentences to the same files)."""

from __future__ import annotations

import csv
import json
import re

from conftest import ROOT

DOC = ROOT / "docs" / "protected-path.md"
NR_DOC = ROOT / "docs" / "nr-link.md"
WITHIN = 1.1  # "within 10% of clean"


def text(doc=DOC) -> str:
    return re.sub(r"\s+", " ", doc.read_text(encoding="utf-8"))  # a phrase may break across lines


def cells(name: str, key: str) -> tuple[float, float, dict]:
    """(clean perplexity, clean accuracy, {(split, key's value, K): row}) of a protect sweep's cells file."""
    rows = list(csv.DictReader(open(ROOT / "results" / name, newline="")))
    clean = next(r for r in rows if r["link"] == "dropout" and float(r["dropout"]) == 0 and r["protect"] == "0")
    out = {}
    for r in rows:
        if r[key] and float(r[key]) > 0:  # the impaired cells (not the clean ones)
            out[(int(r["split"]), float(r[key]), int(r["protect"]))] = r
    return float(clean["ppl"]), float(clean["token_accuracy"]), out


def span(values, fmt: str = "{:.0f}", sep: str = "-") -> str:
    return f"{fmt.format(min(values))}{sep}{fmt.format(max(values))}"


def test_the_findings_against_the_snr_are_the_cells():
    clean, clean_acc, cell = cells("sweep_protect_snr_smollm2-135m_cells.csv", "snr_db")
    splits, snrs = sorted({k[0] for k in cell}), sorted({k[1] for k in cell})
    doc = text()
    assert f"clean perplexity {clean:.2f}, accuracy {clean_acc:.3f}" in doc

    def within_from(k: int) -> float:  # the lowest SNR from which every split stays within 10% of clean
        good = [s for s in snrs if all(float(cell[(sp, s, k)]["ppl"]) <= WITHIN * clean for sp in splits)]
        assert good == [s for s in snrs if s >= good[0]]
        return good[0]

    per = {s: float(cell[(splits[0], s, 0)]["dropout"]) for s in snrs}  # the erasure link's PER at each SNR
    zero, full = within_from(0), within_from(64)
    assert (
        f"within 10% of clean from {zero:.0f} dB on (PER {per[zero]:.0%}) without protection, and from "
        f"{full:.0f} dB on (PER {per[full]:.0%}) with K = 64, at every one of the {len(splits)} splits" in doc
    )
    ppl = {k: [float(cell[(sp, 10.0, k)]["ppl"]) for sp in splits] for k in (0, 64)}
    acc = {k: [float(cell[(sp, 10.0, k)]["token_accuracy"]) for sp in splits] for k in (0, 64)}
    assert f"At 10 dB (PER {per[10.0]:.0%}) nothing recovers" in doc and min(ppl[64]) > WITHIN * clean
    assert (
        f"(perplexity {span(ppl[0], '{:,.0f}', ' to ')}, accuracy {span([100 * a for a in acc[0]])}%) into a "
        f"usable one ({span(ppl[64])}, accuracy {span(acc[64], '{:.2f}')} against {clean_acc:.3f} clean)" in doc
    )
    at15 = {sp: float(cell[(sp, 15.0, 0)]["ppl"]) for sp in splits}
    assert f"at 15 dB splits 12 and 16 are at {at15[12]:.0f} and {at15[16]:.0f}" in doc
    assert f"splits 1 and 10 at {at15[1]:.0f} and {at15[10]:.0f}" in doc
    k4, k64 = ([float(cell[(sp, 15.0, k)]["ppl"]) for sp in splits] for k in (4, 64))
    assert f"(15 dB: {span(k4, '{:.1f}')} at K = 4, {span(k64, '{:.1f}')} at K = 64)" in doc
    one = {sp: float(cell[(sp, 10.0, 1)]["ppl"]) for sp in (24, 12, 1)}
    assert f"(10 dB, K = 1: {one[24]:,.0f} at split 24, {one[12]:,.0f} at 12, {one[1]:,.0f} at 1)" in doc


def test_the_findings_against_p_are_the_cells():
    clean, _, cell = cells("sweep_protect_p_smollm2-135m_cells.csv", "dropout")
    splits, ps = sorted({k[0] for k in cell}), sorted({k[1] for k in cell})
    doc = text()

    def good(sp: int, k: int) -> list[float]:  # the p at which the split stays within 10% of clean
        return [p for p in ps if float(cell[(sp, p, k)]["ppl"]) <= WITHIN * clean]

    assert all(good(sp, 0) == [ps[0]] for sp in splits)
    assert f"without protection perplexity is within 10% of clean only at p = {ps[0]:g} at every split" in doc
    up_to_01 = [sp for sp in splits if good(sp, 16)[:2] == ps[:2]]
    assert f"with K = 16 up to p = {ps[1]:g} at {len(up_to_01)} of the {len(splits)} splits" in doc
    all_p = [sp for sp in splits if good(sp, 64) == ps]
    assert f"(K = 64: up to p = {ps[2]:g} at splits {', '.join(map(str, all_p[:-1]))} and {all_p[-1]})" in doc
    k64 = [float(cell[(sp, 0.3, 64)]["ppl"]) for sp in splits]
    assert (
        f"p = 0.3, costs {span([100 * (v / clean - 1) for v in k64])}% of perplexity "
        f"({span(k64, '{:.1f}')} against {clean:.2f})" in doc
    )
    k0 = [float(cell[(sp, 0.3, 0)]["ppl"]) / clean for sp in splits]
    assert f"instead of a factor of {span(k0)}" in doc


def test_which_elements_is_the_rule_file():
    rows = list(csv.DictReader(open(ROOT / "results" / "protect_rule.csv", newline="")))
    ppl = {(int(r["split"]), float(r["snr_db"]), int(r["k"]), r["rule"]): float(r["ppl"]) for r in rows}
    cases = sorted({k[:3] for k in ppl})
    ratios = {(k, rule): ppl[k + (rule,)] / ppl[k + ("top-K",)] for k in cases for rule in ("fixed-K", "fixed-bits")}
    worse = [r for r in ratios.values() if r > 1]
    better = [1 - r for r in ratios.values() if r <= 1]
    doc = text()
    assert f"the fixed set was worse than top-K in {len(worse)} of {len(ratios)} comparisons" in doc
    assert f"better by at most {100 * max(better):.1f}% in the other {len(better)}" in doc

    def at(snr: float, rule: str) -> list[float]:
        return [r for (k, ru), r in ratios.items() if k[1] == snr and ru == rule]

    assert (
        f"the fixed set's perplexity is {span(at(10.0, 'fixed-K'), '{:.1f}')}x top-K's at the same K and "
        f"{span(at(10.0, 'fixed-bits'), '{:.1f}')}x at the same bits" in doc
    )
    split12 = [ppl[(12, 10.0, 16, rule)] for rule in ("top-K", "fixed-K", "fixed-bits")]
    assert (
        "(for example split 12, K = 16: top-K {:.1f}, fixed {:.1f}, fixed at equal bits {:.1f})".format(*split12) in doc
    )
    spread = max(
        max(ppl[k + (r,)] for r in ("top-K", "fixed-K", "fixed-bits"))
        / min(ppl[k + (r,)] for r in ("top-K", "fixed-K", "fixed-bits"))
        for k in cases
        if k[1] == 20.0
    )
    assert spread < 1.02 and "at 20 dB (PER 0.02) all three are within 2%" in doc


def snr_cells(name: str) -> tuple[float, dict]:
    """(clean perplexity, {(split, SNR): row}) of an SNR sweep's cells file."""
    rows = list(csv.DictReader(open(ROOT / "results" / name, newline="")))
    clean = next(r for r in rows if r["link"] == "dropout")
    return float(clean["ppl"]), {(int(r["split"]), float(r["snr_db"])): r for r in rows if r["snr_db"]}


def test_the_nr_links_findings_against_the_snr_are_the_cells():
    clean, target = snr_cells("sweep_nr_snr_smollm2-135m_cells.csv")  # the default rule: 10% first-transmission BLER
    _, reliable = snr_cells("sweep_nr_reliable_snr_smollm2-135m_cells.csv")
    uncoded_clean, uncoded = snr_cells("sweep_snr_qpsk_cells.csv")
    doc = text(NR_DOC)
    splits = sorted({k[0] for k in target})
    assert splits == [4, 12, 24] and uncoded_clean == clean and f"clean perplexity {clean:.2f}" in doc

    def ppl(cells, split, snr):
        return float(cells[(split, snr)]["ppl"])

    def within_from(cells, split) -> float:  # the lowest SNR from which the split stays within 10% of clean
        snrs = sorted(s for sp, s in cells if sp == split)
        return min(s for s in snrs if all(ppl(cells, split, t) <= WITHIN * clean for t in snrs if t >= s))

    assert {within_from(uncoded, sp) for sp in splits} == {20.0}
    assert "within 10% of clean from 20 dB on at splits 4, 12 and 24" in doc
    first = {sp: within_from(reliable, sp) for sp in splits}
    assert f"from {first[4]:g} dB (split 4) or {first[12]:g} dB (splits 12 and 24) on" in doc and first[12] == first[24]
    snrs = sorted({s for _, s in reliable})
    printed = [
        s
        for s in snrs
        if all(f"{ppl(reliable, sp, t):.1f}" == f"{clean:.1f}" for sp in splits for t in snrs[snrs.index(s) :])
    ]
    assert f"equal to clean to the printed digit from {min(printed):g} dB on" in doc
    zero = [ppl(reliable, sp, 0.0) for sp in splits]
    acc = [float(reliable[(sp, 0.0)]["token_accuracy"]) for sp in splits]
    assert "at 0 dB perplexity is {:.1f}, {:.1f} and {:.1f}".format(*zero) in doc
    assert f"(accuracy {span(acc, '{:.2f}')})" in doc
    # the target rule's relapse: its residual (the cells' dropout column) and what it costs
    loss = {s: float(target[(4, s)]["dropout"]) for s in (10.0, 17.5, 20.0, 35.0, 40.0)}
    assert all(1e-3 <= loss[s] < 2e-3 for s in (10.0, 17.5, 20.0))
    assert "the residual TB loss after HARQ climbs to 1-2e-3 (10, 17.5 and 20 dB;" in doc
    worst10 = max(splits, key=lambda sp: ppl(target, sp, 10.0))
    assert f"costs up to {ppl(target, worst10, 10.0) / clean - 1:.0%} of perplexity" in doc
    assert f"at 10 dB ({ppl(target, worst10, 10.0):.1f} at split {worst10})" in doc
    worst20 = max(splits, key=lambda sp: ppl(target, sp, 20.0))
    assert (
        f"and {ppl(target, worst20, 20.0) / clean - 1:.0%} at 20 dB ({ppl(target, worst20, 20.0):.1f} at split" in doc
    )
    assert f"floor leaves {100 * loss[40.0]:.1f}-{100 * loss[35.0]:.1f}% of TBs lost" in doc
    at35 = [ppl(target, sp, 35.0) for sp in splits]
    acc35 = [float(target[(sp, 35.0)]["token_accuracy"]) for sp in splits]
    assert "(perplexity {:.1f}, {:.1f} and {:.1f} at 35 dB,".format(*at35) in doc
    assert f"accuracy {span(acc35, '{:.2f}')})" in doc
    # where the link is bad the split matters
    minus5 = [ppl(target, sp, -5.0) for sp in splits]
    assert f"at -5 dB (residual {float(target[(4, -5.0)]['dropout']):.0%}) perplexity is " in doc
    assert "{:.0f}, {:.0f} and {:.0f} at splits 4, 12 and 24".format(*minus5) in doc


def test_the_nr_links_deep_point_at_the_reliable_rules_10_db_is_quoted_as_measured():
    from layersplit import nr

    tails = nr.point_counts(nr.read_table(ROOT / "results" / "nr_bler_tails.csv", repeats=True))
    errors, slots = tails[(5, 16.0)]
    lookup = nr.load_table(tails=None)[5](16.0)  # the table's extrapolation where 10 dB's residual is read
    doc = text(NR_DOC)
    assert errors == 0 and f"none of {slots:,} TBs was lost" in doc
    assert f"the extrapolation, {lookup:.2g}, lies inside the interval" in doc
    assert f"the bound, {nr.clopper_pearson(errors, slots)[1]:.2g}, meets the target" in doc
    assert nr.clopper_pearson(errors, slots)[1] <= nr.RESIDUAL_TARGET


def test_the_nr_links_deep_point_at_the_reliable_rules_5_db_is_quoted_as_measured():
    from layersplit import nr

    tails = nr.point_counts(nr.read_table(ROOT / "results" / "nr_bler_tails.csv", repeats=True))
    errors, slots = tails[(3, 11.0)]
    bound = nr.clopper_pearson(errors, slots)[1]
    lookup = nr.load_table(tails=None)[3](11.0)  # the table's extrapolation where 5 dB's residual is read
    at5 = nr.operating_point(5.0, rule="reliable")
    doc = text(NR_DOC)
    assert errors == 0
    assert "11 dB, where the reliable rule's 5 dB choice" in doc and f"none of {slots:,} TBs was lost either" in doc
    assert lookup > bound and f"the table's lookup alone, {lookup:.2g}, lies above the interval" in doc
    assert at5.mcs == 3 and at5.residual <= nr.RESIDUAL_TARGET and nr.residual_bound(nr.load_table()[3], 5.0) <= bound
    assert f"the residual at 5 dB is {at5.residual:.2g}: within the target, and certified" in doc


def test_the_nr_links_deep_points_of_the_reliable_rule_are_quoted_as_measured():
    """MCS 14 at 21 dB, the one deep point where the table's extrapolation was optimistic, and the points that
    certify the reliable rule's choices from 15 dB up, against the tails file."""
    from layersplit import nr, nr_sim

    tails = nr.point_counts(nr.read_table(ROOT / "results" / "nr_bler_tails.csv", repeats=True))
    alone, pooled = nr.load_table(tails=None), nr.load_table()
    errors, slots = tails[(14, 21.0)]
    low, high = nr.clopper_pearson(errors, slots)
    lookup = alone[14](21.0)
    doc = " ".join(text(NR_DOC).split())
    assert lookup < low and f"{errors} of {slots:,} TBs were lost: the table's lookup alone, {lookup:.2g}," in doc
    assert f"lies below the interval [{low:.2g}, {high:.2g}], the one deep point where the extrapolation" in doc
    optimistic = [point for point, (e, n) in tails.items() if alone[point[0]](point[1]) < nr.clopper_pearson(e, n)[0]]
    assert optimistic == [(14, 21.0)]
    assert f"Pooled, the curve there is {pooled[14](21.0):.2g}, above the target" in doc
    assert nr.choose_mcs(alone, 15.0, "reliable", residual_read="extrapolated").mcs == 14
    assert nr.choose_mcs(pooled, 15.0, "reliable").mcs == 11 and tails[(11, 21.0)] == (0, slots)
    at15 = nr.operating_point(15.0, rule="target")
    assert at15.mcs == 14 and f"MCS 14 at 15 dB, loses {at15.residual:.2g} of its TBs rather than" in doc
    assert f"rather than {nr.failed_all(alone[14], 15.0, 4):.2g}" in doc
    points = nr_sim.reliable_points(pooled)
    listed = ", ".join(f"{m} at {s:g}" for m, s in points[1:-1]) + f" and {points[-1][0]} at {points[-1][1]:g})"
    assert f"(`nr_sim.reliable_points`: MCS {points[0][0]} at {points[0][1]:g} dB, {listed}" in doc
    assert f"The tails measure a point of {slots:,} slots wherever the extrapolation's choice at" in doc
    assert all(tails[point] == (0, slots) for point in points) and "None of them lost a TB" in doc
    deeper = [(m, s) for m, s in points if s > 21.0]
    assert "(MCS " + ", ".join(f"{m} at {s:g}" + (" dB" if i == 0 else "") for i, (m, s) in enumerate(deeper)) in doc


def test_the_nr_ppo_policies_are_the_policy_file():
    """docs/nr-link.md's reading of the NR wireless PPO policies (a switch per seed from withholding much to
    little, ending at split 1 with nothing withheld) against the policy file."""
    acts: dict[str, list] = {}
    for r in csv.DictReader(open(ROOT / "results" / "rl_wireless_nr_ppo_policy.csv", newline="")):
        acts.setdefault(r["policy"], []).append((float(r["value"]), int(float(r["split"])), float(r["withheld"])))
    seeds = sorted(p for p in acts if p.startswith("ppo_s"))
    lows, switches, highs, ends = [], [], [], []
    for policy in seeds:
        path = sorted(acts[policy])
        at = next(i for i, a in enumerate(path) if a[1:] != path[0][1:])  # the switch
        assert all(a[1:] == path[0][1:] for a in path[:at])
        lows.append(path[0][1:])
        switches.append(path[at][0])
        highs += [100 * a[2] for a in path[at:]]
        assert path[-1][1:] == (1, 0.0)
        ends.append(next(a[0] for a in path if a[1:] == (1, 0.0)))
        assert all(a[1:] == (1, 0.0) for a in path if a[0] >= ends[-1])
    (withheld,) = {w for _, w in lows}
    doc = " ".join(text(NR_DOC).split())
    assert f"withhold {withheld:.0%} of the activation below {span(switches)} dB (the seed decides where)" in doc
    low_splits = [str(sp) for sp, _ in lows]
    numbers = [p.removeprefix("ppo_s") for p in seeds]
    assert (
        f"(splits {', '.join(low_splits[:-1])} and {low_splits[-1]} for seeds {', '.join(numbers[:-1])} and "
        f"{numbers[-1]})" in doc
    )
    ending = f"end at split 1 with nothing withheld from {span(ends)} dB on"
    assert f"above it they withhold {span(highs)}% and {ending}" in doc
    (static,) = {a[1:] for a in acts["best-static"]}
    assert static[1] < withheld and static[1] * 100 <= max(highs)  # more sent below the switch, as much above
    assert f"The best static action (split {static[0]}, {static[1]:.0%} withheld) sends more than the" in doc
    optimum = [a[1] for a in acts["optimum"]]
    assert f"moves the split across the SNRs (from {min(optimum)} to {max(optimum)})" in doc
    rl_doc = " ".join(text(ROOT / "docs" / "surrogate-and-rl.md").split())  # its summary of the same policies
    assert f"(split {static[0]}, {static[1]:.0%} withheld; paired over seeds) by withholding {withheld:.0%}" in rl_doc
    assert f"below a switch at {span(switches)} dB and {span(highs)}% above it" in rl_doc
    returns = json.loads((ROOT / "results" / "rl_wireless_nr_ppo.json").read_text())["returns"]
    assert all(r["mean"] < 0 for r in returns.values()) and "every return is below 0" in doc
    best = returns["best-static"]
    assert best["learned_minus_this"] - best["learned_minus_this_ci95"] > 0  # "PPO beats the best static action"
    assert "and PPO beats the best static action" in doc
    assert returns["optimum"]["mean"] > best["mean"] and "the per-SNR optimum is far above the best static" in doc


def test_the_nr_decoders_early_stopping_is_quoted_as_measured():
    """docs/nr-link.md's early-stopping sentence against results/early_stop.json (bench/early_stop.py)."""
    report = json.loads((ROOT / "results" / "early_stop.json").read_text())
    points = report["points"]
    waterfall = [p for p in points if p["lost_full"] > 0]
    deep = [p for p in points if p["lost_full"] == 0]
    assert report["all_same"] and len(waterfall) == len(deep) == 2
    doc = text(NR_DOC)
    assert f"slot by slot, at all {len(points)} of its points" in doc
    lost = " and ".join(str(p["lost_full"]) for p in waterfall)
    mcs = " and ".join(str(p["mcs"]) for p in waterfall)
    assert f"({lost} of {waterfall[0]['slots']} on the waterfalls of MCS {mcs})" in doc
    iterations = " and ".join(f"{p['iterations_per_code_word_early']:.1f}" for p in deep)
    faster = " and ".join(f"{p['full_over_early_time']:.1f}x" for p in deep)
    where = ", ".join(f"MCS {p['mcs']} at {p['snr_db']:g} dB" for p in deep)
    assert f"the deep points {iterations} iterations a code block instead of 20, {faster} faster ({where})" in doc
