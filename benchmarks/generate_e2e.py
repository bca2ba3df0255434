"""`generate` end to end against its two bounds, and its peak memory against n.

Target (issue 2): end-to-end throughput >= 80% of min(inference-only, file-writing-only) throughput at
the chosen format, and peak memory that does not grow with n (n=100000 within 100 MB of n=1000).

    python benchmarks/generate_e2e.py [-n 10000] [--backend onnxruntime] [--batch-size 256] [--memory]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from gan_deploy.artifacts.load import load_artifact
from gan_deploy.backends import make_runner
from gan_deploy.core.images import to_uint8
from gan_deploy.core.latents import latents_range
from gan_deploy.core.timing import Stopwatch
from gan_deploy.generate.pipeline import GenerateOptions, _Writer, generate


def inference_only(runner, n: int, b: int) -> float:
    """images/s of latents -> backend -> uint8 pixels, nothing written (what generate's main thread does)."""
    runner.infer(latents_range(0, 0, b, runner.spec.latent_dim))  # warm-up
    with Stopwatch() as sw:
        for b0 in range(0, n, b):
            to_uint8(runner.infer(latents_range(0, b0, min(b, n - b0), runner.spec.latent_dim)), runner.spec.value_range)
    return n / sw.seconds


def writing_only(runner, n: int, b: int, fmt: str, writers: int, out: Path) -> float:
    """images/s of encoding + atomic file writes alone, same thread count, pixels made beforehand."""
    pixels = to_uint8(runner.infer(latents_range(0, 0, b, runner.spec.latent_dim)), runner.spec.value_range)
    out.mkdir(parents=True, exist_ok=True)
    w = _Writer(out, n, fmt, writers)
    with Stopwatch() as sw:
        futures = [w.submit(b0, pixels[: min(b, n - b0)]) for b0 in range(0, n, b)]
        for f in futures:
            f.result()
    w.close(cancel=False)
    return n / sw.seconds


def peak_rss_mb(n: int, backend: str, b: int, checkpoint: str | None) -> float:
    """Peak resident memory of a whole `gan-deploy generate` run, in a fresh interpreter that reports its own."""
    with tempfile.TemporaryDirectory() as d:
        args = ["generate", "-n", str(n), "--out", d, "-b", str(b), "--backend", backend] + (["-c", checkpoint] if checkpoint else [])
        code = ("import resource\nfrom gan_deploy.cli.main import main\n"
                f"try:\n    main({args!r})\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        r = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                           env={**os.environ, "TQDM_DISABLE": "1"})
    return int(r.stdout.strip().splitlines()[-1]) / 1024  # Linux reports KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--format", default="png")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--memory", action="store_true", help="also compare peak RSS of n=1000 and n=100000 runs (slow)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    art = load_artifact(a.checkpoint)
    # the inference bound with the backend at its fastest (onnxruntime spin-waiting, as in `bench`);
    # the end-to-end run as `gan-deploy generate` configures it (no spin-waiting, cycles left to the writers)
    runner = make_runner(a.backend, art).activate()
    gen_runner = make_runner(a.backend, art, spin=False).activate()
    writers = min(8, 2 * (os.cpu_count() or 1))
    res: dict = {"n": a.n, "backend": runner.describe(), "batch_size": a.batch_size, "format": a.format, "writers": writers,
                 "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as d:
        res["inference_only_img_s"] = inference_only(runner, a.n, a.batch_size)
        res["inference_only_generate_settings_img_s"] = inference_only(gen_runner, a.n, a.batch_size)
        res["writing_only_img_s"] = writing_only(runner, a.n, a.batch_size, a.format, writers, Path(d) / "w")
        rep = generate(gen_runner, GenerateOptions(n=a.n, out=Path(d) / "e2e", batch_size=a.batch_size, fmt=a.format, progress=False, manifest=True))
        res["end_to_end_img_s"] = rep.images_per_s
    bound = min(res["inference_only_img_s"], res["writing_only_img_s"])
    res["end_to_end_vs_bound"] = res["end_to_end_img_s"] / bound
    bound_g = min(res["inference_only_generate_settings_img_s"], res["writing_only_img_s"])
    res["end_to_end_vs_bound_generate_settings"] = res["end_to_end_img_s"] / bound_g
    print(f"inference only : {res['inference_only_img_s']:>9,.0f} images/s ({runner.describe()}, batch {a.batch_size}, fastest settings)")
    print(f"inference only : {res['inference_only_generate_settings_img_s']:>9,.0f} images/s (generate's settings: no spin-waiting)")
    print(f"writing only   : {res['writing_only_img_s']:>9,.0f} images/s ({a.format}, {writers} writer threads)")
    print(f"end to end     : {res['end_to_end_img_s']:>9,.0f} images/s = {100 * res['end_to_end_vs_bound']:.0f}% of the slower bound "
          f"({100 * res['end_to_end_vs_bound_generate_settings']:.0f}% with generate's own inference settings; target >= 80%)")
    # On a CPU, inference and writing share the same cores: the ceiling is nearer 1/(1/inference + 1/writing)
    ceiling = 1 / (1 / res["inference_only_img_s"] + 1 / res["writing_only_img_s"])
    print(f"shared-CPU ceiling 1/(1/inf + 1/write) = {ceiling:,.0f} images/s; end to end reaches {100 * res['end_to_end_img_s'] / ceiling:.0f}% of it")
    if a.memory:
        small = peak_rss_mb(1000, a.backend, a.batch_size, a.checkpoint)
        big = peak_rss_mb(100000, a.backend, a.batch_size, a.checkpoint)
        res.update(peak_rss_mb_n1000=small, peak_rss_mb_n100000=big)
        print(f"peak RSS       : n=1000 {small:.0f} MB, n=100000 {big:.0f} MB (difference {big - small:+.0f} MB, target within 100 MB)")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
