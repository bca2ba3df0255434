"""Bulk generation: seed-derived latents -> backend -> image files (the pipeline and its options).

Owns: `GenerateOptions`, `run` (what the CLI calls), `generate` (a runner into a folder), shards, the manifest.
May import: core, artifacts, backends. `ray_executor`: the same work on Ray Data workers (--executor ray).
"""
from gan_deploy.generate.pipeline import GenerateOptions, GenerateReport, generate, run

__all__ = ["GenerateOptions", "GenerateReport", "generate", "run"]
