"""torch.compile (Inductor) of the eager runner's model; on CUDA replayed in the eager runner's own CUDA graphs.

Inductor's own CUDA graphs (mode "reduce-overhead") are not used: the runner captures forward + uint8
conversion together in one graph per batch size, with static buffers it owns (backends/eager.py).
"""
from __future__ import annotations

from typing import Any

from gan_deploy.backends.eager import EagerRunner

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "max-autotune")


class CompileRunner(EagerRunner):
    name = "compile"
    accepts = ("checkpoint",)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        import shutil
        import sys
        if sys.platform != "win32" and shutil.which("cc") is None and shutil.which("gcc") is None:
            return "torch.compile on CPU needs a C compiler (Note: install gcc, e.g. `apt-get install build-essential`)"
        return None

    def _prepare(self, model: Any) -> Any:
        import torch

        from gan_deploy.core.errors import GanDeployError

        mode = self.options.get("compile_mode") or "default"
        if mode not in COMPILE_MODES:
            raise GanDeployError("unknown torch.compile mode", repr(mode), expected=" | ".join(COMPILE_MODES))
        if mode == "max-autotune" and self.device.startswith("cuda"):
            mode = "max-autotune-no-cudagraphs"  # the runner's own CUDA graphs replay it (see the module doc)
        # dynamic=False: one specialised graph per batch size, which is what a fixed-batch pipeline wants;
        # generate's last, smaller batch costs one extra compilation.
        return torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)
