"""`gan-deploy serve` (online HTTP service on Ray Serve) and `gan-deploy triton-repo` (Triton model repository).

Ray and tritonclient are imported inside the commands only: `gan-deploy --help` stays fast without them.
"""
from __future__ import annotations

import time
from pathlib import Path

import click

from gan_deploy.cli.options import artifact_options, backend_option, device_option, int_list, load_artifact_from_options, value_range_option
from gan_deploy.core.errors import GanDeployError


@click.command(short_help="HTTP service with request batching across clients (Ray Serve).")
@artifact_options
@backend_option
@device_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface). On loopback, the local Ray binds loopback too.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--max-batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most images per backend call; requests are merged up to this.")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long a batch waits for more requests before it runs.")
@click.option("--max-images-per-request", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--max-queued", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most /generate requests admitted per replica at once; more are answered 503 at once.")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True, help="Generator replicas (on a Ray cluster: across nodes).")
@click.option("--num-cpus", type=click.FloatRange(min=0), default=1.0, show_default=True, help="CPUs Ray reserves per replica.")
@click.option("--num-gpus", type=click.FloatRange(min=0), default=None, help="GPUs Ray reserves per replica (default: 1 with a CUDA device, else 0).")
@click.option("--read-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds the whole request body may take to arrive (slower: 408).")
@click.option("--request-timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds from arrival to answer (longer: 504).")
@click.option("--max-body-bytes", type=click.IntRange(min=64), default=None,
              help="Largest request body (default: 4096 + 64 x --max-images-per-request).")
@click.option("--max-header-bytes", type=click.IntRange(min=256, max=16384), default=8192, show_default=True,
              help="Largest request header block (larger: 431; the HTTP server itself refuses more than 16 KiB).")
@click.option("--keep-alive-timeout", type=click.IntRange(min=1), default=5, show_default=True,
              help="Seconds an idle keep-alive connection stays open.")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="On SIGTERM or Ctrl-C: seconds in-flight requests get to finish before shutdown.")
@click.option("--start-timeout", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="Seconds the replicas may take to start (placement, model load, warm-up) before giving up.")
@click.option("--ray-address", default=None, help="Ray cluster to run on (default: $RAY_ADDRESS, else a new local Ray).")
@click.option("--app-name", default="gan-deploy", show_default=True, help="Ray Serve application name (several can share a cluster).")
@click.option("--route-prefix", default="/", show_default=True, help="URL prefix of the app (e.g. /gan: /gan/generate).")
@click.option("--access-log", is_flag=True, help="Log every request (off by default: it costs throughput).")
@click.option("--write-config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the equivalent Ray Serve config file (for `serve deploy` or a KubeRay RayService) and exit.")
def serve(checkpoint, onnx, engine, value_range, backend, device, host, port, max_batch_size, batch_wait_ms,
          max_images_per_request, max_queued, replicas, num_cpus, num_gpus, read_timeout, request_timeout, max_body_bytes,
          max_header_bytes, keep_alive_timeout, drain_timeout, start_timeout, ray_address, app_name, route_prefix, access_log,
          write_config) -> None:
    """Serve the generator over HTTP, batching concurrent requests into one backend call.

    POST /generate with a JSON body naming images by (seed, index), exactly as `generate` does: the image
    for (S, i) is byte-identical to file i of `gan-deploy generate --seed S`. Answers PNG bytes, base64
    PNGs in JSON, or a .npy array, with an ETag. GET /healthz (liveness), /readyz (readiness), /metrics
    (Prometheus text, or ?format=json); KServe v2 under /v2. Every error is JSON with a reason; an
    overloaded service answers 503 with Retry-After at once. SIGTERM or Ctrl-C drains, then stops.

    \b
    Examples:
      gan-deploy serve --onnx models/digits_dcgan.onnx --port 8000
      curl -s localhost:8000/generate -d '{"seed": 7, "start": 0, "count": 4}'
      curl -s localhost:8000/generate -d '{"seeds": [7], "format": "png"}' -o seed7.png
      gan-deploy serve --onnx /shared/g.onnx --host 0.0.0.0 --replicas 4 --write-config serve.yaml  # serve deploy / KubeRay
      RAY_ADDRESS=auto gan-deploy serve --device cuda --replicas 4 --host 0.0.0.0   # a Ray cluster
    """
    import os

    from gan_deploy.serve.api import ServeConfig

    if not route_prefix.startswith("/") or (len(route_prefix) > 1 and route_prefix.endswith("/")):
        raise GanDeployError("bad --route-prefix", repr(route_prefix), expected="'/' or a path such as /gan (no trailing slash)")

    art = load_artifact_from_options(checkpoint, onnx, engine, value_range)
    if art.kind == "engine":  # the engine's optimization profile bounds every batch it can run
        from gan_deploy.artifacts.engine import read_sidecar
        top = read_sidecar(art.path)["profile"]["max"]
        if max_batch_size > top:
            raise GanDeployError("--max-batch-size exceeds the engine's profile", max_batch_size, expected=f"<= {top}, the engine's max batch", hint="lower --max-batch-size, or rebuild the engine with a larger max batch")
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if not address and write_config is None:  # local: settle backend, device and port here: a one-line error, not a Ray traceback
        from gan_deploy.backends import make_runner
        from gan_deploy.serve.api import check_port_free
        runner = make_runner(backend, art, device)  # checks the backend takes this artifact; loads nothing
        backend, device = runner.name, runner.device
        from gan_deploy.precision.runtime_gate import REGATED_BACKENDS, require_runtime_gate
        if backend in REGATED_BACKENDS and art.precision != "fp32":  # refused here in one line, not by every replica
            require_runtime_gate(runner)
            runner.close()
        check_port_free(host, port)
    if max_batch_size > max_images_per_request * max_queued:
        raise GanDeployError("--max-batch-size can never fill", max_batch_size, expected=f"<= --max-images-per-request x --max-queued ({max_images_per_request * max_queued})")
    if num_gpus is None:
        num_gpus = 1.0 if device.startswith("cuda") else 0.0
    cfg = ServeConfig(art.kind, os.path.abspath(art.path), art.sha256, art.spec.value_range if art.kind == "onnx" else None,
                      backend, device, max_batch_size, batch_wait_ms, max_images_per_request, max_queued, replicas,
                      num_cpus, num_gpus, read_timeout_s=read_timeout, request_timeout_s=request_timeout,
                      max_body_bytes=max_body_bytes or 0, max_header_bytes=max_header_bytes, drain_timeout_s=drain_timeout)
    if write_config is not None:
        from gan_deploy.serve.config_file import write_serve_config
        click.echo(write_serve_config(write_config, cfg, host, port, keep_alive_timeout, app_name, route_prefix))
        return
    try:
        from gan_deploy.serve import ray_serve as service
    except ImportError as e:
        raise GanDeployError("Ray Serve is not installed", f"{e.name}", hint='from the clone: pip install -e ".[serve]"') from None

    t0 = time.monotonic()

    def ready(url: str) -> None:
        click.echo(f"serving {art.describe()} with {backend} on {device} at {url} (started in {time.monotonic() - t0:.1f} s)", err=True)
        click.echo(f"  try: curl -s {url}/generate -d '{{\"seed\": 0, \"start\": 0, \"count\": 4}}'   "
                   f"(health: {url}/healthz, readiness: {url}/readyz, metrics: {url}/metrics); Ctrl-C drains and stops", err=True)

    def on_signal(name: str) -> None:
        click.echo(f"{name}: draining (in-flight requests get up to {drain_timeout:g} s) ...", err=True)

    click.echo("starting Ray Serve ...", err=True)
    report = service.serve_forever(cfg, host, port, ray_address=address, access_log=access_log, ready=ready, on_signal=on_signal,
                                   start_timeout_s=start_timeout, keep_alive_s=keep_alive_timeout, name=app_name,
                                   route_prefix=route_prefix)
    if report is None:
        click.echo("stopped", err=True)
    elif report.get("in_flight_left"):
        click.echo(f"stopped; {report['in_flight_left']} request(s) were still in flight after {drain_timeout:g} s", err=True)
    else:
        click.echo(f"stopped: drained in {report['waited_s']:.1f} s, shut down in {report['shutdown_s']:.1f} s", err=True)


