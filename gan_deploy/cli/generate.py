"""`gan-deploy generate`: seed-derived latents -> image files, tar shards or one array, on any backend."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from gan_deploy.cli.options import (
    artifact_options,
    backend_option,
    command,
    device_option,
    json_option,
    load_artifact_from_options,
    output_option,
    seed_option,
    torch_precision_option,
    write_json,
)
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.images import FORMATS
from gan_deploy.generate.device_jpeg import JPEG_ENCODERS
from gan_deploy.generate.options import EXECUTORS
from gan_deploy.generate.pool import KINDS as WRITER_KINDS
from gan_deploy.generate.sinks import SINKS

EXIT_INTERRUPTED = 130
# options a resumed run takes from the run record when they are not given (and refuses when they differ)
RESUMED = ("n", "batch_size", "seed", "fmt", "sink", "shard", "backend", "precision", "jpeg_encoder")


@command("generate", short_help="Batched latent -> image files, tar shards or an array, any backend.")
@artifact_options()
@click.option("-n", "--num", "n", type=click.IntRange(min=1), default=1000, show_default=True, help="Number of images.")
@output_option("--out", "-o", kind="generate-folder", default=Path("samples"), show_default=True,
              help="Output folder (new or empty, unless --overwrite or --resume).")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images per inference call (larger: faster on a GPU, more memory); the files do not depend on it.")
@backend_option()
@device_option()
@torch_precision_option(help="With --backend eager or compile: fp32 (strict), tf32, fp16 or bf16. Other backends run the precision of their file.")
@seed_option(help="Image i is a pure function of (seed, i).")
@click.option("--sink", type=click.Choice(list(SINKS)), default="folder", show_default=True,
              help="folder: one file per image; tar: WebDataset tar shards ({key}.png + {key}.json); array: one images.npy [N, H, W, C] uint8.")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default=None, help="Image format [default: png; npy for --sink array].")
@click.option("--jpeg-encoder", type=click.Choice(list(JPEG_ENCODERS)), default="cpu", show_default=True,
              help="With --format jpg: cpu (PIL, in the encoder workers) or cuda (nvJPEG via torchvision on the GPU, with "
                   "--backend eager/compile --device cuda, RGB only). Different bytes; which is faster depends on image size "
                   "and cores: benchmarks/jpeg_encoders.py measures both.")
@click.option("--tar-shard-size", type=click.IntRange(min=1), default=None, help="With --sink tar: samples per tar shard [default: 10000].")
@click.option("--tar-prefix", default=None, help="With --sink tar: shard file names PREFIX-000000.tar [default: images].")
@output_option("--grid", kind="png", default=None, help="Also write a sample grid PNG of the first 64 images.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty folder (files of the same name are replaced).")
@click.option("--resume", is_flag=True, help="Finish the interrupted run in --out (its settings are read from its generate.json).")
@click.option("--no-manifest", is_flag=True, help="Do not keep manifest.csv (index, seed, file) and generate.json (no --resume then).")
@click.option("--shard", default=None, metavar="K/N", help="Write only job shard K of N: a share of the image indices, the same whatever the batch size (whole tar "
                   "shards with --sink tar); the N shards together equal one run. An empty shard writes nothing and exits 0.")
@click.option("--writers", type=click.IntRange(min=1), default=None,
              help="Encoder workers (default: cores - 1 processes, or 2 threads per core, at most 8). At most 16 threads or "
                   "4 processes per core (processes: also what the free memory holds at ~64 MiB each).")
@click.option("--writer-kind", type=click.Choice(list(WRITER_KINDS)), default="auto", show_default=True,
              help="process: encoder processes fed through shared memory; thread: threads (auto: processes with >= 3 cores and >= 20,000 images).")
@click.option("--compare", is_flag=True, help="Afterwards, time the chosen backend against onnxruntime and eager on the same batch.")
@json_option()
@click.option("--executor", type=click.Choice(list(EXECUTORS)), default="local", show_default=True,
              help="ray: spread the batches over Ray Data workers ($RAY_ADDRESS for a cluster, else a local Ray); same files.")
@click.option("--ray-workers", type=click.IntRange(min=1), default=None,
              help="With --executor ray: number of workers (default: every CPU, or every GPU with --device cuda). A local Ray: at "
                   "most 4 per core and what the free memory holds at ~512 MiB each; a cluster: its CPUs or GPUs.")
@click.option("--allow-bad-images", is_flag=True,
              help="Write the images even when the first ones are mostly NaN/Inf or outside the model's value range "
                   "(black or clipped pixels); without it such a run is refused before anything is written.")
@click.option("--no-space-check", "no_space_check", is_flag=True,
              help="Start even when the files (estimated from the first images) need more than the free disk space; "
                   "without it such a run is refused before anything is written.")
@click.pass_context
def generate(ctx, checkpoint, onnx, engine, value_range, n, out, batch_size, backend, device, precision, seed, sink, fmt,
             jpeg_encoder, tar_shard_size, tar_prefix, grid, overwrite, resume, no_manifest, shard, writers, writer_kind, compare,
             json_out, executor, ray_workers, allow_bad_images, no_space_check) -> None:
    """Generate images from seed-derived latents, in batches, on any backend, into a folder of files, WebDataset
    tar shards or one memory-mappable array.

    Image i depends only on (seed, i): the same bytes come out whatever the batch size, job shard, executor or
    interruption (and, within the backend's tolerance, backend). The manifest is a journal of complete images,
    so an interrupted run (Ctrl-C, SIGTERM, kill -9, a full disk) leaves only complete files listed in it, and
    --resume finishes it.

    \b
    Examples:
      gan-deploy generate -n 1000 --out samples/
      gan-deploy generate -n 100000 --out big/ --backend onnxruntime -b 512 --grid grid.png
      gan-deploy generate -n 1000000 --out wds/ --sink tar --tar-shard-size 10000
      gan-deploy generate -n 1000000 --out arr/ --sink array      # np.load(arr/images.npy, mmap_mode="r")
      gan-deploy generate --out big/ --resume                      # finish an interrupted run
      gan-deploy generate --onnx their_generator.onnx --value-range 0,1 -n 64 --out theirs/
      gan-deploy generate -n 1000000 --out part0/ --shard 0/4      # one machine's share
      RAY_ADDRESS=auto gan-deploy generate -n 1000000 --out /shared/big/ --executor ray
    """
    from gan_deploy.generate import GenerateInterrupted, GenerateOptions, generate_images
    from gan_deploy.generate.options import parse_shard

    sink_options = {}
    if tar_shard_size is not None:
        sink_options["shard_size"] = tar_shard_size
    if tar_prefix is not None:
        sink_options["prefix"] = tar_prefix
    if sink_options and sink != "tar" and not resume:
        raise GanDeployError("--tar-shard-size and --tar-prefix need --sink tar", f"--sink {sink}", expected="--sink tar",
                             hint="add --sink tar, or leave the tar options out")
    given = {"n": n, "batch_size": batch_size, "seed": seed, "fmt": fmt, "sink": sink, "shard": list(parse_shard(shard)),
             "backend": backend, "precision": precision, "jpeg_encoder": jpeg_encoder}
    artifact_given = any(v is not None for v in (checkpoint, onnx, engine))
    if resume:
        given, sink_options, (checkpoint, onnx, engine) = _resumed(ctx, out, given, sink_options, (checkpoint, onnx, engine),
                                                                   artifact_given)
    art = load_artifact_from_options(checkpoint, onnx, engine, value_range)
    opts = GenerateOptions(n=given["n"], out=out, batch_size=given["batch_size"], seed=given["seed"], fmt=given["fmt"], sink=given["sink"],
                           sink_options=sink_options, overwrite=overwrite, resume=resume, grid=grid, json_out=json_out,
                           manifest=not no_manifest, writers=writers, writer_kind=writer_kind, shard=tuple(given["shard"]),
                           backend=given["backend"], device=device, precision=given["precision"], executor=executor,
                           ray_workers=ray_workers, jpeg_encoder=given["jpeg_encoder"], allow_bad_images=allow_bad_images,
                           space_check=not no_space_check)
    try:
        report = generate_images(art, opts, on_start=lambda what: click.echo(what, err=True))
    except GenerateInterrupted as e:
        r = e.report
        click.echo(f"\nInterrupted: {r.n_written + r.n_resumed} complete images in {r.out}"
                   f"{' (listed in ' + str(r.manifest) + '; finish with --resume)' if r.manifest else ''}.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    click.echo(report.summary())
    if report.empty:  # an empty job shard: that one line, nothing written, exit 0 (a fleet runs every K)
        return
    if report.grid:
        click.echo(f"sample grid: {report.grid}")
    if compare:
        from gan_deploy.bench.run import compare_latency
        report.compare = rows = compare_latency(art, report.backend, batch_size, device, seed)
        click.echo(f"latency at batch {batch_size} on the same latents:")
        ref = next((row for row in rows if row["backend"] == "eager"), None)
        for row in rows:
            rel = f"  {ref['p50_ms'] / row['p50_ms']:.2f}x eager" if ref else ""
            click.echo(f"  {row['backend']:<12} {row['p50_ms']:8.3f} ms/batch (p50)  {row['images_per_s']:10,.0f} img/s{rel}  "
                       f"max err {row['max_abs_err']:.1e}")
        write_json(json_out, report.to_dict())
    elif json_out:
        click.echo(f"wrote {json_out}", err=True)


def _resumed(ctx: click.Context, out: Path, given: dict, sink_options: dict, artifacts: tuple, artifact_given: bool):
    """--resume: the settings of the interrupted run, from its record; an option given that differs is an error."""
    from gan_deploy.generate.journal import RECORD, read_record

    if not (Path(out) / RECORD).is_file():
        raise GanDeployError("nothing to resume", f"{out} has no {RECORD}", expected="the --out folder of an interrupted generate run",
                             hint="check --out, or start the run without --resume")
    rec = read_record(out)
    merged = dict(given)
    for name in RESUMED:
        explicit = ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)
        if name == "backend" and not explicit:
            merged[name] = rec.get("backend", given[name])  # the backend `auto` chose then
            continue
        if explicit and rec.get(name) != given[name] and not (name == "backend" and given[name] == "auto"):
            raise GanDeployError("--resume with a setting that differs from the interrupted run's", f"{name}: {given[name]!r}, "
                                 f"recorded {rec.get(name)!r}", hint="leave it out: --resume takes the settings from generate.json")
        merged[name] = rec.get(name, given[name])
    opts = dict(rec.get("sink_options") or {})
    for k, v in sink_options.items():
        if opts.get(k) != v:
            raise GanDeployError("--resume with a setting that differs from the interrupted run's", f"{k}: {v!r}, recorded {opts.get(k)!r}",
                                 hint="leave it out: --resume takes the settings from generate.json")
    model = rec.get("model") or {}
    if not artifact_given and model.get("path"):  # the interrupted run's model file (checked by sha256 in the run)
        kind, path = model.get("kind"), Path(model["path"])
        artifacts = (path if kind == "checkpoint" else None, path if kind == "onnx" else None, path if kind == "engine" else None)
    return merged, opts, artifacts
