"""Bulk generation: seed-derived latents -> backend -> a sink (image files, tar shards, one array), with encoding
and writing in worker processes or threads, a journal that makes every run resumable, and a lock per output.

Owns: `generate_images` (run.py: what the CLI calls; picks the executor), `GenerateOptions` (options.py: checks
itself when built; job shards), the `Session` of one run (session.py: record, resume identity checks, journal,
progress, commit, finish; `GenerateReport`), the local loop `generate` (pipeline.py: a runner into a sink), the
same work on Ray Data workers (ray_executor.py, --executor ray), the manifest (journal.py), the output folder's
lock and path checks (outdir.py), the encoder workers (pool.py), the GPU JPEG encoder (device_jpeg.py), the
sinks (sinks/: one module per sink and the SINKS registry). Dependencies inside: run -> pipeline, ray_executor
-> session -> options; the two executors never import each other.
May import: core, artifacts, backends, precision (the gate re-run on the runtime that runs a reduced-precision model).
"""
from gan_deploy.generate.options import GenerateOptions
from gan_deploy.generate.pipeline import generate
from gan_deploy.generate.run import generate_images
from gan_deploy.generate.session import GenerateInterrupted, GenerateReport

__all__ = ["GenerateInterrupted", "GenerateOptions", "GenerateReport", "generate", "generate_images"]
