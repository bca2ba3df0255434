"""`gan-deploy serve` (online HTTP service: our listener, batching in-process or on Ray Serve replicas) and `gan-deploy triton-repo` (Triton model repository).

Ray and tritonclient are imported inside the commands only: `gan-deploy --help` stays fast without them.
"""
from __future__ import annotations

from pathlib import Path

import click

from gan_deploy.cli.options import (
    artifact_options,
    backend_option,
    command,
    device_option,
    int_list,
    load_artifact_from_options,
    output_option,
)


@command(short_help="HTTP service with request batching across clients (in-process, or Ray Serve replicas).")
@artifact_options()
@backend_option()
@device_option()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--max-batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most images per backend call; requests are merged up to this.")
@click.option("--batch-wait-ms", type=float, default=0.0, show_default=True,
              help="How long a batch waits for more requests before it runs, once the backend is free (0: not at all; "
                   "requests that arrive while a batch runs join the next one anyway).")
@click.option("--max-images-per-request", type=int, default=256, show_default=True)
@click.option("--max-queued", type=int, default=64, show_default=True,
              help="Most /generate requests admitted per replica at once; more are answered 503 at once.")
@click.option("--replicas", type=int, default=1, show_default=True, help="Generator replicas on Ray Serve (more than 1 implies --ray).")
@click.option("--ray", "use_ray", is_flag=True, help="Run the generator as Ray Serve replicas (implied by --replicas > 1, --ray-address or $RAY_ADDRESS; default: in this process).")
@click.option("--num-cpus", type=float, default=1.0, show_default=True, help="CPUs Ray reserves per replica.")
@click.option("--num-gpus", type=float, default=None, help="GPUs Ray reserves per replica (default: 1 with a CUDA device, else 0).")
@click.option("--read-timeout", type=float, default=10.0, show_default=True,
              help="Seconds the whole request body may take to arrive (slower: 408).")
@click.option("--request-timeout", type=float, default=60.0, show_default=True,
              help="Seconds from arrival to answer (longer: 504).")
@click.option("--max-body-bytes", type=int, default=None,
              help="Largest request body (default: 4096 + 64 x --max-images-per-request).")
@click.option("--max-header-bytes", type=int, default=8192, show_default=True,
              help="Largest request header block (larger: 431; the HTTP server itself refuses more than 16 KiB).")
@click.option("--keep-alive-timeout", type=int, default=5, show_default=True,
              help="Seconds an idle keep-alive connection stays open.")
@click.option("--max-connections", type=int, default=1024, show_default=True,
              help="Open connections at most; past it probes are still answered, anything else gets a JSON 503.")
@click.option("--header-timeout", type=float, default=10.0, show_default=True,
              help="Seconds a connection's request line and headers may take (silent or slower: closed, or a JSON 408).")
@click.option("--pre-stop", type=float, default=0.0, show_default=True,
              help="On SIGTERM: seconds /readyz answers 503 while requests are still served, before the listener closes.")
@click.option("--drain-timeout", type=float, default=30.0, show_default=True,
              help="On SIGTERM or Ctrl-C, once the listener closed: seconds in-flight requests get to finish.")
@click.option("--start-timeout", type=float, default=120.0, show_default=True,
              help="Seconds the replicas may take to start (placement, model load, warm-up) before giving up.")
@click.option("--ray-address", default=None, help="Ray cluster to run on (default: $RAY_ADDRESS, else a new local Ray).")
@click.option("--app-name", default="gan-deploy", show_default=True, help="Ray Serve application name (several can share a cluster).")
@click.option("--route-prefix", default="/", show_default=True, help="URL prefix of the app (e.g. /gan: /gan/generate).")
@click.option("--access-log", is_flag=True, help="Log every request (off by default: it costs throughput).")
@output_option("--write-config", kind="serve-config", default=None,
              help="Write a Ray Serve config file deploying the same app (for `serve deploy` or a KubeRay RayService) and exit.")
def serve(checkpoint, onnx, engine, value_range, backend, device, host, port, max_batch_size, batch_wait_ms,
          max_images_per_request, max_queued, replicas, use_ray, num_cpus, num_gpus, read_timeout, request_timeout, max_body_bytes,
          max_header_bytes, keep_alive_timeout, max_connections, header_timeout, pre_stop, drain_timeout, start_timeout, ray_address,
          app_name, route_prefix, access_log, write_config) -> None:
    """Serve the generator over HTTP, batching concurrent requests into one backend call.

    POST /generate with a JSON body naming images by (seed, index), exactly as `generate` does: the image
    for (S, i) is byte-identical to file i of `gan-deploy generate --seed S`. Answers PNG bytes, base64
    PNGs in JSON, or a .npy array, with an ETag. GET /healthz (liveness), /readyz (readiness), /metrics
    (Prometheus text, or ?format=json); KServe v2 under /v2. Every error is JSON with a reason; an
    overloaded service answers 503 with Retry-After at once. SIGTERM or Ctrl-C drains (/readyz 503 for
    --pre-stop seconds, then the listener closes and requests in flight finish), then stops.

    \b
    Examples:
      gan-deploy serve --onnx models/digits_dcgan.onnx --port 8000
      curl -s localhost:8000/generate -H 'Content-Type: application/json' -d '{"seed": 7, "start": 0, "count": 4}'
      curl -s localhost:8000/generate -H 'Content-Type: application/json' -d '{"seeds": [7], "format": "png"}' -o seed7.png
      gan-deploy serve --onnx /shared/g.onnx --host 0.0.0.0 --replicas 4 --write-config serve.yaml  # serve deploy / KubeRay
      RAY_ADDRESS=auto gan-deploy serve --device cuda --replicas 4 --host 0.0.0.0   # a Ray cluster
    """
    from gan_deploy.serve.config import ServeConfig

    art = load_artifact_from_options(checkpoint, onnx, engine, value_range)
    cfg = ServeConfig(art, backend=backend, device=device, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
                      max_images_per_request=max_images_per_request, max_queued=max_queued, num_replicas=replicas,
                      num_cpus=num_cpus, num_gpus=num_gpus, read_timeout_s=read_timeout, request_timeout_s=request_timeout,
                      max_body_bytes=max_body_bytes or 0, max_header_bytes=max_header_bytes, drain_timeout_s=drain_timeout,
                      host=host, port=port, route_prefix=route_prefix, app_name=app_name, ray_address=ray_address,
                      keep_alive_s=keep_alive_timeout, start_timeout_s=start_timeout, access_log=access_log,
                      max_connections=max_connections, header_timeout_s=header_timeout, pre_stop_s=pre_stop, ray=use_ray)
    if write_config is not None:
        from gan_deploy.serve.config_file import write_serve_config
        click.echo(write_serve_config(write_config, cfg))
        return
    from gan_deploy.serve.driver import run_service
    run_service(cfg, echo=lambda line: click.echo(line, err=True))


@command("triton-repo", short_help="Model repository for NVIDIA Triton (ONNX and TensorRT plan).")
@artifact_options(checkpoint_help="Checkpoint to export into the repository (default: the shipped model, unless --onnx or --engine).",
                  onnx_help="ONNX generator to put in the repository.",
                  engine_help="TensorRT engine from `gan-deploy build-engine` (with its .json sidecar): adds a <name>_trt model.")
@output_option("--out", "-o", kind="triton-repo", default=Path("triton_repo"), show_default=True)
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
