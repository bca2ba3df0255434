"""ONNX export: PyTorch generator -> ONNX with a dynamic batch axis, checked against eager before it is kept."""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gan_deploy.artifacts.artifact import META_PRECISION, Artifact, artifact_from_checkpoint
from gan_deploy.artifacts.checkpoint import save_factory_checkpoint, sidecar_of
from gan_deploy.artifacts.factory import FactoryRef, source_file
from gan_deploy.artifacts.factory import build as build_factory
from gan_deploy.artifacts.onnx import (
    META_CONFIG,
    META_PARENT_KIND,
    META_PARENT_SHA,
    META_TOLERANCE,
    META_VALUE_RANGE,
    set_onnx_metadata,
    spec_from_onnx_model,
)
from gan_deploy.artifacts.spec import GeneratorSpec
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import atomic_write_bytes, sha256_file
from gan_deploy.core.latents import latents_range
from gan_deploy.core.outputs import check_output_file, refuse_inputs_as_outputs
from gan_deploy.core.resources import derived_output_dir

DEFAULT_OPSET = 17
# max |onnxruntime - eager| on the [-1, 1] image scale. Both compute in FP32; differences come from
# summation order in convolutions, ~1e-6 in practice, so 1e-4 leaves room and still catches real bugs.
DEFAULT_TOLERANCE = 1e-4


@dataclass
class ExportReport:
    path: Path
    opset: int
    max_abs_err: float
    tolerance: float
    batch_sizes: tuple[int, ...]
    spec: GeneratorSpec
    parent_sha256: str
    torch_artifact: Path | None = None  # export --factory: the .safetensors the PyTorch backends run

    def summary(self) -> str:
        s = self.spec
        return (f"wrote {self.path} (opset {self.opset}, input {s.input_name} [N, {', '.join(map(str, s.latent_shape))}] -> "
                f"{s.output_name} [N, {s.channels}, {s.height}, {s.width}]); onnxruntime vs eager max abs err "
                f"{self.max_abs_err:.2e} <= {self.tolerance:.0e} at batch sizes {list(self.batch_sizes)}"
                + (f"\nwrote {self.torch_artifact} + .json (the same generator for the PyTorch backends: "
                   f"gan-deploy generate -c {self.torch_artifact} --backend eager)" if self.torch_artifact else ""))


def _torch_to_onnx(module, latent_shape: tuple[int, ...], opset: int):
    import onnx
    import torch

    dummy = torch.zeros(2, *latent_shape)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # TorchScript-based exporter: 20x faster than the dynamo one for plain conv nets and exact here;
        # torch==2.13.0 is pinned, so its deprecation warning is noise for users.
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (dummy,), buf, input_names=["z"], output_names=["image"],  # type: ignore[arg-type]
                          dynamic_axes={"z": {0: "batch"}, "image": {0: "batch"}}, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    return onnx.load_model_from_string(buf.getvalue())


def onnx_model_from_checkpoint(art: Artifact, opset: int = DEFAULT_OPSET):
    """In-memory ONNX model of a checkpoint artifact, with the self-describing metadata."""
    model = _torch_to_onnx(art.torch_module(), art.spec.latent_shape, opset)
    if art.config is None:  # a user's generator (export --factory): its factory instead of our config
        fref = art.checkpoint.factory
        set_onnx_metadata(model, {META_VALUE_RANGE: json.dumps(list(art.spec.value_range)), META_PARENT_SHA: art.sha256,
                          META_PARENT_KIND: "checkpoint", META_PRECISION: "fp32", "gan_deploy.factory": fref.ref,
                          "gan_deploy.factory_kwargs": json.dumps(fref.kwargs)})
        model.producer_name = "gan-deploy"
        return model
    set_onnx_metadata(model, {
        META_CONFIG: json.dumps(art.config.to_dict()),
        META_VALUE_RANGE: json.dumps(list(art.spec.value_range)),
        META_PARENT_SHA: art.sha256,
        META_PARENT_KIND: "checkpoint",
        META_PRECISION: "fp32",
    })
    model.producer_name = "gan-deploy"
    return model


