"""What the scripts share on the command line.

- Argument types: a bad value is refused by argparse with one line naming what is valid (exit
  status 2), before any work starts or any file is written.
- `parser`: help that shows each option's default from the constant it is set from, so a default
  is written once (at the top of its script), never again in a help text.
- `add_run_arguments`: --model, --device, --dtype, --seed, alike in every script.
- `parse_splits` / `parse_floats`: the one grammar of split lists and number lists.
- `run_main`: a UserError becomes one line on stderr and exit status 2.

No torch or transformers here: `--help` must answer before they are imported.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Callable

from . import UserError
from .models import DTYPES

DEVICE = "auto"  # auto: CUDA when present, else CPU
DTYPE = "auto"  # auto: float32 on CPU, bfloat16 (or float16) on CUDA


def _number(text: str, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be an integer >= 1")
    return value


def batch_size(text: str) -> int | None:
    """A batch size >= 1, or auto (None: chosen at run time)."""
    return None if text == "auto" else positive_int(text)


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be an integer >= 0")
    return value


def positive_float(text: str) -> float:
    """> 0, inf included (a timeout of inf: the script then names its upper bound)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def probability(text: str) -> float:
    value = _number(text, float)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a probability in [0, 1]")
    return value


def open_fraction(text: str) -> float:
    """A share strictly between 0 and 1 (a held-out share: both parts must be non-empty)."""
    value = _number(text, float)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a share strictly between 0 and 1")
    return value


def discount(text: str) -> float:
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} must be a discount in (0, 1]")
    return value


def _writable(text: str, folder: bool) -> str:
    """A path that can be created or overwritten, checked before hours of work are spent on a result
    that could not be saved. Only a temporary file is made (and removed) to try it."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    path = Path(text).expanduser().absolute()
    if path.exists() and path.is_dir() != folder:
        raise argparse.ArgumentTypeError(f"{text} is {'not a folder' if folder else 'a folder, not a file'}")
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
        raise argparse.ArgumentTypeError(f"{text}: cannot write there ({e.strerror or e})") from None
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
        if ("%(default)" in text or "default:" in text or not action.option_strings
                or default is None or default is False or default is argparse.SUPPRESS):
            return text
        shown = "none" if default == "" else f"{default:g}" if isinstance(default, float) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"


def parser(description: str | None, **kwargs) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter, **kwargs)


def add_run_arguments(p, model: str | None = None, seed: int | None = None, seed_help: str = "seed",
                      device: str = DEVICE, dtype: str = DTYPE) -> None:
    """--model (when `model` is given), --device, --dtype, and --seed (when `seed` is given)."""
    if model is not None:
        p.add_argument("--model", default=model,
                       help="the embedded SmolLM2-135M (smollm2-135m), a local folder, a Hugging Face id, or "
                            "random:SHAPE (llama-2-7b, llama-2-13b, mistral-7b, smollm2-135m: random weights, "
                            "for timing only)")
    p.add_argument("--device", default=device, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default=dtype, choices=("auto", *DTYPES),
                   help="model dtype: auto is float32 on a CPU, bfloat16 (or float16) on CUDA")
    if seed is not None:
        p.add_argument("--seed", type=non_negative_int, default=seed, help=seed_help)


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run a script's work; bad input found during it (a UserError) is one line and exit status 2."""
    try:
        return body()
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


# --- lists on the command line ---------------------------------------------------------------------
def parse_splits(text: str, n_layers: int, option: str = "--splits") -> list[int]:
    """Split points in the one vocabulary of this project: split n cuts after 0-based decoder layer n
    (n + 1 layers on the UE). 'all' is every split, 0..n_layers-1; otherwise comma-separated numbers
    and inclusive ranges like '0-4,9'."""
    if text.strip() == "all":
        return list(range(n_layers))
    splits = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            splits.update(range(int(lo), int(hi or lo) + 1))
    except ValueError as e:
        raise UserError(f"{option} {text!r}: use 'all' or 0-based split layers and ranges like 0-4,9") from e
    bad = sorted(s for s in splits if not 0 <= s < n_layers)
    if bad or not splits:
        raise UserError(f"{option} {text!r}: splits {bad} are outside 0..{n_layers - 1} (0-based: split n puts "
                        f"n + 1 of {n_layers} layers on the UE)" if bad else f"{option} is empty")
    return sorted(splits)


def parse_floats(text: str, name: str) -> list[float]:
    """Comma-separated finite numbers ('' for none)."""
    if not text.strip():
        return []
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError as e:
        raise UserError(f"{name} {text!r}: use comma-separated numbers") from e
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"{name} {text!r}: values must be finite")
    return values


def on_ue(split: int) -> str:
    """How every human-facing output names a split."""
    return f"split {split} ({split + 1} layer{'s' if split else ''} on the UE)"
