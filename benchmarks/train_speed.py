"""Training speed: images/s of eager vs --compile (and, on CUDA, --amp bf16 / fp16), in one process, interleaved.

    python benchmarks/train_speed.py                        # the device `auto` picks; default model and batch
    python benchmarks/train_speed.py --device cuda --json /tmp/train_speed.json
    python benchmarks/train_speed.py --device cpu --modes eager --amp none,bf16

Every setting is built once (gan_deploy.train.loop.step_runner: the networks, optimizers and data as
`gan-deploy train` builds them) and warmed up (torch.compile compiles there, and cuDNN/oneDNN pick their
kernels); then the settings take turns, `--reps` rounds of `--steps` training steps each, so that a change in
the machine's load hits them all alike. A measurement brackets its steps with torch.cuda.synchronize() on
CUDA, so queued GPU work is inside it. Reported per setting: the median images/s over the rounds (real images
consumed per second: n_critic x batch per step), the range, ms per step, and per --amp mode the ratio
compile / eager of the medians (> 1: compile is faster). Start-up (the warm-up, compilation included) is
reported separately and not in images/s.

Defaults finish in well under 2 minutes on a 2-core CPU (most of it is compiling); the CUDA defaults time more
steps, since a step takes milliseconds there.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `gan-deploy` sets it (cli/main.py), before torch loads

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _settings(modes: list[str], amps: list[str]) -> list[dict[str, Any]]:
    return [{"compile": mode == "compile", "amp": amp} for amp in amps for mode in modes]


def _name(s: dict[str, Any]) -> str:
    return ("compile" if s["compile"] else "eager") + ("" if s["amp"] == "none" else f" + {s['amp']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--modes", default="eager,compile", help="comma-separated: eager, compile")
    ap.add_argument("--amp", default=None, help="comma-separated --amp modes. Default: none on the CPU; none,bf16,fp16 on CUDA")
    ap.add_argument("--steps", type=int, default=None, help="training steps per measurement. Default: 5 on the CPU, 100 on CUDA")
    ap.add_argument("--reps", type=int, default=None, help="interleaved rounds (medians over these). Default: 3 on the CPU, 5 on CUDA")
    ap.add_argument("--warmup", type=int, default=3, help="unmeasured steps per setting first (compilation happens here)")
    ap.add_argument("--arch", default="dcgan")
    ap.add_argument("--loss", default="bce")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--latent-dim", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--data", default="digits")
    ap.add_argument("--deterministic", action="store_true",
                    help="time every setting under --deterministic (a second run without it gives its cost)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    if not set(args.modes.split(",")) <= {"eager", "compile"}:
        ap.error(f"--modes: eager and/or compile, not {args.modes}")
    from gan_deploy.train.device import deterministic_mode

    with deterministic_mode(args.deterministic, args.device):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import torch

    from gan_deploy.core.errors import GanDeployError
    from gan_deploy.train import TrainOptions
    from gan_deploy.train.loop import step_runner

    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    amps = (args.amp or ("none,bf16,fp16" if cuda else "none")).split(",")
    modes = args.modes.split(",")
    steps = args.steps or (100 if cuda else 5)
    reps = args.reps or (5 if cuda else 3)
    for knob in ("cache_size_limit", "recompile_limit"):  # one compiled variant per amp mode and D's two uses
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, max(getattr(torch._dynamo.config, knob), 64))

    runs: list[dict[str, Any]] = []
    device = None
    for s in _settings(modes, amps):
        rec: dict[str, Any] = {"setting": _name(s), **s, "images_per_s": [], "error": None}
        runs.append(rec)
        opts = TrainOptions(data=args.data, arch=args.arch, loss=args.loss, width=args.width, latent_dim=args.latent_dim,
                            image_size=args.image_size, batch_size=args.batch_size, device=args.device, amp=s["amp"],
                            compile=s["compile"], eval_every=0, progress=False)
        t0 = time.perf_counter()
        try:
            run_step, images_per_step, device = step_runner(opts)
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            for i in range(args.warmup):
                run_step(i)
            sync()
        except GanDeployError as e:
            rec["error"] = e.one_line()
            print(f"{rec['setting']}: {rec['error']}", file=sys.stderr)
            continue
        rec.update(startup_s=round(time.perf_counter() - t0, 2), images_per_step=images_per_step,
                   _run=run_step, _sync=sync, _next=args.warmup)
        print(f"{rec['setting']}: ready in {rec['startup_s']:.1f} s", file=sys.stderr)

    live = [r for r in runs if r["error"] is None]
    for rnd in range(reps):  # interleaved: every setting once per round, in turn
        order = live if rnd % 2 == 0 else live[::-1]  # and alternating the order, so no setting always goes first
        for r in order:
            r["_sync"]()
            t0 = time.perf_counter()
            for _ in range(steps):
                r["_run"](r["_next"])
                r["_next"] += 1
            r["_sync"]()  # queued GPU work finishes inside the measurement
            dt = time.perf_counter() - t0
            r["images_per_s"].append(steps * r["images_per_step"] / dt)

    for r in live:
        v = r["images_per_s"]
        r.update(median_images_per_s=statistics.median(v), min_images_per_s=min(v), max_images_per_s=max(v),
                 median_ms_per_step=1e3 * r["images_per_step"] / statistics.median(v))
        for k in ("_run", "_sync", "_next"):
            del r[k]
    ratios = {}
    for amp in amps:
        e = next((r for r in live if r["amp"] == amp and not r["compile"]), None)
        c = next((r for r in live if r["amp"] == amp and r["compile"]), None)
        if e and c:
            ratios[amp] = c["median_images_per_s"] / e["median_images_per_s"]

    dev = str(device) if device is not None else args.device
    name = torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    print(f"\ntraining speed on {dev} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}: "
          f"{args.arch} width {args.width}, {args.image_size}x{args.image_size}, batch {args.batch_size}, {args.loss}; "
          f"{reps} interleaved rounds x {steps} steps" + (", --deterministic" if args.deterministic else ""))
    print("| setting | images/s (median) | range | ms/step | start-up s |\n|---|---:|---|---:|---:|")
    for r in runs:
        if r["error"]:
            print(f"| {r['setting']} | failed | {r['error']} | | |")
        else:
            print(f"| {r['setting']} | {r['median_images_per_s']:.0f} | {r['min_images_per_s']:.0f}-{r['max_images_per_s']:.0f} "
                  f"| {r['median_ms_per_step']:.2f} | {r['startup_s']:.1f} |")
    for amp, q in ratios.items():
        print(f"compile / eager ({amp}): {q:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"device": dev, "device_name": name, "torch": torch.__version__,
                                         "threads": torch.get_num_threads(), "steps": steps, "reps": reps,
                                         "deterministic": args.deterministic,
                                         "warmup": args.warmup, "model": {k: getattr(args, k) for k in (
                                             "arch", "loss", "width", "latent_dim", "image_size", "batch_size", "data")},
                                         "results": runs, "compile_over_eager": ratios}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0 if live else 1


if __name__ == "__main__":
    raise SystemExit(main())