@click.command("triton-repo", short_help="Model repository for NVIDIA Triton (ONNX and TensorRT plan).")
@click.option("--checkpoint", "-c", type=click.Path(path_type=Path), default=None,
              help="Checkpoint to export into the repository (default: the shipped model, unless --onnx or --engine).")
@click.option("--onnx", type=click.Path(dir_okay=False, path_type=Path), default=None, help="ONNX generator to put in the repository.")
@click.option("--engine", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TensorRT engine from `gan-deploy build-engine` (with its .json sidecar): adds a <name>_trt model.")
@value_range_option
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("triton_repo"), show_default=True)
@click.option("--name", default="gan_generator", show_default=True, help="Model name (the ONNX model; the plan is <name>_trt).")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="max_batch_size of the ONNX model (the plan's is its engine profile's max).")
@click.option("--preferred-batch-sizes", callback=int_list, default=None,
              help="Dynamic batcher's preferred sizes (default: max_batch_size; for the plan: profile opt and max).")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=500, show_default=True,
              help="How long Triton's dynamic batcher waits to fill a batch.")
@click.option("--instance-kind", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="Where Triton runs the ONNX model (the plan always runs on a GPU).")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Model instances per device.")
@click.option("--overwrite", is_flag=True, help="Replace models of the same name already in the repository.")
def triton_repo(checkpoint, onnx, engine, value_range, out, name, max_batch_size, preferred_batch_sizes, max_queue_delay_us,
                instance_kind, instances, overwrite) -> None:
    """Write a Triton Inference Server model repository: config.pbtxt + model file per model.

    Names, types and shapes come from the artifact; every config.pbtxt has max_batch_size and dynamic
    batching, and is checked against Triton's own ModelConfig schema when tritonclient is installed.

    \b
    Examples:
      gan-deploy triton-repo --onnx models/digits_dcgan.onnx --out triton_repo/
      gan-deploy triton-repo --onnx models/digits_dcgan.onnx --engine engines/digits_dcgan.fp16.engine --out triton_repo/
      docker run --gpus all --rm -p 8000:8000 -v $PWD/triton_repo:/models \\
          nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models
    """
    from gan_deploy.serve.triton import triton_repo_from_artifacts

    art = None
    if onnx is not None or checkpoint is not None or engine is None:
        art = load_artifact_from_options(checkpoint, onnx, None, value_range)
    report = triton_repo_from_artifacts(out, art, engine, name, max_batch_size, preferred_batch_sizes, max_queue_delay_us,
                                        instance_kind, instances, overwrite)
    click.echo(report.summary())
