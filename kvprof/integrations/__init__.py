"""Profile code you do not own: hooks that mark kvprof's stages and categories on live objects.

- `instrument_module(model)`: a `layer[i]` stage per block of any `nn.Module` stack.
- `self_forcing.instrument(pipeline)`: the whole taxonomy on an upstream Self-Forcing
  `CausalInferencePipeline` (or anything with its attribute names).
- `kvprof run [--instrument self-forcing] -- python SCRIPT ARGS` (kvprof.integrations.run).
"""
from kvprof.integrations.hooks import StageHooks, instrument_module

__all__ = ["StageHooks", "instrument_module"]
