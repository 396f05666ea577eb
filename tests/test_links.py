"""Tests of layersplit.links: each link answers what crosses, packets, bits, air time and latency terms as
the radio modules' own functions do; the name -> class mapping is the only place link names are compared."""

from __future__ import annotations

import ast
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from layersplit import UserError, channel, compute, grid, links, nr, protect_arq, uplink

REPO = Path(__file__).resolve().parents[1]
CFG = channel.LinkConfig(snr_db=12.0, elements_per_packet=8)
NR_CFG = channel.LinkConfig(snr_db=10.0)


def test_the_mapping_holds_the_cli_names():
    assert tuple(links.LINKS) == grid.LINK_MODES and tuple(links.SERVED) == grid.SERVED_LINKS
    assert [links.LINKS[n].physical for n in grid.LINK_MODES] == [False, True, True, True, True, True, True]
    assert not links.SERVED["none"].physical


@pytest.mark.parametrize("name", ["nr5g", "", "Erasure", "none-such"])
def test_make_link_refuses_an_unknown_name(name):
    with pytest.raises(UserError, match="unknown link"):
        links.make_link(name, CFG)


def test_make_link_builds_each_class():
    assert links.make_link("dropout", p=0.3) == links.OriginalLink(0.3)
    for name in ("erasure", "awgn", "bitflip", "nr", "burst", "nr_burst"):
        link = links.make_link(name, CFG)
        assert type(link) is links.LINKS[name] and link.cfg == CFG and link.name == name
    assert isinstance(links.make_link("none", CFG), links.LossFreeLink)
    with pytest.raises(UserError, match="outside"):
        links.make_link("dropout", p=1.5)


def test_losses_are_the_radio_modules():
    assert links.ErasureLink(CFG).loss == channel.packet_error_rate(CFG)
    assert links.ErasureLink(CFG).ber == 0.0
    ber = channel.average_ber(CFG.modulation, CFG.snr_db, CFG.fading, CFG.nakagami_m)
    assert links.BitflipLink(CFG).ber == ber and links.BitflipLink(CFG).loss == 0.0
    assert links.AwgnLink(CFG).loss == 0.0 == links.AwgnLink(CFG).ber
    point = nr.operating_point(NR_CFG.snr_db)
    assert links.NrLink(NR_CFG).loss == point.residual
    assert links.NrLink(NR_CFG).elements_per_packet == nr.elements_per_tb(point, NR_CFG.bits_per_element)
    assert links.ErasureLink(CFG).elements_per_packet == 8 and links.OriginalLink(0.1).elements_per_packet == 1


def test_uncoded_bits_and_air_time_are_channels():
    for link in (links.ErasureLink(CFG), links.AwgnLink(CFG), links.BitflipLink(CFG)):
        bits, seconds = link.air(12 * 64)
        assert bits == channel.payload_bits(CFG, 12, 64) and seconds == channel.tx_latency_s(CFG, 12, 64)
        assert link.tx_s(12, 64) == channel.tx_latency_s(CFG, 12, 64)
        assert link.tx_s(12, 64, withheld=0.3) == channel.tx_latency_s(CFG, 12, 64, 0.3)
        cost = protect_arq.protected_path(CFG, 12, 4, 64)  # the design in use, PROTECT_PATH
        assert link.protected_cost(12, 4, 64) == cost and cost.unit_loss > 0  # coded: a residual TB loss
        assert link.tx_s(12, 64, protect=4) == channel.tx_latency_s(CFG, 12, 64) + cost.air_s
        assert link.protected_air(12, 4, 64) == (cost.air_bits, cost.air_s)
        assert link.protected_air(12, 0, 64) == (0.0, 0.0)
        counted = protect_arq.protected_path(CFG, 12, 4, 64, "counted")
        assert (counted.air_bits, counted.air_s) == (
            channel.protected_air_bits(CFG, 12, 4, 64),
            channel.protected_tx_s(CFG, 12, 4, 64),
        )
    # int8's scales: their bits added to the packets', on air at the link rate
    bits, seconds = links.ErasureLink(CFG).air(12 * 64, scale_bits=32 * 12)
    assert bits == channel.payload_bits(CFG, 12, 64) + 32 * 12
    assert seconds == bits / channel.achievable_rate_bps(CFG)


