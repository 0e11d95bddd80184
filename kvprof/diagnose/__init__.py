"""`kvprof diagnose TRACE [--baseline TRACE]`: why the peak is where it is, against BF16.

`diagnose(trace, baseline)` returns a `Diagnosis` (plain data; `to_text`, `to_json`,
`to_markdown` render it). It
  1. compares the exact peak with the peak of a bf16 trace of the same config and seed (given,
     found among the traces, or run on request) and decomposes the difference by category and
     by stage of origin (both sums are exact: they add up to the difference);
  2. names the causes among the buffers live at the peak: retained or full-buffer dequantized
     K/V, codes stored wider than their bits, duplicate (residual) code tensors, scales,
     full-precision windows, quantization scratch, a peak in the VAE decode over a live cache;
  3. projects the peak under the other code storage, the other integration and with the cache
     freed before decode, from the peak of each phase and the method's byte model.
Every number comes from the trace: the allocation table (peaks, live buffers), the span table
(stages, phases), the KV table (stored vs resident bytes) and meta.json (config, method, codes,
the method's facts). Projections say which terms are measured and which come from the byte model.

Modules: `model` (the data), `context` (one trace's live sets and code arithmetic), `bytemodel`
(geometry and method facts from meta), `causes`, `rank` (causes against the baseline),
`projections`, `explain` (`diagnose()`), `render` (text and Markdown). A reader: no torch, no
recorder; the baseline search is `kvprof.read.baseline`.
"""
from kvprof.diagnose.explain import diagnose
from kvprof.diagnose.model import FORMATS, BufferGroup, Cause, Diagnosis, Projection

__all__ = ["BufferGroup", "Cause", "Projection", "Diagnosis", "diagnose", "FORMATS"]