def onnx_bytes_of(art: Artifact, opset: int = DEFAULT_OPSET) -> bytes:
    """Serialized FP32-or-reduced ONNX of any artifact that has one: an ONNX file's bytes, or a checkpoint
    exported in memory once (cached on the artifact; no file is written). Engines have no ONNX."""
    if art.kind == "checkpoint":
        return art.onnx_bytes(lambda a: onnx_model_from_checkpoint(a, opset).SerializeToString())
    if art.kind == "engine":
        raise GanDeployError("an engine cannot be turned back into ONNX", str(art.path),
                             hint="pass the ONNX file it was built from with --onnx")
    return art.onnx_bytes()


def max_abs_err_vs_torch(module, onnx_bytes: bytes, spec: GeneratorSpec, batch_sizes=(1, 7, 64), seed: int = 0) -> float:
    """Run the same latents through eager PyTorch and onnxruntime; the worst |difference| over all batches."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    worst = 0.0
    for b in batch_sizes:
        z = latents_range(seed, 0, b, spec.latent_dim).reshape(b, *spec.latent_shape)
        with torch.inference_mode():
            ref = module(torch.from_numpy(z)).numpy()
        got = sess.run(None, {sess.get_inputs()[0].name: z})[0]
        if got.shape != ref.shape:
            raise GanDeployError("exported model returns the wrong shape", f"{got.shape} at batch {b}", expected=f"{ref.shape}")
        if not np.isfinite(got).all():
            raise GanDeployError("exported model returns NaN/Inf", f"batch {b}", expected="finite images")
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


MIN_OPSET = 17


def max_opset() -> int:
    """The newest opset both torch's TorchScript exporter and the installed onnx can write."""
    import onnx.defs

    try:
        from torch.onnx import _constants
        torch_max = int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))
    except ImportError:
        torch_max = 20
    return min(torch_max, int(onnx.defs.onnx_opset_version()))


def check_opset(opset: int) -> int:
    top = max_opset()
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= top:
        raise GanDeployError("unsupported ONNX opset", opset, expected=f"{MIN_OPSET}..{top} (what torch's exporter and onnx here support)",
                             hint=f"leave --opset out (default {DEFAULT_OPSET})")
    return opset


def check_onnx_out(out: str | Path, inputs: list[Path | None]) -> Path:
    """--out: an .onnx file name in a writable place that is none of the inputs (checked before any work)."""
    p = check_output_file(out, suffix=".onnx")
    refuse_inputs_as_outputs([p], inputs)
    return p


def onnx_from_module(module, spec: GeneratorSpec, out: str | Path, meta: dict[str, str], opset: int = DEFAULT_OPSET,
                     tolerance: float = DEFAULT_TOLERANCE, batch_sizes=(1, 7, 64)) -> ExportReport:
    """Export, check, verify against eager, then (and only then) write the file atomically."""
    import onnx

    check_opset(opset)
    out = check_output_file(out, suffix=".onnx")
    model = _torch_to_onnx(module, spec.latent_shape, opset)
    set_onnx_metadata(model, {**meta, META_VALUE_RANGE: json.dumps(list(spec.value_range)), META_PRECISION: "fp32"})
    model.producer_name = "gan-deploy"
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise GanDeployError("exported ONNX failed onnx.checker", str(e).splitlines()[0]) from None
    spec_from_onnx_model(model, out)  # the result must satisfy the generator contract every command relies on
    data_wo_err = model.SerializeToString()
    err = max_abs_err_vs_torch(module, data_wo_err, spec, batch_sizes)
    if err > tolerance:
        raise GanDeployError("onnxruntime disagrees with eager PyTorch", f"max abs err {err:.3g}", expected=f"<= {tolerance:g}", hint="the model uses an op the exporter translates differently; nothing was written")
    set_onnx_metadata(model, {META_TOLERANCE: f"{err:.3e}"})
    atomic_write_bytes(out, model.SerializeToString())
    return ExportReport(out, opset, err, tolerance, tuple(batch_sizes), spec, meta.get(META_PARENT_SHA, ""))


