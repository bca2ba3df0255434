"""`gan-deploy generate --executor ray`: bulk generation on every worker of a Ray cluster, with Ray Data.

The work is the single-process path's, cut at the same places: the images [start, stop) of this shard are
split into the same batches (multiples of the batch size from index 0, `generate.shard_indices`), the
batch start indices become a Ray dataset, and `map_batches` sends them to `_BatchWriter` actors (one per
worker, each building its runner once). A worker computes the batch's latents from (seed, index), runs the
backend on exactly the batch the single-process run would run, and writes each image under the same name,
atomically. So the files are byte-identical to `gan-deploy generate` with the same batch size, seed and
format, whatever the number of workers. The driver streams the results back, shows progress and writes the
manifest.

On a cluster (RAY_ADDRESS set, e.g. `ray start --head` then `RAY_ADDRESS=auto`), --out must be a folder
every node sees at the same path (a shared filesystem), the model file must be at the same path on every
node (workers check its sha256), and gan-deploy must be installed on every node.
"""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from gan_deploy.artifacts.artifact import Artifact
from gan_deploy.core.errors import GanDeployError, StaleArtifact
from gan_deploy.core.fileio import TMP_PREFIX, atomic_write_bytes
from gan_deploy.generate.pipeline import (
    GenerateInterrupted,
    GenerateOptions,
    GenerateReport,
    check_args,
    file_name,
    prepare_out_dir,
    shard_indices,
    write_manifest,
)