def test_nr_bits_and_air_time_are_nrs():
    link = links.NrLink(NR_CFG)
    assert link.air(5000) == nr.transfer(10.0, 5000, 16)
    assert link.air(5000, scale_bits=32 * 7) == nr.transfer(10.0, 5000 + 14, 16)  # the scales fill TBs too
    assert link.tx_s(512, 576, withheld=0.25) == nr.tx_latency_s(10.0, 512, 576, 16, 0.25)
    assert link.transfer(5000, 9, 576, 0, 16, lambda: 1 / 0) == nr.transfer(10.0, 5000, 16)
    with pytest.raises(ValueError, match="not modelled on the NR link"):
        link.tx_s(512, 576, protect=4)
    with pytest.raises(UserError, match="not modelled on the NR link"):
        links.NrLink.check_protect(4)
    links.NrLink.check_protect(0)


def test_split_hook_transfer_per_link():
    """What link.SplitLink records per transfer: the original's bytes and random delay, else the air's."""
    original = links.OriginalLink(0.2)
    bits, delay = original.transfer(300, 3, 100, 4, 16, lambda: 0.007)
    assert (bits, delay) == (300 * 16 + channel.protected_payload_bits(3, 4, 100, 16), 0.007)
    assert math.isnan(original.tx_s(3, 100))  # no air time: its delay is a draw per transfer
    erasure = links.ErasureLink(CFG)
    bits, seconds = erasure.transfer(300, 3, 100, 4, 16, lambda: 1 / 0)
    cost = protect_arq.protected_path(CFG, 3, 4, 100)
    assert bits == channel.payload_bits(CFG, 3, 100) + cost.air_bits
    assert seconds == channel.tx_latency_s(CFG, 3, 100) + cost.air_s
    assert erasure.transfer(300, 3, 100, 0, 16, None) == erasure.air(300)


def test_loss_free_link_sends_nothing_on_air():
    link = links.LossFreeLink(CFG)
    assert link.air(1000, 64) == (0, 0.0) and link.protected_air(3, 4, 100) == (0.0, 0.0)
    assert (link.loss, link.ber) == (0.0, 0.0) and link.elements_per_packet == CFG.elements_per_packet
    kept, flipped = link.deliver(np.zeros(16, np.uint8), 5, 0.0, 0.0, None)
    assert kept.tolist() == list(range(5)) and flipped == 0


def test_at_changes_only_the_snr():
    link = links.NrLink(NR_CFG).at(20)
    assert type(link) is links.NrLink and link.cfg == channel.LinkConfig(snr_db=20.0)
    assert links.ErasureLink(CFG).at(3.0).cfg == channel.LinkConfig(snr_db=3.0, elements_per_packet=8)


def test_impairments_draw_as_the_engine_primitives():
    """Each link's transfer goes through the engine: the masks of the primitives at the same seed."""
    x = torch.randn(2, 5, 16)
    got, impaired, sent = uplink.impair(x, links.direct(0.3), uplink.generator(7))
    lost, _ = uplink.lost_elements(x.numel(), 1, 0.3, 0.0, uplink.generator(7))
    assert torch.equal(got, x.masked_fill(lost.view(x.shape), 0.0)) and impaired == int(lost.sum()) and sent == 160
    cfg = channel.LinkConfig(snr_db=2.0, elements_per_packet=4)
    imp = links.physical(cfg, "erasure", withheld=0.2)
    got, _, sent = uplink.impair(x, imp, uplink.generator(3))
    lost, kept = uplink.lost_elements(x.numel(), 4, channel.packet_error_rate(cfg), 0.2, uplink.generator(3))
    assert torch.equal(got, x.masked_fill(lost.view(x.shape), 0.0)) and sent == int(kept)
    noisy, impaired, _ = uplink.impair(x, links.physical(cfg, "awgn"), uplink.generator(3))
    assert torch.equal(noisy, uplink.add_noise(x, 2.0, cfg.fade_m, 4, uplink.generator(3))) and impaired == x.numel()


