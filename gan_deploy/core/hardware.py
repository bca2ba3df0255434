"""What the machine is: CPU features (read once from /proc/cpuinfo; elsewhere the sets are empty), its cores and
its available memory, the facts every resource bound (writers, threads, workers, batch sizes) derives from."""
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


# -- the machine's size: every bound on a resource option derives from these two (one place) ------------------

USABLE = 0.7  # share of the free memory one run's batches (or workers) may take: the rest is the process, the runtime, the page cache

def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's cpuset), else every core; at least 1."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def host_available_bytes() -> int | None:
    """The host's available memory (MemAvailable), lowered to what a cgroup limit leaves; None when unreadable."""
    import os

    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    limit = _cgroup_room()
    return min(avail, limit) if limit is not None else avail


def _cgroup_room() -> int | None:
    """Bytes a cgroup (v2, else v1) memory limit still leaves this process's group, if there is a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            text = Path(limit_file).read_text().strip()
            if text == "max":
                return None
            limit, usage = int(text), int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit >= 1 << 60:  # v1's "no limit"
            return None
        return max(limit - usage, 0)
    return None


def gib(n: float) -> str:
    """Bytes as a short human figure (PiB, TiB, GiB, MiB or KiB)."""
    if n >= 1 << 50:
        return f"{n / 2**50:,.1f} PiB"
    if n >= 1 << 40:
        return f"{n / 2**40:,.1f} TiB"
    if n >= 1 << 30:
        return f"{n / 2**30:,.1f} GiB"
    if n >= 1 << 20:
        return f"{n / 2**20:,.1f} MiB"
    return f"{n / 1024:,.1f} KiB"


# an inference runtime's compute threads: past the cores they only preempt one another (and each adds its buffers)
COMPUTE_THREADS_PER_CORE = 4


def compute_threads_bound(cores: int | None = None) -> tuple[int, str]:
    """(the most compute threads an option or GAN_DEPLOY_THREADS may ask for, where that bound comes from)."""
    cores = cores or cpu_cores()
    return COMPUTE_THREADS_PER_CORE * cores, f"{COMPUTE_THREADS_PER_CORE} threads per core on this {cores}-core machine"


def check_fits(option: str, count: int, per_item: int, free: int | None, where: str, what: str) -> None:
    """`count` items of about `per_item` bytes each (`what` says what one costs) in USABLE of `free` bytes (None:
    unknown, nothing refused), else one line naming the largest count that fits and where the bound comes from."""
    if free is None or count * per_item <= free * USABLE:
        return
    from gan_deploy.core.errors import GanDeployError

    top = int(free * USABLE) // max(per_item, 1)
    raise GanDeployError(f"{option} {count:,} needs more memory than is free", f"about {gib(count * per_item)} ({gib(per_item)} per "
                         f"{what}); {gib(free)} free on the {where}, {USABLE:.0%} of it usable",
                         expected=f"{option} <= {top:,}" if top >= 1 else "a machine with more free memory",
                         hint=f"use {option} {top:,} or smaller" if top >= 1 else "free memory or use a smaller model")
