"""Bare PyTorch on the shipped generator, no gan-deploy runner in the timed path: what the GPU does without the
toolkit. The toolkit's `bench` rows are compared against the best of these (benchmarks/gpu_check.py).

    python benchmarks/gpu_reference.py --json ref.json [--batch-sizes 1,4096] [--compile-mode max-autotune]

Configurations: strict FP32, TF32, FP16 and BF16 (channels_last), each eager and (with --compile) torch.compile;
a CUDA graph replay of the FP32 forward at each batch size; and the device-to-host copy of uint8 and float32
images. Each timing synchronizes before reading the clock; medians of interleaved rounds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gan_deploy.artifacts.checkpoint import load_generator  # noqa: E402  (builds the module; not timed)


def timed(fn, iters: int, warmup: int = 5) -> float:
    """median seconds of fn() over `iters` calls, each closed by a CUDA synchronize."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    xs = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        xs.append(time.perf_counter() - t0)
    return statistics.median(xs)


def configs(model32, compile_mode: str | None):
    out = {}
    for prec, dtype in (("fp32", torch.float32), ("tf32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        m = load_like(model32, dtype, channels_last=prec != "fp32")
        out[f"eager:{prec}"] = (m, dtype, prec == "tf32")
        if compile_mode:
            mode = None if compile_mode == "default" else compile_mode
            out[f"compile:{prec}"] = (torch.compile(m, mode=mode, dynamic=False), dtype, prec == "tf32")
    return out


def load_like(model32, dtype, channels_last: bool):
    import copy
    m = copy.deepcopy(model32).to(dtype)
    return m.to(memory_format=torch.channels_last) if channels_last else m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-sizes", default="1,16,256,4096")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of each precision")
    ap.add_argument("--compile-mode", default="default")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    model = load_generator(None).to(dev).eval()  # the shipped digits_dcgan
    z_dim = model.latent_dim
    sizes = [int(s) for s in a.batch_sizes.split(",")]
    cfgs = configs(model, a.compile_mode if a.compile else None)
    res: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for b in sizes:
            z = torch.randn(b, z_dim, device=dev)
            fns = {}
            for name, (m, dtype, allow_tf32) in cfgs.items():
                def run(m=m, dtype=dtype, allow_tf32=allow_tf32):
                    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allow_tf32
                    return m(z.to(dtype))
                fns[name] = run
            # a CUDA graph of the strict FP32 forward: the floor for launch overhead
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            zs = z.clone()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    model(zs)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = model(zs)
            fns["cuda_graph:fp32"] = g.replay
            u8 = torch.zeros((b, *out.shape[2:], out.shape[1]), dtype=torch.uint8, device=dev)
            host_u8 = torch.empty(u8.shape, dtype=torch.uint8, pin_memory=True)
            host_f32 = torch.empty(out.shape, dtype=torch.float32, pin_memory=True)
            fns["d2h_copy:uint8"] = lambda: host_u8.copy_(u8, non_blocking=True)
            fns["d2h_copy:fp32"] = lambda: host_f32.copy_(out, non_blocking=True)
            samples: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(a.rounds):  # interleaved: a slow spell of the machine hits every row alike
                for k, fn in fns.items():
                    samples[k].append(timed(fn, max(3, a.iters // a.rounds)))
            for k, v in samples.items():
                t = statistics.median(v)
                res.setdefault(k, {})[str(b)] = t
                print(f"{k:<18} batch {b:>5}  {t * 1e3:9.4f} ms  {b / t:14,.0f} images/s")
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "seconds_per_batch": res,
              "images_per_s": {k: {bs: int(bs_) / t for bs, t in v.items() for bs_ in [bs]} for k, v in res.items()}}
    if a.json:
        a.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
