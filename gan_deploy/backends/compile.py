"""torch.compile (Inductor). On GPU, mode 'reduce-overhead' also replays CUDA graphs per batch size."""
from __future__ import annotations

from gan_deploy.backends.eager import EagerRunner


class CompileRunner(EagerRunner):
    name = "compile"
    accepts = ("checkpoint",)
    tolerance = 1e-4

    @classmethod
    def unavailable_reason(cls) -> str | None:
        import shutil
        import sys
        if sys.platform != "win32" and shutil.which("cc") is None and shutil.which("gcc") is None:
            return "torch.compile on CPU needs a C compiler (Note: install gcc, e.g. `apt-get install build-essential`)"
        return None

    def _prepare(self, model):
        import torch

        mode = self.options.get("compile_mode") or ("reduce-overhead" if self.device.startswith("cuda") else None)
        # dynamic=False: one specialised graph per batch size, which is what a fixed-batch pipeline wants;
        # generate's last, smaller batch costs one extra compilation.
        return torch.compile(model, mode=mode, dynamic=False)
