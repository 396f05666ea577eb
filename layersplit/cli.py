"""What the scripts share on the command line.

- Argument types: a bad value is refused by argparse with one line naming what is valid (exit
  status 2), before any work starts or any file is written.
- `parser`: help that shows each option's default from the constant it is set from, so a default
  is written once (at the top of its script), never again in a help text.
- `add_run_arguments`: --model, --device, --dtype, --seed, alike in every script.
- Bounds of validity, not settings: seeds (SEED_MAX), thread counts (this machine's CPUs), SNRs
  (SNR_DB_MIN..SNR_DB_MAX), integer counts (INT_MAX).
- `parse_splits` / `parse_floats`: the one grammar of split lists and number lists; an error echoes a
  long list shortened (`shown`), never whole.
- `run_main`: a UserError becomes one line on stderr and exit status 2.

No torch or transformers here: `--help` must answer before they are imported.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

from . import UserError
from .models import DTYPES, RANDOM_TOKENIZER_ENV

DEVICE = "auto"  # auto: CUDA when present, else CPU
DTYPE = "auto"  # auto: float32 on CPU, bfloat16 (or float16) on CUDA


# --- bounds of validity (not settings) ----------------------------------------------------------
# Seeds: numpy's legacy seeding (np.random.seed, which Stable-Baselines3's set_random_seed calls)
# takes 0..2**32-1; one range for every --seed, --seeds and --eval-seed, so a seed that works in one
# script works in all.
SEED_MAX = 2**32 - 1
# Integer options: at most a C long (torch and numpy convert to int64); larger ones raised
# OverflowError deep in the work. What a script can really do with a large count it bounds itself.
INT_MAX = 2**63 - 1
# Es/N0 of every SNR option, in dB: wider than any radio link (at -50 dB every packet of every
# modulation here is lost, at 100 dB none is). Far beyond it the channel model breaks down:
# 10^(SNR/10) overflows near +3000 dB, and near -300 dB the link rate underflows to 0.
SNR_DB_MIN, SNR_DB_MAX = -50.0, 100.0
# The link's shape options (channel_cli.add_link_arguments). Nakagami fading of a larger m is AWGN
# (--fading awgn) to many digits, and the fade integrals divide by zero near 1e308; m >= 0.5 is the
# distribution's own domain. A packet of more elements than the edge accepts
# (serving/protocol.MAX_ELEMENTS_PER_PACKET) is allocated whole: 10^14 asked for 100 TB.
NAKAGAMI_M_MIN, NAKAGAMI_M_MAX = 0.5, 1e6
PACKET_ELEMENTS_MAX = 1 << 20
BITS_PER_ELEMENT_MAX = 64  # a float64 on the wire
SHOWN_CHARS = 60  # an option's text echoed in an error is cut to this many characters (a list can be MBs)
PATH_CHARS = 300  # a path echoed in an error: whole up to this length


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` as an error message quotes it: repr (one line whatever it holds), cut to `limit` characters."""
    text = str(text)
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def _number(text: str, kind):
    try:
        value = kind(text)
    except (ValueError, TypeError):  # int() of a 5000-digit text is a ValueError too
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{shown(text)} is not {what}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a finite number")
    if kind is int and abs(value) > INT_MAX:
        raise argparse.ArgumentTypeError(f"{shown(text)} is too large: at most {INT_MAX}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be an integer >= 1")
    return value


def batch_size(text: str) -> int | None:
    """A batch size >= 1, or auto (None: chosen at run time)."""
    return None if text == "auto" else positive_int(text)


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be an integer >= 0")
    return value


def seed(text: str) -> int:
    """A seed: an integer in 0..SEED_MAX."""
    value = _number(text, int)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{value} is not a seed: use an integer in 0..{SEED_MAX} (2**32-1)")
    return value


_seed_type = seed  # add_run_arguments' parameter `seed` hides the type's name there