def onnx_from_checkpoint(checkpoint: str | Path | None, out: str | Path | None = None, opset: int = DEFAULT_OPSET,
                         tolerance: float = DEFAULT_TOLERANCE) -> ExportReport:
    check_opset(opset)
    art = artifact_from_checkpoint(checkpoint)
    # beside the checkpoint; for the shipped one (inside the package) models/ in the working directory
    out = Path(out) if out else derived_output_dir(art.path) / art.path.with_suffix(".onnx").name
    out = check_onnx_out(out, [art.path, sidecar_of(art.path)])
    if art.config is None:  # a user's generator exported with --factory: its factory is in the sidecar, not a config
        from gan_deploy.artifacts.onnx import META_FACTORY, META_FACTORY_KWARGS

        fref = art.checkpoint.factory
        meta = {META_PARENT_SHA: art.sha256, META_PARENT_KIND: "checkpoint", META_FACTORY: fref.ref,
                META_FACTORY_KWARGS: json.dumps(fref.kwargs)}
        return onnx_from_module(art.torch_module(), art.spec, out, meta, opset, tolerance)
    meta = {META_CONFIG: json.dumps(art.config.to_dict()), META_PARENT_SHA: art.sha256, META_PARENT_KIND: "checkpoint"}
    return onnx_from_module(art.torch_module(), art.spec, out, meta, opset, tolerance)


# -- bring your own PyTorch generator --------------------------------------------------------------

def load_weights(path: str | Path) -> dict[str, Any]:
    """safetensors, or a state dict read with torch.load(weights_only=True): never arbitrary unpickling."""
    import torch

    p = Path(path)
    if not p.exists():
        raise GanDeployError("weights file not found", str(p))
    if p.is_dir():
        raise GanDeployError("weights path is a folder", str(p), expected="a .safetensors or .pth file")
    expected = "safetensors, or a state dict saved with torch.save(model.state_dict())"
    hint = "whole pickled models are refused for safety (unpickling runs code); save model.state_dict() instead"
    if _is_torchscript(p):
        raise GanDeployError("weights file is a TorchScript archive, not a state dict", str(p), expected=expected,
                             hint="load it with torch.jit.load, then torch.save(module.state_dict(), 'weights.pth')")
    try:
        with warnings.catch_warnings():  # torch's notices about pickles and archives: the error below says it once
            warnings.simplefilter("ignore")
            if p.suffix == ".safetensors":
                from safetensors.torch import load_file
                return load_file(str(p))
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        if type(e).__name__ == "UnpicklingError" or "weights only load failed" in first.lower():
            raise GanDeployError("could not read weights (the file holds pickled Python objects, not only tensors)", str(p), expected=expected,
                                 hint=hint) from None
        raise GanDeployError("could not read weights", f"{p} ({type(e).__name__}: {first[:160]})", expected=expected, hint=hint) from None
    for key in ("state_dict", "generator", "G", "netG", "model"):  # common wrappers in tutorial checkpoints
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise GanDeployError("weights file is not a state dict", f"{p} holds {type(state).__name__}", expected="a dict of tensors")
    return state


def _is_torchscript(p: Path) -> bool:
    """torch.jit.save archives are zip files holding code/ and constants.pkl (torch.load would dispatch to jit)."""
    import zipfile

    try:
        if not zipfile.is_zipfile(p):
            return False
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names)