def test_impairment_asks_its_link():
    imp = links.physical(CFG, "bitflip", withheld=0.5)
    assert imp.mode == "bitflip" and imp.channel == CFG and imp.elements_per_packet == 8
    assert imp.element_loss == 0.5 + 0.5 * -math.expm1(16 * math.log1p(-imp.ber))
    assert links.physical(CFG, "awgn", withheld=0.25).element_loss == 0.25
    assert links.direct(0.1).channel is None and links.direct(0.1).element_loss == 0.1
    with pytest.raises(UserError, match="unknown link mode 'dropout' for a channel"):
        links.physical(CFG, "dropout")
    with pytest.raises(UserError, match="16 or 32 bits per element, not 8"):
        links.physical(channel.LinkConfig(bits_per_element=8), "bitflip")
    with pytest.raises(UserError, match=r"NR link \(--link nr\)"):
        links.physical(NR_CFG, "nr").protecting(2)


def test_latency_breakdown_takes_a_link_or_a_bare_config():
    dims = compute.SMOLLM2_135M
    assert compute.latency_breakdown(CFG, dims, 3, 64) == compute.latency_breakdown(links.ErasureLink(CFG), dims, 3, 64)
    nr_times = compute.latency_breakdown(links.NrLink(NR_CFG), dims, 3, 64, phase="decode")
    assert nr_times["tx_s"] == nr.tx_latency_s(10.0, 1, 576, 16)


def test_one_latency_table_for_every_link():
    models = {"smollm2-135m": compute.SMOLLM2_135M}
    uncoded = compute.latency_table([10.0], models, 8, links.ErasureLink(CFG))
    coded = compute.latency_table([10.0], models, 8, links.NrLink(NR_CFG))
    assert len(uncoded) == len(coded) == 2 * 30
    assert list(uncoded[0])[7:12] == ["modulation", "fading", "bandwidth_hz", "rate_bps", "payload_bits"]
    assert list(coded[0])[7:15] == [
        "mcs",
        "tb_size",
        "bler",
        "residual_tb_loss",
        "transmissions_per_tb",
        "frame",
        "goodput_bps",
        "air_bits",
    ]
    assert coded[0]["air_bits"] == nr.transfer(10.0, 8 * 576, 16)[0]


def test_serve_loss_words():
    assert links.SERVED["none"].loss_text(0.1, 0.2) == "loss-free"
    assert links.SERVED["erasure"].loss_text(0.1, 0.2) == "PER 0.1"
    assert links.SERVED["nr"].loss_text(0.1, 0.2) == "residual TB loss 0.1"
    assert links.SERVED["bitflip"].loss_text(0.1, 0.2) == "BER 0.2"
    assert [k.flips_bits for k in links.SERVED.values()] == [False, False, True, False]
    data = np.zeros(64, np.uint8)
    kept, flipped = links.BitflipLink(CFG).deliver(data, 8, 0.0, 0.5, uplink.generator(1))
    assert kept.tolist() == list(range(8)) and flipped == int(np.unpackbits(data).sum()) > 0
    kept, _ = links.ErasureLink(CFG).deliver(data, 8, 0.5, 0.0, uplink.generator(1))
    assert kept.tolist() == np.flatnonzero(~uplink.lost_packets(8, 0.5, uplink.generator(1)).numpy()).tolist()


# --- the layout: names compared only in links.py, no import circle among the radio and compute modules ---
LINK_NAMES = set(grid.LINK_MODES) | set(grid.SERVED_LINKS)
ASKING_MODULES = [
    "layersplit/uplink.py",
    "layersplit/link.py",
    "layersplit/compute.py",
    "layersplit/channel.py",
    "layersplit/channel_cli.py",
    "layersplit/nr.py",
    "layersplit/nr_sim.py",
    "layersplit/nr_cli.py",
    "layersplit/grid.py",
    "layersplit/sweep.py",
    "layersplit/sweep_store.py",
    "layersplit/sweep_run.py",
    "layersplit/operating_point.py",
    "layersplit/serving/ue.py",
    "layersplit/serving/simulated_uplink.py",
    "layersplit/serving/roles.py",
    "serve.py",
    "add_noise.py",
]


