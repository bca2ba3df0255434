"""What the CPU can do, read once from /proc/cpuinfo (Linux; elsewhere the sets are empty)."""
from __future__ import annotations

import functools
import platform
import re
from pathlib import Path


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    p = Path("/proc/cpuinfo")
    text = p.read_text() if p.exists() else ""
    m = re.search(r"^flags\s*:(.*)$", text, re.M)
    return frozenset(m.group(1).split()) if m else frozenset()


def has_int8_dot_product() -> bool:
    """x86 VNNI (AVX512-VNNI or AVX-VNNI): u8 x s8 dot products accumulate in 32 bits. Without it, onnxruntime's
    u8s8 kernels (AVX2/AVX-512 vpmaddubsw) add pairs of products in 16 bits and can saturate."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 7B13"), or the machine type where /proc/cpuinfo has none."""
    p = Path("/proc/cpuinfo")
    text = p.read_text() if p.exists() else ""
    m = re.search(r"^model name\s*:(.*)$", text, re.M)
    return m.group(1).strip() if m else (platform.processor() or platform.machine())
