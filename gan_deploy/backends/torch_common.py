"""What the PyTorch backends (eager, compile) share: precisions, TF32 control, the uint8 conversion on the
device, CUDA graphs per batch size with static buffers, and pinned host buffers.

Nothing here is a backend (the registry lists eager and compile); torch is imported inside functions.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Callable, Iterator

# fp32: strict IEEE FP32 (TF32 off: the reference every error column is measured against);
# tf32: FP32 storage, TF32 tensor-core math in convolutions and matmuls (Ampere and newer);
# fp16 / bf16: weights and activations in that type, output cast back to float32
TORCH_PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
DTYPES = {"fp32": "float32", "tf32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# expected max |image - strict FP32 image| on the [-1, 1] scale, per precision (the gate is the real check)
TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "fp16": 2e-2, "bf16": 8e-2}
MAX_GRAPHS = 16  # CUDA graphs kept per runner (one per batch size); each holds its static buffers


def check_precision(precision: str) -> str:
    from gan_deploy.core.errors import GanDeployError

    if precision not in TORCH_PRECISIONS:
        raise GanDeployError("unknown precision for a PyTorch backend", repr(precision),
                             expected=" | ".join(TORCH_PRECISIONS), hint="ONNX files and engines carry their own precision")
    return precision


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 on or off for cuDNN convolutions and cuBLAS matmuls, restored afterwards. PyTorch enables TF32 for
    cuDNN by default, which makes "FP32" errors of ~1e-3: the strict reference must turn it off."""
    import torch

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def pixels_on_device(x: Any, value_range: tuple[float, float]) -> Any:
    """[N, C, H, W] float -> [N, H, W, C] uint8 on x's device, bit-identical to core.images.to_uint8 on the host:
    the same float32 operations in the same order (NaN -> lo, shift, scale, round half to even, clip)."""
    import torch

    lo, hi = value_range
    y = torch.nan_to_num(x.float(), nan=lo)
    y = (y - lo) * (255.0 / (hi - lo))
    y = torch.clamp(torch.round(y), 0, 255).to(torch.uint8)
    return y.permute(0, 2, 3, 1).contiguous()  # free for a channels_last x: it already is NHWC in memory


class GraphCache:
    """One captured CUDA graph per batch size, least recently used evicted beyond `max_graphs`.

    `capture(b)` returns an entry (whatever the runner needs: the graph and its static buffers); the cache only
    keeps the bookkeeping, so it is tested on any machine with a fake capture."""

    def __init__(self, capture: Callable[[int], Any], max_graphs: int = MAX_GRAPHS):
        self._capture = capture
        self.max_graphs = max_graphs
        self._entries: OrderedDict[int, Any] = OrderedDict()
        self.captures = 0

    def get(self, batch: int) -> Any:
        if batch in self._entries:
            self._entries.move_to_end(batch)
            return self._entries[batch]
        entry = self._capture(batch)
        self.captures += 1
        self._entries[batch] = entry
        while len(self._entries) > self.max_graphs:
            self._entries.popitem(last=False)
        return entry

    def __contains__(self, batch: int) -> bool:
        return batch in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()


class PinnedBuffers:
    """Page-locked host buffers, one per (shape, dtype), reused: device -> host copies from pinned memory run at
    full PCIe speed and can be asynchronous; a fresh pinned allocation per batch would cost more than the copy."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[tuple[int, ...], Any], Any] = {}

    def get(self, shape: tuple[int, ...], dtype: Any) -> Any:
        import torch

        key = (tuple(shape), dtype)
        buf = self._bufs.get(key)
        if buf is None:
            buf = self._bufs[key] = torch.empty(shape, dtype=dtype, pin_memory=True)
        return buf
