"""`generate` end to end against its two bounds, per sink; encoder scaling; peak memory against n.

Targets (issue "generate at the speed of the hardware"): end to end >= 90% of min(inference alone, writing alone)
in every run, for every sink; peak RSS flat in n (n=1,000 vs 1,000,000 within 100 MB) for every sink.

* inference alone: latents -> backend -> uint8 pixels (`infer_pixels`), nothing written: what generate's main
  process does. Measured twice: with generate's settings (onnxruntime without spin-waiting, which leaves idle
  cycles to the writers) and with the backend at its fastest (spin-waiting, as `bench` runs it).
* writing alone: the same `generate` (same sink, writer kind and count, journal, ring buffer), fed by a runner
  that returns pixels made beforehand: everything but inference.
* end to end: `generate` as the CLI runs it.

    python benchmarks/generate_e2e.py [-n 10000] [--sinks folder,tar,array] [--runs 5] [--backend onnxruntime]
                                      [--device auto] [--precision fp32] [--batch-size 256] [--writer-kind auto]
                                      [--writers N] [--scaling] [--memory]
                                      [--memory-n 1000,1000000] [--checkpoint PATH] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gan_deploy.artifacts.load import load_artifact
from gan_deploy.backends import make_runner
from gan_deploy.core.latents import latents_range
from gan_deploy.generate.pipeline import GenerateOptions, choose_writers, generate
from gan_deploy.generate.sinks import sink_class


class PremadeRunner:
    """Stands in for a backend: returns pixels made beforehand, instantly (so generate measures writing alone)."""

    name = "premade"
    device = "cpu"

    def __init__(self, runner: Any, batch_size: int):
        self.artifact, self.spec, self.options = runner.artifact, runner.spec, {}
        z = latents_range(0, 0, batch_size, runner.spec.latent_dim)
        self.pixels = np.ascontiguousarray(runner.infer_pixels(z))  # real images: PNG sizes as in a real run

    def activate(self) -> "PremadeRunner":
        return self

    def infer_pixels(self, z: np.ndarray) -> np.ndarray:
        return self.pixels[: len(z)]

    def describe(self) -> str:
        return "pixels made beforehand"


def cpu_seconds() -> float:
    """CPU time (user + system) of this process, its threads and its reaped children (worker processes)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class Cpu:
    """CPU microseconds per image of a block: a figure the other load on a shared machine disturbs less than wall time."""

    def __init__(self, n: int):
        self.n, self.us = n, 0.0

    def __enter__(self) -> "Cpu":
        self.t0 = cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.us = 1e6 * (cpu_seconds() - self.t0) / self.n


def inference_only(runner: Any, n: int, b: int) -> tuple[float, float]:
    """(images/s, CPU us/image) of latents -> backend -> uint8 pixels, nothing written (generate's main process)."""
    runner.infer_pixels(latents_range(0, 0, b, runner.spec.latent_dim))  # warm-up
    t0 = time.perf_counter()
    with Cpu(n) as cpu:
        for b0 in range(0, n, b):
            runner.infer_pixels(latents_range(0, b0, min(b, n - b0), runner.spec.latent_dim))
    return n / (time.perf_counter() - t0), cpu.us


def _opts(out: Path, a: argparse.Namespace, sink: str, n: int, **kw: Any) -> GenerateOptions:
    return GenerateOptions(n=n, out=out, batch_size=a.batch_size, sink=sink, progress=False, writer_kind=a.writer_kind,
                           writers=a.writers, fmt=None if sink == "array" else a.format, **kw)


def writing_only(premade: PremadeRunner, a: argparse.Namespace, sink: str, out: Path, **kw: Any) -> tuple[float, float]:
    """(images/s, CPU us/image) of generate fed with pixels made beforehand: everything but inference."""
    with Cpu(a.n) as cpu:
        rep = generate(premade, _opts(out, a, sink, a.n, **kw))
    return rep.images_per_s, cpu.us


# a fresh interpreter's preamble: the main process's peak comes from getrusage; a worker's from sampling its VmRSS
# (a spawned child's ru_maxrss would include the parent's memory it had between fork and exec)
_RSS_PROBE = """import os, resource, threading, time
from gan_deploy.cli.main import main
peak = {}
def _sample():
    me = os.getpid()
    while True:
        try:
            kids = open(f"/proc/{me}/task/{me}/children").read().split()
        except OSError:
            kids = []
        for k in kids:
            try:
                kb = int(next(l for l in open(f"/proc/{k}/status") if l.startswith("VmRSS:")).split()[1])
                peak[k] = max(peak.get(k, 0), kb)
            except (OSError, StopIteration, ValueError):
                pass
        time.sleep(0.1)
threading.Thread(target=_sample, daemon=True).start()
t = time.perf_counter()
"""


