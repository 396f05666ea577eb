"""Adaptive layer splitting for wireless LLM inference: the shared logic behind the top-level scripts.

One module per concept; the map of every module and file is docs/layout.md.

Splits are 0-based everywhere: split n cuts after decoder layer n, so n + 1 layers run on the UE.
"""


class UserError(ValueError):
    """Bad input from the user: the scripts print the message as one line and exit with status 2."""