class _BatchWriter:
    """A Ray Data actor: builds its runner once, then turns batch start indices into written files."""

    def __init__(self, kind: str, path: str, sha256: str, value_range: tuple[float, float] | None, backend: str,
                 device: str, threads: int | None, n_total: int, stop: int, batch_size: int, seed: int, fmt: str,
                 out: str):
        from gan_deploy.artifacts.load import load_artifact
        from gan_deploy.backends import make_runner

        paths = {kind: path}
        art = load_artifact(paths.get("checkpoint"), paths.get("onnx"), paths.get("engine"),
                            value_range if kind == "onnx" else None)
        if art.sha256 != sha256:
            raise StaleArtifact("the model file on this worker differs from the driver's", f"{art.path} sha256 {art.sha256[:12]}", expected=f"sha256 {sha256[:12]}", hint="copy the same file to every node (or use a shared filesystem)")
        options = {"threads": threads} if threads else {}
        self.runner = make_runner(backend, art, device, **options).activate()
        self.spec = art.spec
        self.n_total, self.stop, self.batch_size, self.seed, self.fmt = n_total, stop, batch_size, seed, fmt
        self.out = Path(out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from gan_deploy.core.images import encode
        from gan_deploy.core.latents import latents_range

        written: list[int] = []
        infer_s = write_s = 0.0
        for b0 in batch["start"].tolist():
            b = min(self.batch_size, self.stop - b0)
            t0 = time.perf_counter()
            pixels = self.runner.infer_pixels(latents_range(self.seed, b0, b, self.spec.latent_dim))  # [b, H, W, C] uint8
            t1 = time.perf_counter()
            for k in range(b):
                atomic_write_bytes(self.out / file_name(b0 + k, self.n_total, self.fmt), encode(pixels[k], self.fmt))
                written.append(b0 + k)
            infer_s += t1 - t0
            write_s += time.perf_counter() - t1
        # one row per written image; the per-batch timings ride on the first row of each call
        n = len(written)
        return {"index": np.asarray(written, dtype=np.int64),
                "infer_s": np.asarray([infer_s] + [0.0] * (n - 1)), "write_s": np.asarray([write_s] + [0.0] * (n - 1)),
                "backend": np.asarray([self.runner.describe()] * n)}


def _init_ray(workers: int | None) -> bool:
    """Connect to $RAY_ADDRESS, or start a local Ray with `workers` CPUs. True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address is None and workers:
        kwargs["num_cpus"] = workers
    ray.init(address=address, **kwargs)
    return True


def _resources(device: str, workers: int | None) -> tuple[str, dict[str, float], int]:
    """(device for the workers, Ray resources of one worker, number of workers) for what the cluster has."""
    import ray

    cluster = ray.cluster_resources()
    gpus, cpus = int(cluster.get("GPU", 0)), int(cluster.get("CPU", 1))
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    if device.startswith("cuda"):
        if not gpus:
            raise GanDeployError("CUDA device requested but the Ray cluster has no GPU", device, expected="a cluster with GPUs", hint="use --device cpu")
        if device != "cuda":  # Ray gives each worker its own GPU, always visible to it as cuda:0
            device = "cuda"
        return device, {"num_gpus": 1}, min(workers or gpus, gpus)
    return device, {"num_cpus": 1}, min(workers or cpus, cpus)


def generate_ray(artifact: Artifact, opts: GenerateOptions) -> GenerateReport:
    """Write the same files as `generate.pipeline.generate` (same options) with Ray Data workers."""
    backend, device, n, out, batch_size, seed, fmt = (opts.backend, opts.device, opts.n, opts.out, opts.batch_size,
                                                      opts.seed, opts.fmt)
    overwrite, grid, manifest, shard, workers, progress = (opts.overwrite, opts.grid, opts.manifest, opts.shard,
                                                           opts.ray_workers, opts.progress)
    check_args(n, batch_size, seed, fmt)
    if workers is not None and workers < 1:
        raise GanDeployError("bad number of Ray workers", workers, expected=">= 1")
    if artifact.kind not in ("checkpoint", "onnx", "engine"):
        raise GanDeployError("unsupported artifact", artifact.kind, expected="checkpoint, onnx or engine")
    if backend != "auto":  # fail here, not in every worker; `auto` is resolved where the workers run
        from gan_deploy.backends import runner_class
        runner_class(backend)
    out = Path(out).resolve()  # workers may run in another working directory
    prepare_out_dir(out, overwrite)
    start, stop = shard_indices(n, batch_size, shard)
    starts = list(range(start, stop, batch_size))

    try:
        import ray
        import ray.data
    except ImportError:
        raise GanDeployError("Ray is not installed", "--executor ray", hint="pip install 'gan-deploy[serve]'") from None
    started = _init_ray(workers)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own bar below, as in the single-process path
    # it would warn, once per process, that the progress bars are off: we switched them off on purpose
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    done: list[int] = []
    infer_s = write_s = 0.0
    detail = backend
    n_workers = 0
    interrupted = False
    bar = None
    t0 = time.perf_counter()
    try:
        wdevice, resources, n_workers = _resources(device, workers)
        n_workers = min(n_workers, len(starts))  # an actor per batch at most: each one loads the model
        threads = int(os.environ.get("GAN_DEPLOY_THREADS", "0")) or (1 if wdevice == "cpu" else None)
        ds = ray.data.from_items([{"start": s} for s in starts], override_num_blocks=min(len(starts), 4 * n_workers))
        ds = ds.map_batches(
            _BatchWriter, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n_workers),
            fn_constructor_kwargs=dict(kind=artifact.kind, path=str(artifact.path.resolve()), sha256=artifact.sha256,
                                       value_range=artifact.spec.value_range, backend=backend, device=wdevice,
                                       threads=threads, n_total=n, stop=stop, batch_size=batch_size, seed=seed, fmt=fmt,
                                       out=str(out)),
            **resources)
        if progress is not False:
            from tqdm import tqdm
            bar = tqdm(total=stop - start, unit="img", desc=f"generate [ray x{n_workers}]", dynamic_ncols=True,
                       disable=None if progress is None else False)
        for res in ds.iter_batches(batch_size=None, batch_format="numpy"):
            done.extend(res["index"].tolist())
            infer_s += float(res["infer_s"].sum())
            write_s += float(res["write_s"].sum())
            if len(res["backend"]):
                detail = f"{res['backend'][0]} on {n_workers} Ray worker(s)"
            if bar is not None:
                bar.update(len(res["index"]))
    except KeyboardInterrupt:
        interrupted = True
    except ray.exceptions.RayError as e:
        cause = _gan_deploy_cause(e)
        if cause is not None:
            raise cause from None
        raise GanDeployError("a Ray worker failed", f"{type(e).__name__}: {str(e).splitlines()[0][:300]}", hint="see the worker's log in /tmp/ray/session_latest/logs") from None
    finally:
        if bar is not None:
            bar.close()
        if started:
            ray.shutdown()
    seconds = time.perf_counter() - t0
    if interrupted:
        for stale in out.glob(TMP_PREFIX + "*"):  # files a stopped worker had in flight
            stale.unlink(missing_ok=True)
        # workers may have finished files the driver had not heard of yet: the folder is the truth
        done = [i for i in range(start, stop) if (out / file_name(i, n, fmt)).exists()]
    elif sorted(done) != list(range(start, stop)):
        raise GanDeployError("Ray workers did not write every image", f"{len(done)} of {stop - start}", hint="re-run with --overwrite")
    report = GenerateReport(out, backend, detail, stop - start, len(done), start, batch_size, seed, fmt, seconds,
                            infer_s, write_s, n_workers, interrupted)
    if manifest:
        report.manifest = write_manifest(out, done, n, seed, fmt)
    if grid is not None and done:
        from gan_deploy.core.images import decode, save_grid
        first = sorted(done)[:64]
        report.grid = save_grid(grid, np.stack([decode(out / file_name(i, n, fmt)) for i in first]))
    if interrupted:
        raise GenerateInterrupted(report)
    return report


def _gan_deploy_cause(e: BaseException) -> GanDeployError | None:
    """The GanDeployError a worker raised (e.g. a stale model file), out of Ray's error: from the exception
    chain when Ray kept it, else from the remote traceback text (an actor that died in its constructor)."""
    seen = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, GanDeployError):
            return cur
        cause = getattr(cur, "cause", None)
        cur = cause if isinstance(cause, BaseException) else cur.__cause__
    m = re.search(r"gan_deploy\.core\.errors\.\w+: (.+)", str(e))
    return GanDeployError(m.group(1).strip()) if m else None
