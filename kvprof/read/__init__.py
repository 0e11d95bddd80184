"""Readers of the trace format: loading, analyses, compare, report, export, live following.

No torch and no recorder imports (checked by tests/test_layers.py): a trace opens anywhere.
"""
