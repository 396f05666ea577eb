"""Every experiment of the pipeline, declared once: its command, its outputs, its scale per preset and,
where a committed file can stand in for it, that file and the spot check that recomputes part of it.

`python -m layersplit.pipeline` runs them (`make quick`, `make reproduce`, `make full`), the figures'
remedies name their commands, and the README's pipeline table is written from this list and the
timings file a run records. Light on purpose (no torch).

A command is a template: {R} the run's results folder, {OUT} the run's folder, {model} the model's file
key (its name with / replaced), {args} the preset's scale of this experiment, {logs} the logs folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import paper

TIMINGS = "timings.json"  # in a run's results folder: each step's commands and wall time (results/: make reproduce's)
PRESETS = ("quick", "reproduce", "full")  # toy scale (minutes), the committed scale, the paper's scale
EMBEDDED_KEY = paper.EMBEDDED_MODEL  # committed results exist for this model only
SNR_GRID = "0,2.5,5,7.5,10,12.5,15,17.5,20,22.5,25,27.5,30,32.5,35,37.5,40,42.5,45,47.5,50,52.5,55"  # Es/N0, dB
NR_SNR_GRID = "-7.5,-5,-2.5,0,2.5,5,7.5,10,12.5,15,17.5,20,22.5,25,27.5,30,35,40"  # the NR link's Es/N0, dB
AUTHORS_RSM = "../shared/reference/authors_reward_predictor.pth"  # the authors' surrogate: RL on it when present
NR_TABLE_ENV = "LAYERSPLIT_NR_BLER_TABLE"  # the NR runs read the run's own BLER table (layersplit.nr.TABLE_ENV)


@dataclass(frozen=True)
class Committed:
    """A committed result that `reproduce` takes instead of computing it, then checks by recomputing a part."""

    files: tuple[str, ...]  # copied into {R}; the first is required, the rest are copied where they exist
    check: str  # the spot check's command template, run after the copy; it fails when the part differs
    presets: tuple[str, ...] = ("reproduce",)  # the presets that take it (the others compute it)


@dataclass(frozen=True)
class Experiment:
    name: str  # the step's name: --only, the timings file's key
    what: str  # one line for the README's pipeline table
    command: str  # the command template after the Python interpreter
    scale: dict[str, str]  # preset -> {args}; a preset missing here uses "reproduce"'s
    outputs: tuple[str, ...] = ()  # files that show it complete (templates); none: the timings record alone
    committed: Committed | None = None
    model_args: bool = False  # runs the model: gets --model, --dataset and --device
    nr_table: bool = False  # reads the run's BLER table ({R}/nr_bler.csv) through NR_TABLE_ENV
    log: str = ""  # its output goes to this log file (template) instead of the terminal
    needs: str = ""  # a file (template) without which the step is left out (the authors' surrogate)
    always: bool = False  # cheap and reading everything before it: rerun every time (the figures)

    def args(self, preset: str) -> str:
        return self.scale.get(preset, self.scale.get("reproduce", ""))


def _sweep(name, what, output, scale, committed=None, **kw) -> Experiment:
    return Experiment(
        name,
        what,
        f"add_noise.py --sweep {{args}} --output {{R}}/{output}",
        scale,
        outputs=(f"{{R}}/{output}",),
        committed=committed,
        model_args=True,
        **kw,
    )


def _committed_sweep(stem: str, check: str, presets: tuple[str, ...] = ("reproduce",)) -> Committed:
    """results/STEM_smollm2-135m.csv with its cells (and windows) file, and a sub-grid recomputed against it."""
    path = f"results/{stem}_{EMBEDDED_KEY}"
    return Committed(
        (f"{path}.csv", f"{path}_cells.csv", f"{path}_windows.csv"),
        f"add_noise.py --sweep {{args}} {check} --output {{OUT}}/runs/check_{stem}_{{model}}.csv --verify {path}.csv",
        presets,
    )


LAYERS_FULL = "--splits all --draws 5 --max-tokens 0"  # every layer x 5 draws over the whole test text
WIRELESS = "--splits 1-10 --dropouts '' --snrs 10,15,20,25,30,40 --withheld 0.05,0.1,0.2,0.3 --draws 1 --max-tokens 512"
NR_WIRELESS = (
    "--splits 1-10 --dropouts '' --snrs=-5,0,5,10,15,20,30,40 --withheld 0.05,0.1,0.2,0.3 --draws 1 --max-tokens 512"
)
TRAIN = "train_rsm.py train --results-dir {R} --no-progress --ray"

EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(
        "demo",
        "the model's first conversion, then `add_noise.py` at the paper's fixed split, p = 0.1",
        "add_noise.py {args}",
        {"quick": "--max-tokens 256 --context-length 128 --stride 128", "reproduce": ""},
        model_args=True,
    ),
    _sweep(
        "sweep",
        "the surrogate's sweep: splits 1-10 x (clean + 8 p) x 8 draws, 4,096 tokens",
        "sweep_{model}.csv",
        {"quick": "--splits 1-10 --dropouts 0.1,0.3 --draws 2 --max-tokens 128", "reproduce": ""},
        Committed(
            tuple(f"results/sweep_{EMBEDDED_KEY}{s}.csv" for s in ("", "_cells", "_windows")),
            "add_noise.py --sweep {args} --splits 10 --dropouts 0.3 --output {OUT}/runs/sweep_check_{model}.csv "
            f"--verify {{R}}/sweep_{EMBEDDED_KEY}.csv",
        ),
    ),
    _sweep(
        "sweep_layers",
        "every-layer sweep for the `sweep` figure",
        "sweep_layers_{model}.csv",
        {
            "quick": "--splits 0-10 --dropouts 0.1,0.3 --draws 1 --max-tokens 128",
            "reproduce": "--splits all --draws 4 --max-tokens 256",
            "full": LAYERS_FULL,
        },
    ),
    _sweep(
        "sweep_wireless",
        "the wireless surrogate's sweep: splits 1-10 x 6 SNRs x 4 withheld shares",
        "sweep_wireless_{model}.csv",
        {
            "quick": "--splits 1-10 --dropouts '' --snrs 10,20,30 --withheld 0.2 --draws 1 --max-tokens 128",
            "reproduce": WIRELESS,
        },
    ),
    *(
        _sweep(
            f"sweep_snr_{m}",
            f"{m.upper()} over the uncoded link: 3 splits x 23 SNRs",
            f"sweep_snr_{m}.csv",
            {
                "quick": f"--link erasure --modulation {m} --splits 4,24 --dropouts '' --draws 1 --snrs 5,15,25,35 "
                "--max-tokens 128",
                "reproduce": f"--link erasure --modulation {m} --splits 4,12,24 --dropouts '' --draws 1 "
                f"--max-tokens 512 --snrs {SNR_GRID}",
            },
        )
        for m in ("bpsk", "qpsk", "16qam")
    ),
    _sweep(
        "sweep_protect_wireless",
        "the protected path: the wireless sweep x K in {1, 4, 16, 64} (the protect surrogate's)",
        "sweep_protect_wireless_{model}.csv",
        {
            "quick": "--splits 1-10 --dropouts '' --snrs 10,30 --withheld 0.2 --protects 4 --draws 1 --max-tokens 128",
            "reproduce": f"{WIRELESS} --protects 1,4,16,64",
        },
        _committed_sweep("sweep_protect_wireless", "--splits 6 --snrs 15 --withheld 0.1 --protects 4"),
    ),
    _sweep(
        "sweep_protect_snr",
        "the protected path: 13 splits x 6 SNRs x K",
        "sweep_protect_snr_{model}.csv",
        {
            "quick": "--splits 1,4,12,24 --dropouts '' --snrs 5,25 --protects 4 --draws 1 --max-tokens 128",
            "reproduce": "--splits 1-10,12,16,24 --dropouts '' --snrs 5,10,15,20,25,30 --protects 1,4,16,64 "
            "--draws 2 --max-tokens 1024",
        },
        _committed_sweep("sweep_protect_snr", "--splits 12 --snrs 10 --protects 1,16"),
    ),
    _sweep(
        "sweep_protect_p",
        "the protected path: 13 splits x 3 p x K",
        "sweep_protect_p_{model}.csv",
        {
            "quick": "--splits 1,4,12,24 --dropouts 0.1,0.3 --protects 4 --draws 1 --max-tokens 128",
            "reproduce": "--splits 1-10,12,16,24 --dropouts 0.02,0.1,0.3 --protects 1,4,16,64 --draws 2 "
            "--max-tokens 512",
        },
        _committed_sweep("sweep_protect_p", "--splits 4 --dropouts 0.3 --protects 4,64"),
    ),
    Experiment(
        "nr_table",
        "the 5G NR link's BLER table (Sionna Monte Carlo, about 40 min on 2 cores)",
        "-m layersplit.nr --table {R}/nr_bler.csv {args}",
        {"quick": "", "reproduce": ""},
        outputs=("{R}/nr_bler.csv",),
        committed=Committed(
            ("results/nr_bler.csv", "results/nr_bler_tails.csv"),  # the tails beside it: the link reads both
            "-m layersplit.nr {nr_check} --bler-table {R}/nr_bler.csv",
            PRESETS,
        ),
    ),
    _sweep(
        "sweep_nr_snr",
        "the NR link: 3 splits x 18 SNRs",
        "sweep_nr_snr_{model}.csv",
        {
            "quick": "--link nr --splits 4,24 --dropouts '' --draws 1 --snrs=-5,5,15 --max-tokens 128",
            "reproduce": f"--link nr --splits 4,12,24 --dropouts '' --draws 1 --max-tokens 512 --snrs={NR_SNR_GRID}",
        },
        nr_table=True,
    ),
    _sweep(
        "sweep_nr_reliable_snr",
        "the NR link with the reliable MCS rule: 3 splits x 18 SNRs",
        "sweep_nr_reliable_snr_{model}.csv",
        {
            "quick": "--link nr --mcs-rule reliable --splits 4,24 --dropouts '' --draws 1 --snrs=-5,5,15 "
            "--max-tokens 128",
            "reproduce": "--link nr --mcs-rule reliable --splits 4,12,24 --dropouts '' --draws 1 --max-tokens 512 "
            f"--snrs={NR_SNR_GRID}",
        },
        nr_table=True,
    ),
    _sweep(
        "sweep_nr_wireless",
        "the wireless grid over the NR link (its surrogate's)",
        "sweep_nr_wireless_{model}.csv",
        {
            "quick": "--link nr --splits 1-10 --dropouts '' --snrs 0,10,30 --withheld 0.2 --draws 1 --max-tokens 128",
            "reproduce": f"--link nr {NR_WIRELESS}",
        },
        _committed_sweep("sweep_nr_wireless", "--splits 6 --snrs 0 --withheld 0.1", ("reproduce", "full")),
        nr_table=True,
    ),
    Experiment(
        "nr_latency",
        "the NR link's latency table",
        "-m layersplit.nr --latency-table {R}/latency_breakdown_nr.csv",
        {},
        outputs=("{R}/latency_breakdown_nr.csv",),
        nr_table=True,
    ),
    Experiment(
        "nr_latency_fdd",
        "the NR link's latency table on FDD (every slot uplink), beside the TDD one",
        "-m layersplit.nr --frame FDD --latency-table {R}/latency_breakdown_nr_fdd.csv",
        {},
        outputs=("{R}/latency_breakdown_nr_fdd.csv",),
        nr_table=True,
    ),
    Experiment(
        "channel_table",
        "BER/PER, closed form and Monte Carlo",
        "-m layersplit.channel --table {R}/channel_ber_per.csv",
        {},
        outputs=("{R}/channel_ber_per.csv",),
    ),
    Experiment(
        "protect_table",
        "the protected path's cost",
        "-m layersplit.channel --protect-table {R}/protect_cost.csv",
        {},
        outputs=("{R}/protect_cost.csv",),
    ),
    Experiment(
        "protect_arq",
        "the protected path in a block fade: ARQ with a cap and round trips, and NR's coded path",
        "-m layersplit.channel --arq-table {R}/protect_arq.csv",
        {},
        outputs=("{R}/protect_arq.csv",),
        nr_table=True,
    ),
    Experiment(
        "latency_table",
        "latency breakdown of a split forward pass",
        "-m layersplit.channel --latency-table {R}/latency_breakdown.csv",
        {},
        outputs=("{R}/latency_breakdown.csv",),
    ),
    Experiment(
        "fit",
        "the surrogates (paper, wireless, protect, NR wireless) and their held-out metrics",
        "train_rsm.py fit --sweep {R}/sweep_{model}.csv --wireless-sweep {R}/sweep_wireless_{model}.csv "
        "--protect-sweep {R}/sweep_protect_wireless_{model}.csv --output {OUT}/reward_predictor.pth "
        "--wireless-output {OUT}/reward_predictor_wireless.pth --protect-output {OUT}/reward_predictor_protect.pth "
        "--nr-wireless-sweep {R}/sweep_nr_wireless_{model}.csv "
        "--nr-wireless-output {OUT}/reward_predictor_wireless_nr.pth --results-dir {R} {args}",
        {"quick": "--holdout-repeats 1", "reproduce": ""},
        outputs=tuple(f"{{OUT}}/reward_predictor{s}.pth" for s in ("", "_wireless", "_protect", "_wireless_nr")),
    ),
    Experiment(
        "rl_paper",
        "PPO, A2C and DQN x 3 seeds on the paper env with the SmolLM2 surrogate, each a Ray task",
        f"{TRAIN} --algo ppo,a2c,dqn --rsm {{OUT}}/reward_predictor.pth "
        "--run-dir {OUT}/runs/LayerSplit-Paper-v0 {args}",
        {
            "quick": "--seeds 0,1 --total-timesteps 10000 --eval-episodes 30",
            "reproduce": f"--seeds {paper.SEEDS} --total-timesteps 240000",
        },
        outputs=("{R}/rl_paper_ppo.json", "{R}/rl_paper_a2c.json", "{R}/rl_paper_dqn.json"),
        log="{logs}/rl_paper.log",
    ),
    Experiment(
        "rl_wireless",
        "PPO x 3 seeds on the wireless env (uncoded link)",
        f"{TRAIN} --env LayerSplit-Wireless-v0 --rsm {{OUT}}/reward_predictor_wireless.pth "
        "--run-dir {OUT}/runs/LayerSplit-Wireless-v0 {args}",
        {
            "quick": "--seeds 0,1 --total-timesteps 4000 --eval-episodes 30",
            "reproduce": f"--seeds {paper.SEEDS} --total-timesteps 100000",
        },
        outputs=("{R}/rl_wireless_ppo.json",),
        log="{logs}/rl_wireless_ppo.log",
    ),
    Experiment(
        "rl_wireless_nr",
        "PPO x 3 seeds on the wireless env (NR link)",
        f"{TRAIN} --env LayerSplit-Wireless-v0 --rsm {{OUT}}/reward_predictor_wireless_nr.pth "
        "--run-dir {OUT}/runs/LayerSplit-Wireless-v0-nr --name rl_wireless_nr_ppo {args}",
        {
            "quick": "--seeds 0,1 --total-timesteps 4000 --eval-episodes 30",
            "reproduce": f"--seeds {paper.SEEDS} --total-timesteps 100000",
        },
        outputs=("{R}/rl_wireless_nr_ppo.json",),
        log="{logs}/rl_wireless_nr_ppo.log",
    ),
    Experiment(
        "rl_protect",
        "PPO x 3 seeds on the Protect env",
        f"{TRAIN} --env LayerSplit-Protect-v0 --rsm {{OUT}}/reward_predictor_protect.pth "
        "--run-dir {OUT}/runs/LayerSplit-Protect-v0 {args}",
        {
            "quick": "--seeds 0,1 --total-timesteps 4000 --eval-episodes 30",
            "reproduce": f"--seeds {paper.SEEDS} --total-timesteps 200000",
        },
        outputs=("{R}/rl_protect_ppo.json",),
        log="{logs}/rl_protect_ppo.log",
    ),
    Experiment(
        "rl_paper_authors",
        "PPO, A2C and DQN x 3 seeds on the paper env with the authors' surrogate (when it is present)",
        f"{TRAIN} --algo ppo,a2c,dqn --rsm {AUTHORS_RSM} --run-dir {{OUT}}/runs/authors "
        "--name rl_paper_{{algo}}_authors {args}",
        {
            "quick": "--seeds 0,1 --total-timesteps 10000 --eval-episodes 30",
            "reproduce": f"--seeds {paper.SEEDS} --total-timesteps 240000",
        },
        outputs=("{R}/rl_paper_ppo_authors.json",),
        log="{logs}/rl_paper_authors.log",
        needs=AUTHORS_RSM,
    ),
    Experiment(
        "llm_cost",
        "`train.py`: PPO steps with the real LLM in the loop, the measured cost per step",
        "train.py {args} --run-dir {OUT}/runs/LayerSplit-LLM-v0-cost --results {R}/rl_llm_cost.json",
        {
            "quick": "--total-timesteps 10 --n-steps 10 --batch 5 --tokens 64 --eval-episodes 0",
            "reproduce": "--total-timesteps 100 --eval-episodes 0",
        },
        outputs=("{R}/rl_llm_cost.json",),
        model_args=True,
    ),
    Experiment(
        "figures",
        "every figure, from the result files",
        "figures.py --results-dir {R} --figures-dir {OUT}/figures",
        {},
        always=True,
    ),
)

BY_NAME = {e.name: e for e in EXPERIMENTS}


def remedy(name: str) -> str:
    """How a user makes experiment `name`'s output: its pipeline step, or its command at the committed scale."""
    e = BY_NAME[name]
    command = Plan("reproduce", ".").fill(e.command, e).replace(" ./", " ")  # paths as a user in the checkout types
    return f"make reproduce ONLY={name}, or python {' '.join(command.split())}"