def seeds(text: str) -> list[int]:
    """One or more comma-separated seeds, like 0,1,2."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(0 <= v <= SEED_MAX for v in values):
        raise argparse.ArgumentTypeError(
            f"{shown(text)}: give one or more comma-separated integers in 0..{SEED_MAX} (2**32-1), like 0,1,2"
        )
    return values


def cpu_count() -> int:
    return os.cpu_count() or 1


def threads(text: str) -> int:
    """torch threads: 0 (torch's default) up to this machine's CPUs. More only oversubscribe the cores,
    and torch takes any count: 10^6 crashed OpenMP (a segfault) at the first forward."""
    value = _number(text, int)
    if not 0 <= value <= cpu_count():
        raise argparse.ArgumentTypeError(
            f"{value} is not a thread count here: use 0 (torch's default) to {cpu_count()} (this machine's CPUs)"
        )
    return value


def positive_threads(text: str) -> int:
    """torch threads, 1 up to this machine's CPUs (where 0 has no meaning: a Ray task's CPUs)."""
    value = _number(text, int)
    if not 1 <= value <= cpu_count():
        raise argparse.ArgumentTypeError(
            f"{value} is not a thread count here: use 1 to {cpu_count()} (this machine's CPUs)"
        )
    return value


def snr_db(text: str) -> float:
    """An Es/N0 in dB within SNR_DB_MIN..SNR_DB_MAX."""
    value = _number(text, float)
    check_snr_db(value, "")
    return value


def snr_db_or_inf(text: str) -> float:
    """snr_db, or inf: a loss-free link."""
    try:
        if float(text) == math.inf:
            return math.inf
    except ValueError:
        pass
    try:
        return snr_db(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e}, or inf for a loss-free link") from None


def check_snr_db(value: float, option: str) -> float:
    """`value` within SNR_DB_MIN..SNR_DB_MAX (NaN refused), else an ArgumentTypeError naming `option`."""
    if not SNR_DB_MIN <= value <= SNR_DB_MAX:
        raise argparse.ArgumentTypeError(
            f"{option + ' ' if option else ''}{value:g} dB is outside the SNRs "
            f"modelled: use {SNR_DB_MIN:g}..{SNR_DB_MAX:g} dB"
        )
    return value


def finite_float(text: str) -> float:
    return _number(text, float)


def nakagami_m(text: str) -> float:
    value = _number(text, float)
    if not NAKAGAMI_M_MIN <= value <= NAKAGAMI_M_MAX:
        raise argparse.ArgumentTypeError(
            f"{value:g} is not a Nakagami m here: use {NAKAGAMI_M_MIN:g}.."
            f"{NAKAGAMI_M_MAX:g} (--fading awgn for no fading)"
        )
    return value


def packet_elements(text: str) -> int:
    value = _number(text, int)
    if not 1 <= value <= PACKET_ELEMENTS_MAX:
        raise argparse.ArgumentTypeError(f"{value} elements per packet: use 1..{PACKET_ELEMENTS_MAX}")
    return value


def bits_per_element(text: str) -> int:
    value = _number(text, int)
    if not 1 <= value <= BITS_PER_ELEMENT_MAX:
        raise argparse.ArgumentTypeError(f"{value} bits per element: use 1..{BITS_PER_ELEMENT_MAX}")
    return value


def bound_link_arguments(p: argparse.ArgumentParser, snr: Callable[[str], float] | None = None) -> None:
    """The options of channel_cli.add_link_arguments with the bounds above, checked at parse time."""
    for option, kind in (
        ("--snr-db", snr or snr_db),
        ("--nakagami-m", nakagami_m),
        ("--bandwidth-hz", finite_float),
        ("--bits-per-element", bits_per_element),
        ("--elements-per-packet", packet_elements),
        ("--header-bits", integer),
    ):
        retype(p, option, kind)


def integer(text: str) -> int:
    """Any integer within INT_MAX (what a script bounds further, it checks itself)."""
    return _number(text, int)


def positive_float(text: str) -> float:
    """> 0, inf included (a timeout of inf: the script then names its upper bound)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def probability(text: str) -> float:
    value = _number(text, float)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is not a probability in [0, 1]")
    return value


