"""A user's own PyTorch generator, rebuilt from a reference to its code: `package.module:callable` or
`path/to/file.py:ClassName`, its constructor arguments, and the sha256 of the source file.

`export --factory` records these in a checkpoint sidecar beside safetensors weights, so the PyTorch backends
(eager, compile: fp16, CUDA graphs on a GPU) can run the generator, not only onnxruntime. Loading runs the
user's code, which is why it is refused when the source file changed since the export.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gan_deploy.core.errors import GanDeployError, StaleArtifact
from gan_deploy.core.fileio import sha256_file


@dataclass(frozen=True)
class FactoryRef:
    ref: str  # "package.module:callable" or "/abs/path/file.py:ClassName"
    kwargs: dict[str, Any] = field(default_factory=dict)
    source_sha256: str = ""  # sha256 of the module's source file at export

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "kwargs": dict(self.kwargs), "source_sha256": self.source_sha256}


def _split(ref: str) -> tuple[str, str]:
    if ":" not in ref or not ref.rpartition(":")[2] or not ref.rpartition(":")[0]:
        raise GanDeployError("bad --factory", repr(ref), expected="'package.module:callable' or 'path/to/file.py:ClassName'",
                             hint="e.g. examples/pytorch_dcgan_tutorial.py:Generator")
    mod_ref, _, attr = ref.rpartition(":")
    return mod_ref, attr


def source_file(ref: str) -> Path:
    """The file the factory's code is in (what its sha256 is taken of)."""
    mod_ref, _ = _split(ref)
    if mod_ref.endswith(".py"):
        p = Path(mod_ref)
        if not p.is_file():
            raise GanDeployError("factory file not found", str(p), hint="check the path in --factory")
        return p
    try:
        spec = importlib.util.find_spec(mod_ref)
    except (ImportError, ValueError) as e:
        raise GanDeployError("could not find the factory module", f"{mod_ref} ({type(e).__name__}: {e})",
                             hint="check the module name, and that it is installed") from None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise GanDeployError("could not find the factory module", mod_ref, hint="check the module name, and that it is installed")
    return Path(spec.origin)


def load_factory(ref: str) -> Callable[..., Any]:
    """`package.module:factory` or `path/to/file.py:ClassName` -> the callable."""
    mod_ref, attr = _split(ref)
    try:
        if mod_ref.endswith(".py"):
            path = source_file(ref)
            spec = importlib.util.spec_from_file_location(f"gan_deploy_user_{path.stem}", path)
            if spec is None or spec.loader is None:
                raise GanDeployError("could not import the factory module", str(path))
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_ref)
    except GanDeployError:
        raise
    except (Exception, SystemExit) as e:  # the user's code: any import error (even sys.exit) is theirs to see, on one line
        raise GanDeployError("could not import the factory module", f"{mod_ref} ({type(e).__name__}: {e})",
                             hint="check the path, and that its imports are installed") from None
    if not hasattr(module, attr):
        raise GanDeployError("factory not found in module", f"{attr!r} in {mod_ref}")
    return getattr(module, attr)


def build(fref: FactoryRef, check_source: bool = True) -> Any:
    """Call the factory with its recorded arguments, refusing changed source code."""
    import torch

    if check_source and fref.source_sha256:
        src = source_file(fref.ref)
        now = sha256_file(src)
        if now != fref.source_sha256:
            raise StaleArtifact("the generator's source code changed since it was exported", f"{src} sha256 {now[:12]}",
                                expected=f"{fref.source_sha256[:12]} as recorded at export",
                                hint="re-run `gan-deploy export --factory ...` so the weights and the code agree")
    fn = load_factory(fref.ref)
    try:
        module = fn(**fref.kwargs)
    except (Exception, SystemExit) as e:
        raise GanDeployError("the factory raised", f"{fref.ref}(**{fref.kwargs}) -> {type(e).__name__}: {e}",
                             hint="check --kwargs against the constructor's arguments") from None
    if not isinstance(module, torch.nn.Module):
        raise GanDeployError("the factory did not return a torch.nn.Module", type(module).__name__)
    return module