NR_CHECK = {"quick": "--check 3:0 --max-slots 16", "reproduce": "--check 3:0,14:10,28:30 --max-slots 64"}


@dataclass
class Plan:
    """What one run of the pipeline does: the preset, the model, the folders and which committed files it takes."""

    preset: str
    out: str  # the run's folder: results in {out}/results, figures, surrogates and runs beside them
    model: str = paper.EMBEDDED_MODEL
    dataset: str = ""  # "" : each script's default (the embedded text)
    device: str = ""  # "" : each script's default (auto)
    compute: frozenset[str] = field(default_factory=frozenset)  # committed experiments to compute anyway

    @property
    def key(self) -> str:
        """The model's key in file names (add_noise.py's {model})."""
        return self.model.replace("/", "_")

    @property
    def is_embedded(self) -> bool:
        """The embedded model on the embedded text: the setting of the committed results."""
        return self.key == EMBEDDED_KEY and self.dataset in ("", paper.EMBEDDED_DATASET)

    @property
    def folder_key(self) -> str:
        """Where another setting's run goes inside the run's folder: the model's key, and the text's if given."""
        return self.key + (f"_{self.dataset.replace('/', '_')}" if self.dataset else "")

    def uses_committed(self, e: Experiment) -> bool:
        """Whether this run takes e's committed file (and spot-checks it) instead of computing e."""
        if e.committed is None or e.name in self.compute or not self.is_embedded:
            return False  # committed files are the embedded model's on the embedded text only
        return self.preset in e.committed.presets

    def values(self, e: Experiment) -> dict[str, str]:
        out = self.out
        return {
            "OUT": out,
            "R": f"{out}/results",
            "logs": f"{out}/runs/logs",
            "model": self.key,
            "args": e.args(self.preset),
            "nr_check": NR_CHECK.get(self.preset, NR_CHECK["reproduce"]),
        }

    def fill(self, template: str, e: Experiment) -> str:
        return template.format(**self.values(e))
