"""onnxruntime vs OpenVINO on the CPU, on the same ONNX files: through our runners, and OpenVINO called directly.

Issue 18's table redone with the landed code. For each model file (an FP32 ONNX and the INT8 `quantize --int8`
made from it) and batch size, the callables below are timed against each other in interleaved rounds, the order
rotated each round (gan_deploy.core.timing.measure_rotated: a runtime whose threads spin after a call
slows whichever runs next, so none always follows the same one), medians:

    onnxruntime      make_runner("onnxruntime", ...).infer(z)   (threads spin after a call, as in bench and serve)
    onnxruntime-nospin  the same with spin=False, as generate runs it (and as auto's probe does for generate)
    openvino         make_runner("openvino", ...).infer(z)       (our runner: static shape, hint per batch size)
    openvino-latency the same with hint="latency" at every batch size (one request: the A/B of the THROUGHPUT split)
    openvino-direct  core.compile_model(file reshaped to [b, Z], LATENCY hint, same threads), one request, infer(z)

A runtime that refuses a file (OpenVINO computing another image shape, or failing to compile it) gets its reason
in the table instead of a figure. Then `generate --sink array` end to end with --backend onnxruntime, openvino
and auto (the measured choice), images/s from its JSON report.

    GAN_DEPLOY_THREADS=2 python benchmarks/cpu_runtimes.py \\
        --models "models/digits_dcgan.onnx,models/digits_dcgan.int8.onnx;models/stylegan2_tiny.onnx,models/stylegan2_tiny.int8.onnx" \\
        [--batch-sizes 1,64,256] [--threads 2] [--json out.json] [--generate-n 4096]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gan_deploy.artifacts.load import load_artifact
from gan_deploy.backends import make_runner
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.latents import latents_range
from gan_deploy.core.timing import measure_rotated


def direct(path: Path, batch: int, latent_dim: int, threads: int) -> Any:
    """OpenVINO as its documentation shows it: read, reshape, compile with the LATENCY hint, one request."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({model.inputs[0].get_any_name(): [batch, latent_dim]})
    compiled = core.compile_model(model, "CPU", {hints.performance_mode: hints.PerformanceMode.LATENCY,
                                                 props.inference_num_threads: threads})
    request = compiled.create_infer_request()
    out = compiled.output(0)

    def run(z: np.ndarray) -> np.ndarray:
        y = request.infer({0: z})[out]
        if y.shape[0] != batch:
            raise RuntimeError(f"shape {y.shape}")
        return y
    return run


def table_rows(paths: list[Path], batch_sizes: list[int], threads: int, rounds: int, max_time: float) -> list[dict[str, Any]]:
    """One network's files (its FP32 ONNX and the reduced-precision ones made from it): every (file, runtime) pair
    is timed in the same rotated rounds at each batch size, so ratios across files are measured, not inferred."""
    arts = {p: load_artifact(onnx=p) for p in paths}
    runners: dict[tuple[Path, str], Any] = {}
    refused: dict[tuple[Path, str], str] = {}
    for p, art in arts.items():
        for name, backend, options in (("onnxruntime", "onnxruntime", {}), ("onnxruntime-nospin", "onnxruntime", {"spin": False}),
                                       ("openvino", "openvino", {}), ("openvino-latency", "openvino", {"hint": "latency"})):
            try:  # openvino-latency: our runner with one request at every batch size (the THROUGHPUT split's A/B)
                runners[p, name] = make_runner(backend, art, "cpu", threads=threads, **options).activate()
            except GanDeployError as e:
                refused[p, name] = e.one_line()
    rows: list[dict[str, Any]] = []
    for b in batch_sizes:
        z = latents_range(0, 0, b, arts[paths[0]].spec.latent_dim)
        fns: dict[str, Callable[[], Any]] = {f"{p.name}|{name}": functools.partial(r.infer, z) for (p, name), r in runners.items()}
        for p, art in arts.items():
            try:
                d = direct(p, b, art.spec.latent_dim, threads)
                want = (b, *art.spec.image_shape)
                got = d(z).shape
                if tuple(got) != want:
                    raise RuntimeError(f"images of shape {list(got)}, the model declares {list(want)}")
                fns[f"{p.name}|openvino-direct"] = functools.partial(d, z)
            except Exception as e:  # noqa: BLE001 - OpenVINO's own error types: reported in the table
                refused[p, "openvino-direct"] = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
        times = measure_rotated(fns, round_s=max_time / rounds, rounds=rounds, min_rounds=rounds, budget_s=0)
        for p, art in arts.items():
            row: dict[str, Any] = {"model": p.name, "precision": art.precision, "batch": b}
            for key, v in times.items():
                if key.startswith(p.name + "|"):
                    row[key.split("|")[1]] = round(1e3 * statistics.median(v), 3)
            for (q, name), why in refused.items():
                if q == p:
                    row[name] = f"refused: {why}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def generate_e2e(path: Path, backend: str, n: int, batch: int, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "GAN_DEPLOY_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "gan_deploy", "generate", "--onnx", str(path), "--backend", backend, "-n", str(n),
               "-b", str(batch), "--sink", "array", "--out", f"{d}/out", "--json", f"{d}/r.json"]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        if r.returncode != 0:
            return {"model": path.name, "backend": backend, "batch": batch, "error": r.stderr.strip().splitlines()[-1][:300]}
        rep = json.loads(Path(f"{d}/r.json").read_text())
        said = [line for line in r.stderr.splitlines() if "-> backend" in line]
        return {"model": path.name, "backend": backend, "batch": batch, "ran": rep.get("backend"),
                "images_per_s": round(rep["images_per_s"]) if "images_per_s" in rep else rep,
                "said": said[0] if said else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="comma-separated ONNX files of one network (measured together); "
                                                   "';' separates networks")
    ap.add_argument("--batch-sizes", default="1,64,256")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-time", type=float, default=4.0, help="seconds of measurement per callable and batch, at most")
    ap.add_argument("--generate-n", type=int, default=4096, help="images per generate run (0: skip)")
    ap.add_argument("--generate-batch", type=int, default=64)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    groups = [[Path(p) for p in g.split(",")] for g in a.models.split(";")]
    paths = [p for g in groups for p in g]
    batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
    out: dict[str, Any] = {"load_average": os.getloadavg(), "threads": a.threads, "rows": [], "generate": []}
    for g in groups:
        out["rows"] += table_rows(g, batch_sizes, a.threads, a.rounds, a.max_time)
    if a.generate_n:
        for p in paths:
            for backend in ("onnxruntime", "openvino", "auto"):
                g = generate_e2e(p, backend, a.generate_n, a.generate_batch, a.threads)
                print(json.dumps(g), flush=True)
                out["generate"].append(g)
    out["load_average_end"] = os.getloadavg()
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
