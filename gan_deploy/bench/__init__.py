"""Benchmarks: every backend side by side on identical latents (`run.py`: `bench(artifact, BenchOptions)`, the
options checking themselves), FLOPs and hardware peaks (`flops.py`).

Timing itself is gan_deploy.core.timing (the one clock). May import: core, artifacts, backends,
precision (the gate's figures beside the speed).
"""
