"""JPEG on the CPU encoder processes vs on the GPU (nvJPEG via torchvision), per image size: which is faster here.

`generate --jpeg-encoder` defaults to cpu. This measures, on the machine at hand, what each encoder sustains on
the same batch of RGB pixels, interleaved (gan_deploy.core.timing.measure_interleaved, medians):

* cpu: N worker processes (default cores - 1, what `generate` starts), each encoding its share of the batch with
  the encoder the sink workers use (core.images.encode_batch, PIL, quality 95). The pixels are placed in the
  workers beforehand, so only encoding is timed (in `generate` they arrive through shared memory).
* cuda: `DeviceJpegEncoder.encode` on the batch already on the GPU, including the one copy of the files to the host.

    python benchmarks/jpeg_encoders.py [--sizes 32,64,128,256,512] [--batch 1024] [--processes N] [--json out.json]

Without a CUDA GPU and torchvision's CUDA build, only the CPU rows are measured and the GPU ones say so.
"""
from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from gan_deploy.core.images import encode_batch
from gan_deploy.core.timing import measure_interleaved

_PIX: dict[int, np.ndarray] = {}


def images(b: int, size: int, seed: int = 0) -> np.ndarray:
    """[b, size, size, 3] uint8: smooth colour fields plus noise, so JPEG sizes resemble generated images'."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([np.sin(6 * xx + k) * np.cos(4 * yy - k) for k in range(3)], -1)  # [size, size, 3]
    phase = rng.uniform(0, 1, (b, 1, 1, 3)).astype(np.float32)
    x = 127.5 + 90 * np.sin(base[None] * 3 + 6 * phase) + rng.normal(0, 12, (b, size, size, 3)).astype(np.float32)
    return np.clip(x, 0, 255).astype(np.uint8)


def _init(b: int, sizes: list[int], seed: int) -> None:
    for s in sizes:
        _PIX[s] = images(b, s, seed)


def _encode(size: int) -> int:
    return sum(len(f) for f in encode_batch(_PIX[size], "jpg"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="32,64,128,256,512")
    ap.add_argument("--batch", type=int, default=1024, help="images per batch (the GPU encodes one batch per call)")
    ap.add_argument("--processes", type=int, default=max(1, (os.cpu_count() or 1) - 1))
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    p = a.processes
    share = -(-a.batch // p)  # images per process per batch
    gpu_reason = None
    try:
        import torch
        if not torch.cuda.is_available():
            gpu_reason = "no CUDA GPU visible to torch"
        else:
            from gan_deploy.generate.device_jpeg import DeviceJpegEncoder
            enc = DeviceJpegEncoder()
    except Exception as e:  # torchvision missing or broken: say so, measure the CPU anyway
        gpu_reason = str(e).splitlines()[0]
    res: dict[str, Any] = {"batch": a.batch, "processes": p, "cpu_count": os.cpu_count(), "gpu": gpu_reason or torch.cuda.get_device_name(),
                           "rows": []}
    print(f"batch {a.batch}, {p} CPU encoder process(es) on {os.cpu_count()} cores; GPU: {gpu_reason or res['gpu']}")
    with ProcessPoolExecutor(p, initializer=_init, initargs=(share, sizes, 1)) as pool:
        for size in sizes:
            fns: dict[str, Any] = {"cpu": (lambda s=size: list(pool.map(_encode, [s] * p)), lambda: None)}
            if gpu_reason is None:
                dev = torch.from_numpy(images(a.batch, size, 1)).cuda()
                fns["cuda"] = (lambda d=dev: enc.encode(d), torch.cuda.synchronize)
            stats = measure_interleaved(fns, a.batch, warmup=2, iters=a.iters, rounds=5, max_time_s=20)
            cpu = stats["cpu"].images_per_s * (share * p) / a.batch  # the processes encode share * p images a call
            row = {"size": size, "cpu_img_s": cpu, "cuda_img_s": stats["cuda"].images_per_s if "cuda" in stats else None}
            res["rows"].append(row)
            gpu = f"{row['cuda_img_s']:>10,.0f}" if row["cuda_img_s"] else "  unmeasured"
            faster = "" if row["cuda_img_s"] is None else ("  -> cuda faster" if row["cuda_img_s"] > cpu else "  -> cpu faster")
            print(f"{size:>4}x{size:<4} cpu ({p} proc) {cpu:>10,.0f} img/s | cuda {gpu} img/s{faster}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
