"""The whole GPU check in one command, on one GPU, in at most ~8 minutes, with nothing but this repository and a
CUDA build of torch:

    python benchmarks/gpu_check.py --out gpu_report        # -> gpu_report/report.json + report.md

1. the GPU-marked tests (pytest -m gpu);
2. bare PyTorch on the same generator (benchmarks/gpu_reference.py): strict FP32 / TF32 / FP16 / BF16, CUDA graph
   replay, device-to-host copies;
3. `gan-deploy bench` at batch 1 to 4096 for every torch precision (eager; torch.compile for FP16);
4. `gan-deploy generate -n 100000 -b 4096` on the GPU (inference alone and end to end);
5. `benchmarks/generate_e2e.py` on the GPU, one run per sink (folder, tar, array: end to end against inference
   alone and writing alone), and `benchmarks/jpeg_encoders.py` (nvJPEG vs the CPU encoder processes);
6. a training run on CUDA: interrupted at a checkpoint and resumed, and one with --compile;
and checks the issues' targets against what it measured: best toolkit row at batch 4096 >= 80% of the best bare
configuration; batch-1 p50 <= 2x a bare CUDA graph replay; generate inference >= 1.5 M images/s (H100 class);
PNG to a folder >= 60,000 images/s, PNG into tar shards >= 80,000, the array >= 50% of inference alone.
Every step has a timeout; a failed step is reported, and the rest still run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GD = [sys.executable, "-m", "gan_deploy"]


def step(name: str, cmd: list[str], timeout: float, log: list[dict], cwd: Path = ROOT) -> dict:
    t0 = time.perf_counter()
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = 124, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else str(e.stdout or "")
    rec = {"step": name, "rc": rc, "seconds": round(time.perf_counter() - t0, 1), "tail": out[-3000:]}
    print(out[-1500:], flush=True)
    log.append(rec)
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_report"))
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, not the report)")
    a = ap.parse_args()
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    import torch
    if not torch.cuda.is_available():
        print("no CUDA GPU visible to torch: nothing to check", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name()
    log: list[dict] = []
    sizes = "1,16,256,4096" if not a.quick else "1,256"
    n_gen = "100000" if not a.quick else "10000"

    step("gpu tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-x", "tests"], 200, log)
    step("bare pytorch", [sys.executable, "benchmarks/gpu_reference.py", "--batch-sizes", sizes, "--json", str(out / "reference.json")],
         90, log)
    step("bench eager", GD + ["bench", "--device", "cuda", "--backends", "eager", "--precisions", "fp32,tf32,fp16,bf16",
                              "--batch-sizes", sizes, "--iters", "40", "--min-time", "0.2", "--json", str(out / "bench_eager.json")], 120, log)
    step("bench compile", GD + ["bench", "--device", "cuda", "--backends", "compile", "--precisions", "fp16",
                                "--batch-sizes", "1,4096" if not a.quick else "256", "--iters", "40", "--min-time", "0.2",
                                "--json", str(out / "bench_compile.json")], 150, log)
    step("generate", GD + ["generate", "-n", n_gen, "-b", "4096", "--device", "cuda", "--backend", "eager", "--precision", "fp16",
                           "--out", str(out / "samples"), "--overwrite", "--json", str(out / "generate.json")], 120, log)
    n_e2e = "100000" if not a.quick else "20000"
    step("generate sinks", [sys.executable, "benchmarks/generate_e2e.py", "--backend", "eager", "--device", "cuda", "--precision", "fp16",
                            "-n", n_e2e, "--batch-size", "4096", "--runs", "1", "--sinks", "folder,tar,array",
                            "--json", str(out / "generate_e2e.json")], 240, log)
    step("jpeg encoders", [sys.executable, "benchmarks/jpeg_encoders.py", "--sizes", "32,128,512", "--batch", "1024", "--iters", "5",
                           "--json", str(out / "jpeg_encoders.json")], 120, log)
    run = out / "train_run"
    common = ["--device", "cuda", "--eval-every", "0", "--sample-every", "0", "--checkpoint-every", "100", "--no-progress"]
    step("train 100 steps", GD + ["train", "--out", str(run), "--steps", "100", "--overwrite"] + common, 90, log)
    step("train resume to 200", GD + ["train", "--out", str(run), "--resume", "--steps", "200"] + common[:2], 90, log)
    step("train --compile", GD + ["train", "--out", str(out / "train_compile"), "--steps", "60", "--compile", "--overwrite"] + common,
         150, log)
    if (ROOT / "benchmarks" / "train_speed.py").exists():
        step("train speed", [sys.executable, "benchmarks/train_speed.py", "--device", "cuda", "--json", str(out / "train_speed.json")],
             120, log)

    report = {"gpu": gpu, "torch": torch.__version__, "steps": log, "targets": targets(out)}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    print((out / "report.md").read_text())
    return 0 if all(s["rc"] == 0 for s in log) else 1


def _load(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def targets(out: Path) -> dict:
    """The issue's targets, from the JSON the steps wrote (None where a step did not produce its figures)."""
    ref = _load(out / "reference.json")
    rows = [r for name in ("bench_eager.json", "bench_compile.json") for r in ((_load(out / name) or {}).get("rows") or [])]
    t: dict = {}
    if ref and rows:
        bare = {k: v for k, v in ref["images_per_s"].items() if not k.startswith(("d2h", "cuda_graph"))}
        bare_4096 = max(((k, v["4096"]) for k, v in bare.items() if "4096" in v), key=lambda kv: kv[1], default=None)
        tk_4096 = max(((r["backend"], r["images_per_s"]) for r in rows if r["batch_size"] == 4096), key=lambda kv: kv[1], default=None)
        if bare_4096 and tk_4096:
            t["batch4096_best_toolkit_vs_best_bare"] = {"toolkit": tk_4096, "bare": bare_4096, "ratio": tk_4096[1] / bare_4096[1],
                                                        "target": ">= 0.8"}
        graph1 = ref["seconds_per_batch"].get("cuda_graph:fp32", {}).get("1")
        tk1 = min((r["p50_ms"] for r in rows if r["batch_size"] == 1), default=None)
        if graph1 and tk1:
            t["batch1_p50_vs_cuda_graph_replay"] = {"toolkit_p50_ms": tk1, "graph_replay_ms": graph1 * 1e3,
                                                    "ratio": tk1 / (graph1 * 1e3), "target": "<= 2"}
    gen = _load(out / "generate.json")
    if gen and gen.get("seconds_inference"):
        t["generate_inference_images_per_s"] = {"value": gen["n_written"] / gen["seconds_inference"], "target": ">= 1.5e6 (H100 class)",
                                                "end_to_end": gen.get("images_per_s")}
    e2e = (_load(out / "generate_e2e.json") or {}).get("runs") or {}
    for sink, goal in (("folder", 60000.0), ("tar", 80000.0)):
        rows = (e2e.get(sink) or {}).get("rows") or []
        if rows:
            t[f"generate_png_{sink}_images_per_s"] = {"value": rows[0]["end_to_end"], "writing_alone": rows[0]["writing"],
                                                      "inference_alone": rows[0]["inference_generate_settings"], "target": f">= {goal:,.0f}"}
    rows = (e2e.get("array") or {}).get("rows") or []
    if rows:
        t["generate_array_vs_inference_alone"] = {"value": rows[0]["end_to_end"] / rows[0]["inference_generate_settings"],
                                                  "end_to_end": rows[0]["end_to_end"], "target": ">= 0.5"}
    jpeg = _load(out / "jpeg_encoders.json")
    if jpeg:
        t["jpeg_cuda_vs_cpu_per_size"] = {"rows": jpeg.get("rows"), "gpu": jpeg.get("gpu"), "target": "the faster one is the default to keep"}
    return t


def markdown(report: dict) -> str:
    lines = [f"# GPU check: {report['gpu']} (torch {report['torch']})", "", "| step | rc | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['rc']} | {s['seconds']} |" for s in report["steps"]]
    lines += ["", "| target | measured | goal |", "|---|---|---|"]
    for k, v in report["targets"].items():
        lines.append(f"| {k} | {json.dumps({x: y for x, y in v.items() if x != 'target'})} | {v['target']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
