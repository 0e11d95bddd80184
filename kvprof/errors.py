"""User-facing errors: one line naming what is wrong and a hint; the CLI exits 2 on them."""
from __future__ import annotations


class UsageError(ValueError):
    """Bad input (argument, file, trace folder). The message names the thing and gives a hint."""
