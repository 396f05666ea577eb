"""Argument types shared by the scripts: a bad value is refused by argparse with one line naming
what is valid (exit status 2), before any work starts or any file is written."""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path


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


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be an integer >= 0")
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


def writable_file(text: str) -> str:
    return _writable(text, folder=False)


def writable_dir(text: str) -> str:
    return _writable(text, folder=True)
