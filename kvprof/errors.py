"""User-facing errors: one line naming what is wrong and a hint; the CLI exits 2 on them."""
from __future__ import annotations


class UsageError(ValueError):
    """Bad input (argument, file, trace folder). The message names the thing and gives a hint."""


class VaeError(ValueError):
    """A VAE could not be built or loaded; the message says what and where. Here, not in kvprof.workload.vae,
    so that code catching it does not import diffusers (2 s) in a run that decodes nothing."""
