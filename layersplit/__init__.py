"""Adaptive layer splitting for wireless LLM inference: the shared logic behind the top-level scripts.

One module per concept; the map of every module and file is docs/layout.md.

Splits are 0-based everywhere: split n cuts after decoder layer n, so n + 1 layers run on the UE.
"""

from pathlib import Path

SHIPPED_DIR = Path(__file__).parent / "shipped"  # the files the package ships: the surrogates, the NR BLER table


def shipped_file(name: str) -> Path:
    """A file the package ships, found through the package (from any folder, and in a wheel). In a clone these
    are links to the committed files (the surrogates at the root, results/nr_bler.csv), resolved here so that
    reading, refitting and messages name the committed file itself."""
    return (SHIPPED_DIR / name).resolve()


class UserError(ValueError):
    """Bad input from the user: the scripts print the message as one line and exit with status 2."""