def open_fraction(text: str) -> float:
    """A share strictly between 0 and 1 (a held-out share: both parts must be non-empty)."""
    value = _number(text, float)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{value:g} must be a share strictly between 0 and 1")
    return value


def discount(text: str) -> float:
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} must be a discount in (0, 1]")
    return value


def _writable(text: str, folder: bool) -> str:
    """A path that can be created or overwritten, checked before hours of work are spent on a result
    that could not be saved. Only a temporary file is made (and removed) to try it."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    named = text if text.isprintable() and len(text) <= PATH_CHARS else shown(text, PATH_CHARS)
    try:
        path = Path(text).expanduser().absolute()
        exists = path.exists()  # a NUL byte or a name longer than the file system's is an error here
    except (OSError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"{named}: not a usable path ({e})") from None
    if exists and path.is_dir() != folder:
        raise argparse.ArgumentTypeError(f"{named} is {'not a folder' if folder else 'a folder, not a file'}")
    ancestor = path.parent
    while not ancestor.exists():  # the first folder that exists must let us create the rest
        ancestor = ancestor.parent
    try:  # try it for real: permission bits say nothing to root, nor about read-only or virtual file systems
        if not ancestor.is_dir():
            raise NotADirectoryError(f"{ancestor} is not a folder")
        with tempfile.TemporaryFile(dir=ancestor):
            pass
        if path.is_file():
            with path.open("a"):
                pass
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{named}: cannot write there ({e.strerror or e})") from None
    return text


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it into place: a kill never leaves half."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def writable_file(text: str) -> str:
    return _writable(text, folder=False)


def writable_dir(text: str) -> str:
    return _writable(text, folder=True)


# --- help and the options every script shares ----------------------------------------------------
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The script's docstring as written, and each option's default appended to its help, read from
    the constant the option is set from (a help text that names its default itself is left alone)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default:" in text
            or not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
        ):
            return text
        value = "none" if default == "" else f"{default:g}" if isinstance(default, float) else default
        return f"{text} (default: {str(value).replace('%', '%%')})"


def parser(description: str | None, **kwargs) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter, **kwargs)


def add_run_arguments(
    p,
    model: str | None = None,
    seed: int | None = None,
    seed_help: str = "seed",
    device: str = DEVICE,
    dtype: str = DTYPE,
) -> None:
    """--model (when `model` is given), --device, --dtype, and --seed (when `seed` is given)."""
    if model is not None:
        p.add_argument(
            "--model",
            default=model,
            help="the embedded SmolLM2-135M (smollm2-135m), a local folder, a Hugging Face id, or "
            "random:SHAPE (llama-2-7b, llama-2-13b, mistral-7b, smollm2-135m: random weights, "
            "for timing only)",
        )
    p.add_argument("--device", default=device, help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--dtype",
        default=dtype,
        choices=("auto", *DTYPES),
        help="model dtype: auto is float32 on a CPU, bfloat16 (or float16) on CUDA",
    )
    if seed is not None:
        p.add_argument("--seed", type=_seed_type, default=seed, help=seed_help)


def retype(p: argparse.ArgumentParser, option: str, kind: Callable[[str], object]) -> None:
    """Give an option that a shared helper added (channel_cli.add_link_arguments) one of the types above."""
    action = next(a for a in p._actions if option in a.option_strings)
    action.type = kind


def check_environment() -> None:
    """The project's environment variables, checked like options before any work: a bad one is named."""
    from . import nr

    nr.check_environment()  # LAYERSPLIT_NR_BLER_TABLE
    folder = os.environ.get(RANDOM_TOKENIZER_ENV)
    if folder and not Path(folder).is_dir():
        raise UserError(
            f"{RANDOM_TOKENIZER_ENV}={folder}: not a folder (a tokenizer's folder, for --model random:SHAPE)"
        )


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run a script's work, the environment checked first; bad input found during it (a UserError) is one
    line and exit status 2."""
    try:
        check_environment()
        return body()
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


# --- lists on the command line ---------------------------------------------------------------------
def _split_ranges(text: str, option: str) -> list[tuple[int, int]] | None:
    """The inclusive ranges of a split list ('0-4,9' -> [(0, 4), (9, 9)]); None for 'all'."""
    if text.strip() == "all":
        return None
    ranges = []
    try:
        for part in text.split(","):
            lo, dash, hi = part.strip().partition("-")
            ranges.append((int(lo), int(hi) if dash else int(lo)))
    except ValueError:
        raise UserError(f"{option} {shown(text)}: use 'all' or 0-based split layers and ranges like 0-4,9") from None
    backwards = next((r for r in ranges if r[1] < r[0]), None)
    if backwards:
        raise UserError(
            f"{option} {shown(text)}: the range {backwards[0]}-{backwards[1]} runs backwards: "
            f"write {backwards[1]}-{backwards[0]}"
        )
    return ranges


def split_list(text: str) -> str:
    """An argparse type: the grammar of parse_splits, checked at parse time (the bounds need the model)."""
    try:
        _split_ranges(text, "")
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).lstrip()) from None
    return text


def parse_splits(text: str, n_layers: int, option: str = "--splits") -> list[int]:
    """Split points in the one vocabulary of this project: split n cuts after 0-based decoder layer n
    (n + 1 layers on the UE). 'all' is every split, 0..n_layers-1; otherwise comma-separated numbers
    and inclusive ranges like '0-4,9'. The bounds are checked on the ranges, before any list is built:
    '0-3000000' is refused in one short line, not expanded."""
    ranges = _split_ranges(text, option)
    if ranges is None:
        return list(range(n_layers))
    outside = sorted((max(lo, n_layers), hi) for lo, hi in ranges if hi >= n_layers)
    if outside:
        merged = [list(outside[0])]
        for lo, hi in outside[1:]:
            if lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        listed = ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in merged[:LISTED_RANGES])
        more = f" and {len(merged) - LISTED_RANGES} more ranges" if len(merged) > LISTED_RANGES else ""
        raise UserError(
            f"{option} {shown(text)}: splits {listed}{more} are outside 0..{n_layers - 1} (0-based: "
            f"split n puts n + 1 of {n_layers} layers on the UE)"
        )
    return sorted({s for lo, hi in ranges for s in range(lo, hi + 1)})


LISTED_RANGES = 5  # ranges of splits out of bounds named in the error; the rest counted


def parse_floats(text: str, name: str) -> list[float]:
    """Comma-separated finite numbers ('' for none)."""
    if not text.strip():
        return []
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError as e:
        raise UserError(f"{name} {shown(text)}: use comma-separated numbers") from e
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"{name} {shown(text)}: values must be finite")
    return values


def parse_snrs(text: str, name: str = "--snrs") -> list[float]:
    """parse_floats, each within SNR_DB_MIN..SNR_DB_MAX."""
    values = parse_floats(text, name)
    bad = [v for v in values if not SNR_DB_MIN <= v <= SNR_DB_MAX]
    if bad:
        raise UserError(
            f"{name} {shown(text)}: {bad[0]:g} dB is outside the SNRs modelled: use {SNR_DB_MIN:g}..{SNR_DB_MAX:g} dB"
        )
    return values


def parse_counts(text: str, name: str) -> list[int]:
    """Comma-separated integers >= 0 ('' for none), like --protects and --ks."""
    if not text.strip():
        return []
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"{name} {shown(text)}: use comma-separated integers >= 0") from None
    if any(not 0 <= v <= INT_MAX for v in values):
        raise UserError(f"{name} {shown(text)}: use comma-separated integers >= 0")
    return values


def on_ue(split: int) -> str:
    """How every human-facing output names a split."""
    return f"split {split} ({split + 1} layer{'s' if split else ''} on the UE)"
