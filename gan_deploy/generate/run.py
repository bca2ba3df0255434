"""What `gan-deploy generate` runs: `generate_images(artifact, opts)` picks the executor and hands it the options.

The one module above both executors (`pipeline.generate`: the local loop; `ray_executor.generate_ray`: Ray Data
workers), which both drive a `session.Session` and never import each other.
"""
from __future__ import annotations

from typing import Callable

from gan_deploy.artifacts.artifact import Artifact
from gan_deploy.generate.options import GenerateOptions
from gan_deploy.generate.pipeline import generate
from gan_deploy.generate.session import GenerateReport


def generate_images(artifact: Artifact, opts: GenerateOptions, on_start: Callable[[str], None] | None = None) -> GenerateReport:
    """Write `opts.n` images (or this job shard's share) of `artifact` into `opts.out`, on `opts.backend` with the
    `opts.executor`. `on_start(description)` is told what will run, once every check has passed."""
    opts.validate()
    if opts.executor == "ray":
        from gan_deploy.generate.ray_executor import generate_ray  # Ray itself is imported only when used

        return generate_ray(artifact, opts, on_start=(lambda: on_start(f"{artifact.describe()} -> backend {opts.backend} on Ray workers"))
                            if on_start else None)
    from gan_deploy.backends import make_runner
    from gan_deploy.precision.runtime_gate import require_runtime_gate

    # precision follows backends.resolve_backend's rule; `auto` on a CPU measures the runtimes at this batch size
    # (backends/autoprobe.py); spin=False leaves idle cycles to the writers
    runner = make_runner(opts.backend, artifact, opts.device, batch_size=opts.batch_size, vet=require_runtime_gate,
                         spin=False, precision=opts.precision)
    require_runtime_gate(runner)  # a reduced-precision model on a runtime quantize did not gate it on: gated here
    why = f" ({runner.auto_reason})" if runner.auto_reason else ""
    return generate(runner, opts, on_start=(lambda: on_start(f"{artifact.describe()} -> backend {runner.name}{why}")) if on_start else None)


__all__ = ["generate_images"]
