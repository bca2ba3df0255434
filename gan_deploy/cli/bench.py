"""`gan-deploy bench`: the backends side by side on identical latents."""
from __future__ import annotations

import click

from gan_deploy.backends.compile import COMPILE_MODES
from gan_deploy.backends.torch_common import TORCH_PRECISIONS
from gan_deploy.cli.options import (
    InputPath,
    artifact_options,
    command,
    device_option,
    int_list,
    json_option,
    load_artifact_from_options,
    output_option,
    seed_option,
)
from gan_deploy.core.errors import GanDeployError


@command("bench", short_help="Latency/throughput of the backends side by side.")
@artifact_options()
@click.option("--backends", default=None, help="Comma-separated backends (default: every one available here).")
@click.option("--batch-sizes", callback=int_list, default="1,16,64,256", show_default=True)
@device_option()
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Unmeasured calls per backend and batch size.")
@click.option("--iters", type=click.IntRange(min=3), default=30, show_default=True, help="Measured calls (at least).")
@click.option("--min-time", type=click.FloatRange(min=0), default=0.5, show_default=True, help="Measure for at least this many seconds.")
@click.option("--max-time", type=click.FloatRange(min=0.01), default=10.0, show_default=True, help="Stop measuring one case after this many seconds.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads (default: all cores).")
@click.option("--variant", "variants", multiple=True, type=InputPath(dir_okay=False),
              help="Also measure this ONNX (e.g. from `quantize --int8`) with onnxruntime, and with OpenVINO when it is among the backends. Repeatable.")
@click.option("--precisions", default=None, metavar="LIST",
              help="Precisions of the PyTorch backends, comma-separated from: " + ", ".join(TORCH_PRECISIONS)
                   + " (default: all of them on a GPU, fp32 on the CPU). Each is its own row, e.g. compile:fp16.")
@click.option("--compile-mode", type=click.Choice(list(COMPILE_MODES)), default="default", show_default=True,
              help="torch.compile mode of the compile rows (max-autotune: slower to start, often faster on a GPU).")
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True,
              help="Interleaved measurement rounds: every backend gets its share of calls in each round.")
@seed_option()
@click.option("--gate-samples", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also show the quality gate's figures (NaN/Inf, saturation, PSNR, FD) of each backend on this many images; 1000 is the gate's own n.")
@json_option()
@output_option("--plot", kind="png", default=None, help="Write a latency/throughput vs batch size plot (PNG).")
def bench(checkpoint, onnx, engine, value_range, backends, batch_sizes, device, warmup, iters, min_time, max_time, threads,
          variants, precisions, compile_mode, rounds, seed, gate_samples, json_out, plot) -> None:
    """Compare backends on identical latents: latency mean/p50/p90/p99, images/s, speed-up and error vs eager.

    Warm-up calls are not measured; on a GPU the clock is read after synchronizing. The error columns
    compare each backend's images with the reference's (eager FP32) on the same latents.

    \b
    Examples:
      gan-deploy bench
      gan-deploy bench --batch-sizes 1,64,256 --json bench.json --plot bench.png
      gan-deploy bench --backends eager,onnxruntime --variant models/digits_dcgan.int8.onnx --gate-samples 1000
    """
    from gan_deploy.bench.run import BenchOptions, write_plot
    from gan_deploy.bench.run import bench as run_bench
    from gan_deploy.bench.run import write_json as write_bench_json

    art = load_artifact_from_options(checkpoint, onnx, engine, value_range)
    names = None
    if backends is not None:
        names = tuple(b.strip() for b in backends.split(",") if b.strip())
        if not names:
            raise GanDeployError("no backend named", repr(backends), expected="comma-separated backends such as eager,onnxruntime",
                                 hint="leave --backends out to measure every backend available here")
    opts = BenchOptions(backends=names, batch_sizes=batch_sizes, warmup=warmup, iters=iters, min_time_s=min_time,
                        max_time_s=max_time, seed=seed, device=device, threads=threads, variants=tuple(variants),
                        gate_samples=gate_samples, precisions=_precisions(precisions), compile_mode=compile_mode,
                        rounds=rounds)
    report = run_bench(art, opts)
    click.echo(report.table())
    if json_out:
        click.echo(f"wrote {write_bench_json(report, json_out)}")
    if plot:
        click.echo(f"wrote {write_plot(report, plot)}")


def _precisions(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in names if p not in TORCH_PRECISIONS]
    if not names or bad:
        raise GanDeployError("bad --precisions", repr(text), expected=f"comma-separated from {', '.join(TORCH_PRECISIONS)}")
    return names
