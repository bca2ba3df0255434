"""PyTorch eager: the reference every other backend is compared against (strict FP32), and a fast GPU path.

Options (make_runner(..., **options)):
  precision     fp32 (strict: TF32 off) | tf32 | fp16 | bf16           (torch_common.TORCH_PRECISIONS)
  channels_last None: on CUDA for reduced precision (tensor cores read NHWC), else off
  cuda_graphs   None: on CUDA. Each batch size is captured once in a CUDA graph with static input, float and
                uint8 output buffers, then replayed: one launch instead of one per layer, which is what
                dominates a small generator at batch 1.
On the CPU nothing of the GPU path is used: the images are exactly those of plain `model(z)`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from gan_deploy.backends.base import Runner
from gan_deploy.backends.torch_common import DTYPES, TOLERANCE, GraphCache, PinnedBuffers, check_precision, pixels_on_device, tf32


class EagerRunner(Runner):
    name = "eager"
    accepts = ("checkpoint",)

    @property
    def tolerance(self) -> float:  # type: ignore[override]
        return TOLERANCE[self.options.get("precision", "fp32")]

    def _load(self) -> None:
        import torch

        self._torch = torch
        self.precision = check_precision(self.options.get("precision", "fp32"))
        self.dtype = getattr(torch, DTYPES[self.precision])
        self.on_cuda = self.device.startswith("cuda")
        cl = self.options.get("channels_last")
        self.channels_last = bool(self.on_cuda and self.precision != "fp32") if cl is None else bool(cl)
        graphs = self.options.get("cuda_graphs")
        self.cuda_graphs = self.on_cuda if graphs is None else bool(graphs) and self.on_cuda
        model = self.artifact.torch_module().to(self.device, self.dtype)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = self._prepare(model)
        self._graphs = GraphCache(self._capture)
        self._pinned = PinnedBuffers() if self.on_cuda else None

    def _prepare(self, model: Any) -> Any:
        return model

    # -- the forward pass --------------------------------------------------------------------------------
    def _forward(self, zd: Any) -> Any:
        """device latents (float32) -> device images, float32 [B, C, H, W] (channels_last when enabled)."""
        with tf32(self.precision == "tf32"):
            return self.model(zd.to(self.dtype)).float()

    def _capture(self, b: int) -> tuple[Any, Any, Any, Any]:
        """A CUDA graph of forward + uint8 conversion for batch b, with its static buffers.

        Warm-up runs on a side stream first (cuDNN picks algorithms, the allocator grows, torch.compile compiles),
        as CUDA graph capture requires; the graph then owns a private memory pool."""
        torch = self._torch
        zin = torch.zeros((b, *self.spec.latent_shape), device=self.device, dtype=torch.float32)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):
                pixels_on_device(self._forward(zin), self.spec.value_range)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            out = self._forward(zin)
            pix = pixels_on_device(out, self.spec.value_range)
        return graph, zin, out, pix

    def _run_device(self, z: np.ndarray) -> tuple[Any, Any]:
        """host latents -> (device float images, device uint8 pixels or None), on torch's current stream."""
        torch = self._torch
        b = int(z.shape[0])
        if self.cuda_graphs:
            graph, zin, out, pix = self._graphs.get(b)
            host = self._pinned.get(tuple(z.shape), torch.float32)
            host.numpy()[...] = z  # into page-locked memory, so the H2D copy is a DMA that does not block the host
            zin.copy_(host, non_blocking=True)
            graph.replay()
            return out, pix
        zd = torch.from_numpy(z).to(self.device, non_blocking=True)
        return self._forward(zd), None

    def infer_impl(self, z: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out, _ = self._run_device(z)
            return out.cpu().numpy() if not self.cuda_graphs else out.cpu().numpy().copy()

    def _pixels_on_device(self, z: np.ndarray) -> tuple[Any, bool]:
        """(uint8 pixels [N, H, W, C] on the device, whether they are a CUDA graph's buffer that the next replay
        overwrites). Inside inference_mode."""
        out, pix = self._run_device(z)
        if pix is None:
            return pixels_on_device(out, self.spec.value_range), False
        return pix, True

    def infer_pixels_impl(self, z: np.ndarray) -> np.ndarray:
        if not self.on_cuda:
            return super().infer_pixels_impl(z)
        torch = self._torch
        with torch.inference_mode():
            pix, _ = self._pixels_on_device(z)
            host = self._pinned.get(tuple(pix.shape), torch.uint8)
            host.copy_(pix, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
            return host.numpy().copy()  # the pinned buffer is reused by the next call; the caller keeps this one

    def infer_pixels_device(self, z: np.ndarray) -> Any:
        z = self._checked(z)  # activates the runner
        if not self.on_cuda:
            return super().infer_pixels_device(z)
        with self._torch.inference_mode():
            pix, shared = self._pixels_on_device(z)
            return pix.clone() if shared else pix  # the caller keeps it: not a buffer the next replay overwrites

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize(self.device)

    def close(self) -> None:
        if hasattr(self, "_graphs"):
            self._graphs.clear()
        super().close()

    def describe(self) -> str:
        if not self.active:
            return f"{self.name} on {self.device} ({self.options.get('precision', 'fp32')})"
        extra = [self.precision + (" strict" if self.precision == "fp32" and self.on_cuda else "")]
        if self.channels_last:
            extra.append("channels_last")
        if self.cuda_graphs:
            extra.append("CUDA graphs")
        return f"{self.name} on {self.device} ({', '.join(extra)})"