def _compared_names(path: Path) -> list[int]:
    """Lines where a link's mode (an expression naming link or mode) is compared with a link name: a fading
    named awgn is no link."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            constants = [c for s in sides for c in ([s] if isinstance(s, ast.Constant) else getattr(s, "elts", []))]
            named = any(isinstance(c, ast.Constant) and c.value in LINK_NAMES for c in constants)
            subjects = [ast.unparse(s).lower() for s in sides if not isinstance(s, (ast.Constant, ast.Tuple))]
            if named and any("link" in t or "mode" in t for t in subjects):
                lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("module", ASKING_MODULES)
def test_no_link_name_is_compared_outside_the_mapping(module):
    assert _compared_names(REPO / module) == []


def test_the_results_store_asks_the_link_which_rows_carry_its_setup():
    """A resumed sweep's link set-up is compared on the rows of the links that carry it in LINK_COLUMNS
    (the uncoded links: modulation, fading, packets); the original's p has none, nr.py holds NR's."""
    assert [name for name, kind in links.LINKS.items() if kind.rows_carry_setup] == [
        "erasure",
        "awgn",
        "bitflip",
        "burst",
    ]
    assert not any(kind.rows_carry_setup for name, kind in links.SERVED.items() if name not in links.LINKS)


def test_snr_conditions_ask_the_link_whether_it_is_physical():
    for name, kind in links.LINKS.items():
        if kind.physical:
            assert [c.link for c in grid.make_conditions([], [10.0], name)[1:]] == [name]
        else:
            with pytest.raises(UserError) as e:
                grid.make_conditions([], [10.0], name)
            physical = "erasure, awgn, bitflip, nr, burst, nr_burst"
            assert str(e.value) == f"SNR conditions need a physical link: {physical}, not {name!r}"
    for name in ("none", "foo"):  # serve.py's loss-free link, and no link at all
        with pytest.raises(UserError, match=f"need a physical link: .*, not {name!r}"):
            grid.make_conditions([], [10.0], name)


def test_the_check_catches_a_string_test(tmp_path):
    bad = tmp_path / "bad.py"
    lines = ['if imp.mode == "nr":', 'if r["link"] not in ("dropout", "x"):', 'if fading == "awgn":']
    bad.write_text("".join(f"{line}\n    pass\n" for line in lines))
    assert _compared_names(bad) == [1, 3]


def _module_imports(name: str) -> set[str]:
    """The layersplit modules a module imports at its top level (imports inside functions are left out)."""
    tree = ast.parse((REPO / "layersplit" / f"{name}.py").read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {a.name for a in node.names}
    return found


def test_no_import_circle_among_the_radio_and_compute_modules():
    radio = ["channel", "nr", "links", "compute", "uplink", "wire", "grid", "channel_cli", "nr_sim", "nr_cli"]
    graph = {m: _module_imports(m) & set(radio) for m in radio}
    order = []
    while graph:  # peel modules that import nothing left: a circle would stop this
        leaves = sorted(m for m, deps in graph.items() if not deps - set(order))
        assert leaves, f"import circle among {sorted(graph)}"
        order += leaves
        graph = {m: d for m, d in graph.items() if m not in leaves}
    assert order.index("links") < order.index("compute")
    assert order.index("channel") < order.index("nr") < order.index("links")
    assert order.index("compute") < order.index("channel_cli") < order.index("nr_sim") < order.index("nr_cli")


def test_the_random_delay_is_drawn_only_by_the_original():
    rng = random.Random(0)
    assert links.OriginalLink(0.1).transfer(10, 1, 10, 0, 16, lambda: rng.uniform(0.005, 0.01))[1] == pytest.approx(
        random.Random(0).uniform(0.005, 0.01)
    )


def test_a_commands_link_settings_end_with_it(capsys):
    """The scripts set the links' module constants (--mcs-rule, --nr-frame, --residual-read, --protect-path) for
    their run only: a second command in the same process (a test, a notebook) starts from the defaults."""
    from layersplit import channel_cli, distributed, nr_cli, nr_frame

    defaults = distributed.link_settings()
    assert nr_cli.main(["--snr-db", "10", "--residual-read", "bound", "--frame", "FDD", "--json"]) == 0
    assert channel_cli.main(["--snr-db", "10", "--protect-path", "arq", "--json"]) == 0
    assert distributed.link_settings() == defaults
    with distributed.link_settings_set(mcs_rule="reliable"):
        assert nr.MCS_RULE == "reliable" and distributed.link_settings()["frame"] == nr_frame.FRAME
    assert distributed.link_settings() == defaults
    with pytest.raises(ValueError, match="not a link setting"):
        with distributed.link_settings_set(rule="reliable"):
            pass
    capsys.readouterr()
