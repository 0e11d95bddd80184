"""The recorder's workload: the Wan2.1 causal DiT, its VAE, the KV cache seam and the Self-Forcing rollout.

Imports torch. Readers of traces (`kvprof.read`, `kvprof.diagnose`, `tui`) never import this package.
"""
