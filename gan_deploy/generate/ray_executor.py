"""`gan-deploy generate --executor ray`: bulk generation on every worker of a Ray cluster, with Ray Data.

The work is the single-process path's, cut at the same places and run through the same `Session`: the
batches still to compute (multiples of the batch size from index 0, this job shard's, those a resume still
needs) become a Ray dataset, and `map_batches` sends them to `_BatchWriter` actors (one per worker, each
building its runner once). A worker computes the batch's latents from (seed, index), runs the backend on
exactly the batch the single-process run would run, and hands the pixels to the sink's worker half: the
folder sink writes its files there (atomically), the array sink pwrites its rows into the shared images.npy,
the tar sink encodes the members and returns them. The driver streams the results back in order, commits
them (appending the tar shards), journals them, shows progress and writes the manifest. So the output is
byte-identical to `gan-deploy generate` with the same batch size, seed, format and sink, whatever the
number of workers, and a Ray run can be resumed like any other.

On a cluster (RAY_ADDRESS set, e.g. `ray start --head` then `RAY_ADDRESS=auto`), --out must be a folder
every node sees at the same path (a shared filesystem), the model file must be at the same path on every
node (workers check its sha256), and gan-deploy must be installed on every node.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gan_deploy.artifacts.artifact import Artifact
from gan_deploy.core.errors import BackendUnavailable, GanDeployError, StaleArtifact
from gan_deploy.generate.options import GenerateOptions
from gan_deploy.generate.outdir import sweep
from gan_deploy.generate.session import GenerateReport, Session
from gan_deploy.generate.sinks.base import Result, SinkWorker, Task


class _BatchWriter:
    """A Ray Data actor: builds its runner and the sink's worker once, then turns tasks into written images."""

    def __init__(self, kind: str, path: str, sha256: str, value_range: tuple[float, float] | None, backend: str,
                 device: str, options: dict[str, Any], seed: int, worker: SinkWorker):
        self.runner = _worker_runner(kind, path, sha256, value_range, backend, device, options).activate()
        from gan_deploy.precision.runtime_gate import require_runtime_gate
        require_runtime_gate(self.runner)  # passed on the driver: found in this machine's cache; another CPU: gated here
        self.latent_dim, self.seed = self.runner.spec.latent_dim, seed
        self.worker = worker
        worker.open()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from gan_deploy.core.latents import latents_range
        from gan_deploy.generate.pool import handle_task

        out: dict[str, list] = {k: [] for k in ("seq", "done", "payload", "error", "error_kind", "seconds", "infer_s", "backend")}
        for seq, b0, b, lo, hi in zip(*(batch[k].tolist() for k in ("seq", "b0", "b", "lo", "hi"))):
            task = Task(seq, b0, b, lo, hi)
            t0 = time.perf_counter()
            pixels = self.runner.infer_pixels(latents_range(self.seed, b0, b, self.latent_dim))  # [b, H, W, C] uint8
            infer_s = time.perf_counter() - t0
            res = handle_task(self.worker, task, pixels)
            for k, v in (("seq", seq), ("done", res.done), ("payload", pickle.dumps(res.payload)), ("error", res.error or ""),
                         ("error_kind", res.error_kind), ("seconds", res.seconds), ("infer_s", infer_s),
                         ("backend", self.runner.describe())):
                out[k].append(v)
        return {k: np.asarray(v, dtype=object if k == "payload" else None) for k, v in out.items()}


def _probe_here(artifact: Artifact, backend: str, options: dict[str, Any], session: Session) -> bool:
    """The probe batch (Session.probe) on the driver, with the workers' backend; False when it cannot run here
    (e.g. TensorRT on the workers only)."""
    from gan_deploy.backends import make_runner

    try:
        runner = make_runner(backend, artifact, "cpu" if session.opts.device == "cpu" else "auto", **options)
    except BackendUnavailable:
        return False
    try:
        session.probe(runner)
    finally:
        runner.close()
    return True