def onnx_from_factory(factory: str, out: str | Path, kwargs: dict[str, Any] | None = None, weights: str | Path | None = None,
                      latent_dim: int | None = None, value_range: tuple[float, float] = (-1.0, 1.0),
                      opset: int = DEFAULT_OPSET, tolerance: float = DEFAULT_TOLERANCE) -> ExportReport:
    """Export the user's own generator: build it from the factory, load weights, probe its contract."""
    import torch

    check_opset(opset)
    # everything written (the ONNX file, the torch artifact and its sidecar) is checked before the user's code runs
    out = check_output_file(out, suffix=".onnx")
    torch_out = out.with_suffix(".safetensors")
    mod_ref0 = factory.rpartition(":")[0]
    code = Path(mod_ref0) if mod_ref0.endswith(".py") else None
    refuse_inputs_as_outputs([out, torch_out, torch_out.with_suffix(".json")], [Path(weights) if weights else None, code])
    # a file reference is recorded absolute: the torch artifact is loaded later from another working directory
    mod_ref, _, attr = factory.rpartition(":")
    ref = f"{Path(mod_ref).resolve()}:{attr}" if mod_ref.endswith(".py") else factory
    fref = FactoryRef(ref, dict(kwargs or {}), sha256_file(source_file(factory)) if ":" in factory else "")
    module = build_factory(fref, check_source=False)
    parent = ""
    if weights is not None:
        try:
            module.load_state_dict(load_weights(weights), strict=True)
        except RuntimeError as e:
            raise GanDeployError("weights do not fit the generator", f"{weights}: {str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}", hint="pass the constructor arguments the weights were trained with (--kwargs)") from None
        parent = sha256_file(weights)
    module.eval()
    # the latent size under the names generators use for it: an attribute of the module, or a constructor argument
    names = ("latent_dim", "z_dim", "nz", "latent_size", "zdim", "dim_z")
    z_dim = (latent_dim or next((int(getattr(module, a)) for a in names if isinstance(getattr(module, a, None), int)), None)
             or next((int((kwargs or {})[a]) for a in names if isinstance((kwargs or {}).get(a), int)), None))
    if z_dim is None:
        raise GanDeployError("cannot tell the latent size of the generator", factory, hint="pass --latent-dim Z")
    from gan_deploy.artifacts.spec import MAX_LATENT_DIM
    if not 1 <= z_dim <= MAX_LATENT_DIM:
        raise GanDeployError("latent size out of range", z_dim, expected=f"1..{MAX_LATENT_DIM}", hint="pass --latent-dim Z")
    out_shape, rank = None, None
    for shape in ((z_dim,), (z_dim, 1, 1)):  # [N, Z] or [N, Z, 1, 1], the two layouts generators use
        try:
            with torch.inference_mode():
                y = module(torch.zeros(2, *shape))
            if isinstance(y, torch.Tensor) and y.ndim == 4:
                out_shape, rank = tuple(y.shape[1:]), len(shape) + 1
                break
        except Exception:
            continue
    if out_shape is None:
        raise GanDeployError("generator does not map a latent batch to an image batch", factory, expected=f"forward([N, {z_dim}]) or forward([N, {z_dim}, 1, 1]) -> [N, C, H, W]", hint="check --latent-dim")
    c, h, w = out_shape
    assert rank is not None  # set together with out_shape
    spec = GeneratorSpec(z_dim, c, h, w, value_range, rank)
    meta = {META_PARENT_SHA: parent, META_PARENT_KIND: "torch-factory", "gan_deploy.factory": factory,
            "gan_deploy.factory_kwargs": json.dumps(kwargs or {})}
    report = onnx_from_module(module, spec, out, meta, opset, tolerance)
    # beside the ONNX, the same generator for the PyTorch backends (fp16, CUDA graphs on a GPU): weights as
    # safetensors + a sidecar naming the factory, its arguments and its source file's sha256
    report.torch_artifact = save_factory_checkpoint(torch_out, module, fref, spec, parent)
    return report
