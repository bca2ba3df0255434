"""Bulk generation: seed-derived latents -> backend -> a sink (image files, tar shards, one array), with encoding
and writing in worker processes or threads, a journal that makes every run resumable, and a lock per output.

Owns: `GenerateOptions`, `run` (what the CLI calls), `generate` (a runner into a sink), job shards, the manifest
(journal.py), the output folder's lock and path checks (outdir.py), the encoder workers (pool.py), the sinks
(sinks/: one module per sink and the SINKS registry).
May import: core, artifacts, backends. `ray_executor`: the same work on Ray Data workers (--executor ray).
"""
from gan_deploy.generate.pipeline import GenerateInterrupted, GenerateOptions, GenerateReport, generate, run

__all__ = ["GenerateInterrupted", "GenerateOptions", "GenerateReport", "generate", "run"]
