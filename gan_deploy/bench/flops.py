"""How much arithmetic one image costs, and what this CPU could do at best: to put throughput in context."""
from __future__ import annotations

import re
from pathlib import Path


def generator_flops(module, latent_shape: tuple[int, ...]) -> int:
    """FLOPs (2 x multiply-accumulates) of one image through conv / transposed conv / linear layers.
    Batch norm, activations and bias adds are a few per output element and left out (under 1% here)."""
    import torch
    import torch.nn as nn

    macs = 0

    def hook(m, inp, out):
        nonlocal macs
        x = inp[0]
        if isinstance(m, nn.ConvTranspose2d):  # every input pixel scatters a Cout x kh x kw kernel
            macs += x[0].numel() * m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
        elif isinstance(m, nn.Conv2d):
            macs += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            macs += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with torch.inference_mode():
            module.eval()(torch.zeros(1, *latent_shape))
    finally:
        for h in handles:
            h.remove()
    return 2 * macs


def cpu_peak_gflops() -> tuple[float, str]:
    """Theoretical FP32 peak of the cores this process may use, and how it was derived.

    peak = cores x GHz x FLOPs/cycle/core, with 2 FMA units per core: AVX-512 = 64, AVX2+FMA = 32, SSE = 8.
    Cloud vCPUs may be hyper-threads sharing FMA units, and turbo clocks differ: treat this as an upper bound.
    """
    from gan_deploy.core.hardware import cpu_cores

    cores = cpu_cores()
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split()) if "flags" in text else set()
    mhz_vals = [float(v) for v in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)]
    ghz = (max(mhz_vals) / 1000) if mhz_vals else 2.0
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    if "avx512f" in flags:
        per_cycle, isa = 64, "AVX-512"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, isa = 32, "AVX2+FMA"
    else:
        per_cycle, isa = 8, "SSE"
    peak = cores * ghz * per_cycle
    how = f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FP32 FLOPs/cycle ({isa}, 2 FMA units){' on ' + model.group(1).strip() if model else ''}"
    return peak, how


# Dense peak throughput, TFLOP/s, from NVIDIA's datasheets (SXM parts; tensor cores for tf32/fp16/bf16, without
# sparsity). Matched by substring of torch.cuda.get_device_name(); the first match wins.
GPU_PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4}),
    ("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "fp16": 756.0, "bf16": 756.0}),
    ("H100", {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4}),
    ("A100", {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0}),
    ("L40S", {"fp32": 91.6, "tf32": 183.0, "fp16": 362.0, "bf16": 362.0}),
    ("L4", {"fp32": 30.3, "tf32": 60.0, "fp16": 121.0, "bf16": 121.0}),
    ("A10", {"fp32": 31.2, "tf32": 62.5, "fp16": 125.0, "bf16": 125.0}),
    ("T4", {"fp32": 8.1, "tf32": 8.1, "fp16": 65.0, "bf16": 8.1}),
)


def gpu_peak_tflops(gpu_name: str, precision: str) -> tuple[float, str] | None:
    """(peak TFLOP/s for `precision`, where it comes from) for a known GPU, else None."""
    for key, peaks in GPU_PEAK_TFLOPS:
        if key in gpu_name:
            p = precision if precision in peaks else "fp32"
            kind = "CUDA cores" if p == "fp32" else "dense tensor cores"
            return peaks[p], f"{key} {p} {kind}, NVIDIA datasheet"
    return None
