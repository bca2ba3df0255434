"""The `gan-deploy` command line. Commands only parse, call one library function, and print.

Every GanDeployError becomes a one-line `Error: ...` and exit code 2; Ctrl-C becomes exit code 130.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from gan_deploy import __version__
from gan_deploy.core.errors import GanDeployError

# Idle OpenMP threads sleep instead of spin-waiting. Set before any command imports torch: on a machine
# shared with other work (or with our own writer threads), spinning threads get descheduled mid-region and
# eager PyTorch ran 2-4x slower (measured: batch 64 on 2 cores, 218 ms -> 47 ms). onnxruntime's pool gets
# the same policy (backends/onnxruntime.py). A value the user sets wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GanDeployError as e:
            click.secho(f"Error: {e.one_line()}", err=True, fg="red")
            ctx.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("\nInterrupted: files written so far are complete; nothing half-written was left.", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gan-deploy")
def main() -> None:
    """Take a GAN generator from PyTorch to fast, verified inference.

    \b
    Typical flow:
      gan-deploy train                      # or use the shipped models/digits_dcgan
      gan-deploy export                     # -> models/digits_dcgan.onnx, checked against eager
      gan-deploy generate -n 1000 --out samples/
      gan-deploy bench                      # eager vs torch.compile vs onnxruntime
    """


# -- shared option bundles --------------------------------------------------------------------------

def artifact_options(f: Callable) -> Callable:
    """--checkpoint / --onnx / --engine / --value-range: which generator to run."""
    f = click.option("--value-range", "value_range", type=click.Choice(["-1,1", "0,1"]), default=None,
                     help="Output range of a foreign ONNX generator without gan-deploy metadata (default -1,1).")(f)
    f = click.option("--engine", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="TensorRT engine built by `gan-deploy build-engine`.")(f)
    f = click.option("--onnx", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="ONNX generator: ours from `export`, or any with input [N,Z] and output [N,C,H,W].")(f)
    f = click.option("--checkpoint", "-c", type=click.Path(path_type=Path), default=None,
                     help="Generator checkpoint (.safetensors with its .json). Default: the shipped models/digits_dcgan.")(f)
    return f


def load_artifact_from_options(checkpoint, onnx, engine, value_range):
    from gan_deploy.artifacts.onnx import load_artifact, parse_value_range
    return load_artifact(checkpoint, onnx, engine, parse_value_range(value_range))


def device_option(f: Callable) -> Callable:
    return click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")(f)


# -- commands -------------------------------------------------------------------------------------

@main.command(short_help="PyTorch -> ONNX (dynamic batch), checked against eager.")
@click.option("--checkpoint", "-c", type=click.Path(path_type=Path), default=None,
              help="Checkpoint to export. Default: the shipped models/digits_dcgan.")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ONNX file to write. Default: beside the checkpoint, with .onnx.")
@click.option("--opset", type=click.IntRange(min=17), default=17, show_default=True)
@click.option("--tolerance", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="Max |onnxruntime - eager| allowed on the [-1,1] image scale.")
@click.option("--factory", default=None,
              help="Your own generator: 'package.module:callable' or 'path/to/file.py:ClassName'.")
@click.option("--kwargs", "kwargs_json", default="{}", show_default=True, help="Constructor arguments for --factory, as JSON.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Weights for --factory: .safetensors, or a state dict (loaded with weights_only=True).")
@click.option("--latent-dim", type=click.IntRange(min=1), default=None, help="Latent size Z for --factory, if the model has no latent_dim/nz attribute.")
@click.option("--value-range", type=click.Choice(["-1,1", "0,1"]), default="-1,1", show_default=True,
              help="Output range of a --factory generator (tanh: -1,1; sigmoid: 0,1).")
def export(checkpoint, out, opset, tolerance, factory, kwargs_json, weights, latent_dim, value_range) -> None:
    """Export a generator to ONNX with a dynamic batch axis, verified against eager PyTorch.

    Runs onnx.checker, then the same latents through onnxruntime and PyTorch; nothing is written if they
    differ by more than --tolerance. The ONNX metadata records the generator config and the sha256 of
    the checkpoint it came from.

    \b
    Examples:
      gan-deploy export
      gan-deploy export -c runs/mine/generator.safetensors -o mine.onnx
      gan-deploy export --factory examples/my_gan.py:Generator --kwargs '{"nz": 100}' \\
                        --weights netG.pth --out netG.onnx
    """
    import json

    from gan_deploy.artifacts.onnx import parse_value_range
    from gan_deploy.export.onnx import onnx_from_checkpoint, onnx_from_factory

    if factory:
        try:
            kwargs = json.loads(kwargs_json)
        except json.JSONDecodeError as e:
            raise GanDeployError("--kwargs is not valid JSON", kwargs_json, expected='an object such as {"nz": 100}', hint=str(e)) from None
        if not isinstance(kwargs, dict):
            raise GanDeployError("--kwargs must be a JSON object", kwargs_json, expected='an object such as {"nz": 100}')
        if out is None:
            raise GanDeployError("--out is required with --factory", None, expected="an .onnx file name", hint="add e.g. --out my_generator.onnx")
        report = onnx_from_factory(factory, out, kwargs, weights, latent_dim, parse_value_range(value_range), opset, tolerance)
    else:
        report = onnx_from_checkpoint(checkpoint, out, opset, tolerance)
    click.echo(report.summary())


def _batch_sizes(ctx, param, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers such as 1,16,64,256") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"{value!r}: expected integers >= 1, such as 1,16,64,256")
    return sizes


@main.command(short_help="Batched latent -> image files, any backend.")
@artifact_options
@click.option("-n", "--num", "n", type=click.IntRange(min=1), default=1000, show_default=True, help="Number of images.")
@click.option("--out", "-o", type=click.Path(file_okay=True, path_type=Path), default=Path("samples"), show_default=True,
              help="Output folder (new or empty, unless --overwrite).")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--backend", type=click.Choice(["auto", "eager", "compile", "onnxruntime", "tensorrt"]), default="auto", show_default=True,
              help="auto = the fastest backend available for this artifact.")
@device_option
@click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), default=0, show_default=True,
              help="Image i is a pure function of (seed, i).")
@click.option("--format", "fmt", type=click.Choice(["png", "jpg", "npy"]), default="png", show_default=True)
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write a sample grid PNG of the first 64 images.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty folder (files of the same name are replaced).")
@click.option("--no-manifest", is_flag=True, help="Do not write manifest.csv (index, seed, file).")
@click.option("--shard", default=None, metavar="K/N", help="Write only shard K of N (whole batches); the N shards together equal one run.")
@click.option("--writers", type=click.IntRange(min=1), default=None, help="Writer threads (default: 2 per core, at most 8).")
@click.option("--compare", is_flag=True, help="Afterwards, time the chosen backend against onnxruntime and eager on the same batch.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the run's report as JSON.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: spread the batches over Ray Data workers ($RAY_ADDRESS for a cluster, else a local Ray); same files.")
@click.option("--ray-workers", type=click.IntRange(min=1), default=None,
              help="With --executor ray: number of workers (default: every CPU, or every GPU with --device cuda).")
def generate(checkpoint, onnx, engine, value_range, n, out, batch_size, backend, device, seed, fmt, grid, overwrite,
             no_manifest, shard, writers, compare, json_out, executor, ray_workers) -> None:
    """Generate image files from seed-derived latents, in batches, on any backend.

    Image i depends only on (seed, i): the same files come out whatever the batch size or backend
    (within the backend's tolerance). Each file is written under a temporary name and renamed, so an
    interrupted run (Ctrl-C) leaves only complete files and a manifest of them.

    \b
    Examples:
      gan-deploy generate -n 1000 --out samples/
      gan-deploy generate -n 100000 --out big/ --backend onnxruntime -b 512 --grid grid.png
      gan-deploy generate --onnx their_generator.onnx --value-range 0,1 -n 64 --out theirs/
      gan-deploy generate -n 1000000 --out part0/ --shard 0/4      # one machine's share
      RAY_ADDRESS=auto gan-deploy generate -n 1000000 --out /shared/big/ --executor ray
    """
    import json

    from gan_deploy.backends import make_runner
    from gan_deploy.generate.pipeline import GenerateInterrupted, generate as run_generate, parse_shard

    art = load_artifact_from_options(checkpoint, onnx, engine, value_range)
    try:
        if executor == "ray":
            from gan_deploy.serve.ray_data import generate_ray
            click.echo(f"{art.describe()} -> backend {backend} on Ray workers", err=True)
            report = generate_ray(art, backend, device, n, out, batch_size, seed, fmt, overwrite, grid, not no_manifest,
                                  parse_shard(shard), ray_workers)
        else:
            runner = make_runner(backend, art, device, spin=False)  # leave idle cycles to the writer threads
            click.echo(f"{art.describe()} -> backend {runner.name}", err=True)
            report = run_generate(runner, n, out, batch_size, seed, fmt, overwrite, grid, not no_manifest, writers,
                                  parse_shard(shard))
    except GenerateInterrupted as e:
        r = e.report
        click.echo(f"\nInterrupted: {r.n_written} complete files in {r.out}"
                   f"{' (listed in ' + str(r.manifest) + ')' if r.manifest else ''}; no temporary files left.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    click.echo(report.summary())
    if report.grid:
        click.echo(f"sample grid: {report.grid}")
    if compare:
        from gan_deploy.bench.run import compare_latency
        report.compare = compare_latency(art, report.backend if executor == "ray" else runner.name, batch_size, device, seed)
        click.echo(f"latency at batch {batch_size} on the same latents:")
        ref = next((r for r in report.compare if r["backend"] == "eager"), None)
        for r in report.compare:
            rel = f"  {ref['mean_ms'] / r['mean_ms']:.2f}x eager" if ref else ""
            click.echo(f"  {r['backend']:<12} {r['mean_ms']:8.3f} ms/batch  {r['images_per_s']:10,.0f} img/s{rel}  max err {r['max_abs_err']:.1e}")
    if json_out:
        from gan_deploy.core.fileio import atomic_write_text
        atomic_write_text(json_out, json.dumps(report.to_dict(), indent=2) + "\n")


@main.command(short_help="Latency/throughput of the backends side by side.")
@artifact_options
@click.option("--backends", default=None, help="Comma-separated backends (default: every one available here).")
@click.option("--batch-sizes", callback=_batch_sizes, default="1,16,64,256", show_default=True)
@device_option
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Unmeasured calls per backend and batch size.")
@click.option("--iters", type=click.IntRange(min=3), default=30, show_default=True, help="Measured calls (at least).")
@click.option("--min-time", type=click.FloatRange(min=0), default=0.5, show_default=True, help="Measure for at least this many seconds.")
@click.option("--max-time", type=click.FloatRange(min=0.01), default=10.0, show_default=True, help="Stop measuring one case after this many seconds.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads (default: all cores).")
@click.option("--variant", "variants", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Also measure this ONNX (e.g. from `quantize --int8`) with onnxruntime. Repeatable.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--gate-samples", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also show the quality gate's figures (NaN/Inf, saturation, PSNR, FD) of each backend on this many images; 1000 is the gate's own n.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write all figures as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write a latency/throughput vs batch size plot (PNG).")
def bench(checkpoint, onnx, engine, value_range, backends, batch_sizes, device, warmup, iters, min_time, max_time, threads,
          variants, seed, gate_samples, json_out, plot) -> None:
    """Compare backends on identical latents: latency mean/p50/p90/p99, images/s, speed-up and error vs eager.

    Warm-up calls are not measured; on a GPU the clock is read after synchronizing. The error columns
    compare each backend's images with the reference's (eager FP32) on the same latents.

    \b
    Examples:
      gan-deploy bench
      gan-deploy bench --batch-sizes 1,64,256 --json bench.json --plot bench.png
      gan-deploy bench --backends eager,onnxruntime --variant models/digits_dcgan.int8.onnx --gate-samples 1000
    """
    from gan_deploy.artifacts.onnx import load_artifact
    from gan_deploy.bench.run import bench as run_bench, write_json, write_plot

    art = load_artifact_from_options(checkpoint, onnx, engine, value_range)
    names = [b.strip() for b in backends.split(",") if b.strip()] if backends else None
    extra = [load_artifact(onnx=v) for v in variants]
    report = run_bench(art, names, batch_sizes, warmup, iters, min_time, max_time, seed, device, extra, threads,
                       progress=lambda what: click.echo(f"measuring {what} ...", err=True), gate_samples=gate_samples)
    click.echo(report.table())
    if json_out:
        click.echo(f"wrote {write_json(report, json_out)}")
    if plot:
        click.echo(f"wrote {write_plot(report, plot)}")


def run() -> None:
    main(prog_name="gan-deploy")


from gan_deploy.cli.train import train; main.add_command(train)  # noqa: E402
from gan_deploy.cli.eval import eval_cmd; main.add_command(eval_cmd, name="eval")  # noqa: E402
from gan_deploy.cli.precision import quantize; main.add_command(quantize)  # noqa: E402
from gan_deploy.cli.precision import build_engine; main.add_command(build_engine)  # noqa: E402
from gan_deploy.cli.serve import serve; main.add_command(serve)  # noqa: E402
from gan_deploy.cli.serve import triton_repo; main.add_command(triton_repo)  # noqa: E402