def _worker_runner(kind: str, path: str, sha256: str, value_range: tuple[float, float] | None, backend: str, device: str,
                   options: dict[str, Any]) -> Any:
    """The runner a worker builds from the driver's model file (the same file: checked by sha256), not yet activated."""
    from gan_deploy.artifacts.load import load_artifact
    from gan_deploy.backends import make_runner

    paths = {kind: path}
    art = load_artifact(paths.get("checkpoint"), paths.get("onnx"), paths.get("engine"), value_range if kind == "onnx" else None)
    if art.sha256 != sha256:
        raise StaleArtifact("the model file on this worker differs from the driver's", f"{art.path} sha256 {art.sha256[:12]}",
                            expected=f"sha256 {sha256[:12]}", hint="copy the same file to every node (or use a shared filesystem)")
    return make_runner(backend, art, device, **options)


def _probe_remote(model: tuple, probe: dict[str, Any]) -> None:
    """The probe batch on a worker (a Ray task): a refusal reaches the driver as the worker's GanDeployError."""
    from gan_deploy.backends.base import check_images

    runner = _worker_runner(*model)
    try:
        check_images(runner, **probe)
    finally:
        runner.close()


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


def _backend(artifact: Artifact, backend: str, precision: str) -> tuple[str, dict[str, Any]]:
    """The backend the workers will run, resolved here when this machine can (for the run record), with its options
    (backends.resolve_backend: the one precision rule; `auto` as this machine would choose it)."""
    from gan_deploy.backends import precision_options, resolve_backend, runner_class

    if backend != "auto":  # fail here, not in every worker
        runner_class(backend)
    try:
        name, options, _ = resolve_backend(backend, artifact, "auto", precision)
        return name, options
    except BackendUnavailable:  # e.g. TensorRT only on the workers: they resolve `auto` / check it themselves
        return backend, precision_options(backend, precision)


def _gate_here(artifact: Artifact, backend: str, options: dict[str, Any]) -> None:
    """A reduced-precision model on a runtime quantize did not gate it on: gated once on the driver, before Ray starts
    (a one-line refusal instead of every worker failing)."""
    from gan_deploy.precision.runtime_gate import REGATED_BACKENDS, require_runtime_gate

    if backend in REGATED_BACKENDS and artifact.precision != "fp32":
        from gan_deploy.backends import make_runner
        runner = make_runner(backend, artifact, "cpu", **options)
        try:
            require_runtime_gate(runner)
        finally:
            runner.close()