def peak_rss_mb(n: int, sink: str, a: argparse.Namespace) -> tuple[float, float, float]:
    """(peak RSS of the main process, of the largest worker process, seconds) of a whole `gan-deploy generate` run,
    in a fresh interpreter that reports its own."""
    with tempfile.TemporaryDirectory(dir=a.tmp) as d:
        args = ["generate", "-n", str(n), "--out", d, "-b", str(a.batch_size), "--backend", a.backend, "--sink", sink,
                "--writer-kind", a.writer_kind, "--device", a.device] + (
                   ["--precision", a.precision] if a.backend in ("eager", "compile") else []) + (["-c", a.checkpoint] if a.checkpoint else []) + (
                   ["--writers", str(a.writers)] if a.writers else []) + (["--format", a.format] if sink != "array" else [])
        code = _RSS_PROBE + (f"try:\n    main({args!r})\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
                             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, max(peak.values(), default=0), time.perf_counter() - t)")
        r = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        main_kb, child_kb, secs = r.stdout.strip().splitlines()[-1].split()
        figures = int(main_kb) / 1024, int(child_kb) / 1024, float(secs)  # Linux reports KiB
        print(f"{sink:>6} peak RSS n={n:>9,}: main {figures[0]:6.0f} MB, largest worker {figures[1]:5.0f} MB "
              f"({figures[2]:.0f} s, {n / figures[2]:,.0f} img/s; removing the output...)", flush=True)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--device", default="auto", help="cpu | cuda (the PyTorch backends on a GPU)")
    ap.add_argument("--precision", default="fp32", help="with --backend eager/compile: fp32 | tf32 | fp16 | bf16")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--format", default="png")
    ap.add_argument("--sinks", default="folder,tar,array")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--writer-kind", default="auto")
    ap.add_argument("--writers", type=int, default=None)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--scaling", action="store_true", help="also: writing alone with 1 vs 2 (.. cores) encoder processes, and threads")
    ap.add_argument("--memory", action="store_true", help="also: peak RSS of whole runs at each --memory-n, per sink")
    ap.add_argument("--memory-n", default="1000,100000")
    ap.add_argument("--memory-sinks", default=None, help="sinks for --memory (default: --sinks)")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--tmp", default=None, help="folder for the outputs (default: the system's temporary folder)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    # Outputs stay until the end: deleting tens of thousands of files makes the filesystem busy for a while
    # afterwards (on a disk mounted with `discard`, as on the development machine, the kernel trims the freed
    # blocks), and the next phase measured would pay for it: writing alone and end to end must see the same disk.
    keep = tempfile.mkdtemp(prefix="gan-deploy-bench-", dir=a.tmp)
    try:
        run_all(a, keep)
    finally:
        shutil.rmtree(keep, ignore_errors=True)


def run_all(a: argparse.Namespace, keep: str) -> None:
    art = load_artifact(a.checkpoint)
    # the inference bound at the backend's fastest (onnxruntime spin-waiting, as in `bench`) and with generate's settings
    torch_opts = {"precision": a.precision} if a.backend in ("eager", "compile") else {}
    fastest = make_runner(a.backend, art, a.device, **torch_opts).activate()
    gen_runner = make_runner(a.backend, art, a.device, spin=False, **torch_opts).activate()
    premade = PremadeRunner(gen_runner, a.batch_size)
    sinks = a.sinks.split(",")
    res: dict[str, Any] = {"n": a.n, "backend": gen_runner.describe(), "model": art.describe(), "batch_size": a.batch_size,
                           "format": a.format, "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg(), "runs": {}}
    print(f"{art.describe()}, backend {gen_runner.describe()}, batch {a.batch_size}, n={a.n}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    for sink in sinks if not a.skip_e2e else []:
        kind, writers = choose_writers(a.writer_kind, a.writers, a.n, sink_class(sink))
        rows = []
        for run in range(a.runs):
            d = tempfile.mkdtemp(dir=keep)  # removed at the end, not now: see `keep`
            # the inference bound: half before and half after the two measured runs, so a drift of the machine's
            # speed during the run (other load, clock) moves the bound and the run alike
            half = max(a.batch_size, a.n // 2)
            inf1, cpu1 = inference_only(gen_runner, half, a.batch_size)
            inf_fast, _ = inference_only(fastest, a.n, a.batch_size)
            for phase in (("write", "e2e") if run % 2 == 0 else ("e2e", "write")):  # alternate which goes first
                if phase == "write":
                    write, cpu_write = writing_only(premade, a, sink, Path(d) / "w")
                else:
                    with Cpu(a.n) as cpu:
                        rep = generate(gen_runner, _opts(Path(d) / "e2e", a, sink, a.n))
            inf2, cpu2 = inference_only(gen_runner, half, a.batch_size)
            inf_gen, cpu_inf = 2 / (1 / inf1 + 1 / inf2), (cpu1 + cpu2) / 2  # images over the seconds of both halves
            e2e = rep.images_per_s
            cores = os.cpu_count() or 1
            row = {"inference_generate_settings": inf_gen, "inference_fastest": inf_fast, "writing": write, "end_to_end": e2e,
                   "vs_bound": e2e / min(inf_gen, write), "vs_bound_fastest": e2e / min(inf_fast, write),
                   "shared_cpu_ceiling": 1 / (1 / inf_gen + 1 / write), "cpu_us_inference": cpu_inf, "cpu_us_writing": cpu_write,
                   "cpu_us_end_to_end": cpu.us, "cpu_bound_img_s": 1e6 * cores / (cpu_inf + cpu_write), "load_avg": os.getloadavg()[0]}
            rows.append(row)
            print(f"{sink:>6} run {run + 1}: end to end {e2e:>9,.0f} img/s | inference alone {inf_gen:>9,.0f} (fastest {inf_fast:,.0f}) | "
                  f"writing alone {write:>9,.0f} ({writers} {kind}s) | {100 * row['vs_bound']:5.1f}% of min "
                  f"({100 * row['vs_bound_fastest']:.1f}% vs the fastest inference); 1/(1/inf+1/write) = {row['shared_cpu_ceiling']:,.0f} | "
                  f"CPU us/img: inference {cpu_inf:.0f}, writing {cpu_write:.0f}, end to end {cpu.us:.0f} | load {row['load_avg']:.1f}",
                  flush=True)
        res["runs"][sink] = {"writer_kind": kind, "writers": writers, "rows": rows,
                             "min_vs_bound": min(r["vs_bound"] for r in rows), "max_vs_bound": max(r["vs_bound"] for r in rows)}
        print(f"{sink:>6}: end to end / min(inference, writing) over {a.runs} runs: "
              f"{100 * res['runs'][sink]['min_vs_bound']:.1f}% .. {100 * res['runs'][sink]['max_vs_bound']:.1f}% (target >= 90% in every run)")
    if a.scaling:
        res["scaling"] = {}
        cores = os.cpu_count() or 1
        for sink in sinks:
            line = []
            for kind, w in [("process", k) for k in sorted({1, 2, max(1, cores - 1), cores})] + [("thread", 1), ("thread", 2 * cores)]:
                b = argparse.Namespace(**{**vars(a), "writer_kind": kind, "writers": w})
                d = tempfile.mkdtemp(dir=keep)
                rate, us = max(writing_only(premade, b, sink, Path(d) / f"r{k}") for k in range(2))  # best of 2
                res["scaling"][f"{sink} {w} {kind}"] = {"img_s": rate, "cpu_us": us}
                line.append(f"{w} {kind}(es) {rate:,.0f} ({us:.0f} us CPU/img)")
            print(f"{sink:>6} writing alone: " + " | ".join(line) + " img/s", flush=True)
    if a.memory:
        res["memory"] = {}
        for sink in (a.memory_sinks or a.sinks).split(","):
            figures = []
            for n in (int(x) for x in a.memory_n.split(",")):
                m, c, s = peak_rss_mb(n, sink, a)
                res["memory"][f"{sink} n={n}"] = {"main_mb": m, "largest_worker_mb": c, "seconds": s}
                figures.append((n, m, c, s))
            (n0, m0, c0, _), (n1, m1, c1, _) = figures[0], figures[-1]
            print(f"{sink:>6} peak RSS n={n1:,} - n={n0:,}: main {m1 - m0:+.0f} MB, worker {c1 - c0:+.0f} MB (target within 100 MB)")
    res["load_avg_end"] = os.getloadavg()
    res["self_max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
