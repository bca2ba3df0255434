"""PyTorch eager: the reference every other backend is compared against."""
from __future__ import annotations

import numpy as np

from gan_deploy.backends.base import Runner

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class EagerRunner(Runner):
    name = "eager"
    accepts = ("checkpoint",)

    def _load(self) -> None:
        import torch

        self._torch = torch
        precision = self.options.get("precision", "fp32")
        self.dtype = getattr(torch, DTYPES[precision])
        self.model = self._prepare(self.artifact.torch_module().to(self.device, self.dtype))

    def _prepare(self, model):
        return model

    def infer_impl(self, z: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(z).to(self.device, self.dtype, non_blocking=True)
            y = self.model(x)  # [N, C, H, W]
            return y.float().cpu().numpy()

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize()