def generate_ray(artifact: Artifact, opts: GenerateOptions, on_start: Callable[[], None] | None = None) -> GenerateReport:
    """Write the same output as `generate.pipeline.generate` (same options) with Ray Data workers.
    `on_start()` is called once every check has passed, before Ray starts."""
    workers = opts.ray_workers
    if artifact.kind not in ("checkpoint", "onnx", "engine"):
        raise GanDeployError("unsupported artifact", artifact.kind, expected="checkpoint, onnx or engine")
    # checks itself again (GenerateOptions.validate): e.g. the GPU JPEG encoder only in a local run's main process
    opts = dataclasses.replace(opts, out=Path(opts.out).resolve(), executor="ray")  # workers may run in another working directory
    session = Session(opts, artifact.spec, artifact.files(), opts.backend, opts.device, opts.precision)
    if session.empty:  # this job shard has no images: nothing is written, Ray is not started, the report says why
        return session.empty_report(opts.backend)
    backend, options = _backend(artifact, opts.backend, opts.precision)
    _gate_here(artifact, backend, options)
    session.record["backend"] = backend
    session.set_model(artifact.kind, artifact.path, artifact.sha256)
    session.check(slots=2)
    if not opts.device.startswith("cuda"):  # a CPU worker's batch (latents, images, activations) in this host's memory
        from gan_deploy.backends.memory import check_batch_fits

        check_batch_fits(artifact, session.max_batch, "cpu")
    probed = _probe_here(artifact, backend, options, session)  # before Ray starts, when this machine can run the backend
    if on_start is not None:
        on_start()

    try:
        import ray
        import ray.data
    except ImportError:
        raise GanDeployError("Ray is not installed", "--executor ray", hint='from the clone: pip install -e ".[serve]"') from None
    started = _init_ray(workers)
    interrupted = complete = False
    ray_error: GanDeployError | None = None
    infer_s, detail, n_workers, t0 = 0.0, backend, 0, time.perf_counter()
    opened = False
    tasks: list[Task] = []
    try:
        wdevice, resources, n_workers = _resources(opts.device, workers)
        session.record["device"] = wdevice.split(":")[0]
        if not probed:  # the backend runs on the workers only: one of them computes the probe batch
            probe = ray.remote(**resources)(_probe_remote)  # type: ignore[call-overload]
            model = (artifact.kind, str(artifact.path.resolve()), artifact.sha256, artifact.spec.value_range, backend, wdevice, options)
            ray.get(probe.remote(model, session.probe_range()))
        session.open()
        opened = True
        tasks[:] = session.tasks()
        n_workers = max(1, min(n_workers, len(tasks)))  # an actor per batch at most: each one loads the model
        if wdevice == "cpu":  # one worker per CPU: one thread each (GAN_DEPLOY_THREADS checked and bounded there)
            from gan_deploy.backends.onnxruntime import env_threads

            options = {**options, "threads": env_threads() or 1}
        _configure_ray_data()
        session.start_progress(f"generate [ray x{n_workers}]")
        if tasks:
            rows = [{"seq": t.seq, "b0": t.b0, "b": t.b, "lo": t.lo, "hi": t.hi} for t in tasks]
            ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 4 * n_workers))
            ds = ds.map_batches(
                _BatchWriter, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n_workers),
                fn_constructor_kwargs=dict(kind=artifact.kind, path=str(artifact.path.resolve()), sha256=artifact.sha256,
                                           value_range=artifact.spec.value_range, backend=backend, device=wdevice,
                                           options=options, seed=opts.seed, worker=session.sink.worker()),
                **resources)
            for res in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for k in range(len(res["seq"])):
                    seq = int(res["seq"][k])
                    infer_s += float(res["infer_s"][k])
                    detail = f"{res['backend'][k]} on {n_workers} Ray worker(s)"
                    session.on_result(tasks[seq], Result(seq, int(res["done"][k]), pickle.loads(res["payload"][k]),
                                                         str(res["error"][k]) or None, str(res["error_kind"][k]), float(res["seconds"][k])))
                if session.failed:
                    break
            else:
                complete = True
        else:
            complete = True
    except KeyboardInterrupt:
        interrupted = True
    except ray.exceptions.RayError as e:
        ray_error = _gan_deploy_cause(e) or GanDeployError("a Ray worker failed", f"{type(e).__name__}: {str(e).splitlines()[0][:300]}",
                                                           hint="see the worker's log in /tmp/ray/session_latest/logs")
    finally:
        if started:
            ray.shutdown()
        if opened:
            if not complete:
                sweep(session.out)  # named temporary files of workers stopped mid-file (we still hold the lock)
                session.discard_undelivered(tasks)  # and files of batches they did not report
            manifest, grid = session.finish(complete and not session.failed and ray_error is None)
    if ray_error is not None:
        raise ray_error from None
    if not opened:
        raise KeyboardInterrupt
    report = session.report(backend, detail, time.perf_counter() - t0, infer_s, n_workers, "ray", interrupted, manifest, grid)
    return session.conclude(report, interrupted)


def _configure_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own bar, as in the single-process path
    ctx.execution_options.preserve_order = True  # results in task order: the tar sink appends them in order
    # it would warn, once per process, that the progress bars are off: we switched them off on purpose
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


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
