"""`gan-deploy generate`: seed-derived latents -> image files on any backend."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from gan_deploy.cli.options import (
    artifact_options,
    backend_option,
    device_option,
    json_option,
    load_artifact_from_options,
    write_json,
)
from gan_deploy.core.images import FORMATS
from gan_deploy.generate.pipeline import EXECUTORS

EXIT_INTERRUPTED = 130

@click.command("generate", short_help="Batched latent -> image files, any backend.")
@artifact_options
@click.option("-n", "--num", "n", type=click.IntRange(min=1), default=1000, show_default=True, help="Number of images.")
@click.option("--out", "-o", type=click.Path(file_okay=True, path_type=Path), default=Path("samples"), show_default=True,
              help="Output folder (new or empty, unless --overwrite).")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=256, show_default=True)
@backend_option
@device_option
@click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), default=0, show_default=True,
              help="Image i is a pure function of (seed, i).")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="png", show_default=True)
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write a sample grid PNG of the first 64 images.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty folder (files of the same name are replaced).")
@click.option("--no-manifest", is_flag=True, help="Do not write manifest.csv (index, seed, file).")
@click.option("--shard", default=None, metavar="K/N", help="Write only shard K of N (whole batches); the N shards together equal one run.")
@click.option("--writers", type=click.IntRange(min=1), default=None, help="Writer threads (default: 2 per core, at most 8).")
@click.option("--compare", is_flag=True, help="Afterwards, time the chosen backend against onnxruntime and eager on the same batch.")
@json_option
@click.option("--executor", type=click.Choice(list(EXECUTORS)), default="local", show_default=True,
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
    from gan_deploy.generate.pipeline import GenerateInterrupted, GenerateOptions, parse_shard, run

    art = load_artifact_from_options(checkpoint, onnx, engine, value_range)
    opts = GenerateOptions(n=n, out=out, batch_size=batch_size, seed=seed, fmt=fmt, overwrite=overwrite, grid=grid,
                           manifest=not no_manifest, writers=writers, shard=parse_shard(shard), backend=backend,
                           device=device, executor=executor, ray_workers=ray_workers)
    try:
        report = run(art, opts, on_start=lambda what: click.echo(what, err=True))
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
        report.compare = rows = compare_latency(art, report.backend, batch_size, device, seed)
        click.echo(f"latency at batch {batch_size} on the same latents:")
        ref = next((row for row in rows if row["backend"] == "eager"), None)
        for row in rows:
            rel = f"  {ref['p50_ms'] / row['p50_ms']:.2f}x eager" if ref else ""
            click.echo(f"  {row['backend']:<12} {row['p50_ms']:8.3f} ms/batch (p50)  {row['images_per_s']:10,.0f} img/s{rel}  "
                       f"max err {row['max_abs_err']:.1e}")
    write_json(json_out, report.to_dict())
