"""The quality gate re-run on the runtime that will run a reduced-precision model.

`quantize` gates an INT8/FP16 ONNX with onnxruntime (its evaluator); another runtime computes the same Q/DQ graph
with its own kernels (OpenVINO fuses it into int8 convolutions with its own rounding and accumulation), so
onnxruntime's verdict does not carry over. Before such a runtime runs a reduced-precision model, the gate runs
again on that runtime: the model's images against FP32 images of its parent, on the gate's latents, with the
default thresholds of its precision and the number of images quantize used (recorded in the model). A model that
fails is refused with the figures; a pass is recorded in the user's cache folder (gate/<key>.json, per model
sha256, runtime and version, CPU), so the check costs once per machine.

The FP32 parent is looked for beside the model, where quantize put it (x.int8.onnx, x.int8-tensorrt.onnx and
x.fp16.onnx come from x.onnx or x.safetensors; from the shipped checkpoint when that is the recorded one) and
recognised by the sha256 quantize recorded. Without it the gate cannot run: a warning says so, and the model
runs with the verdict quantize gave on onnxruntime.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from gan_deploy.core.errors import GanDeployError, warn
from gan_deploy.precision.gate import DEFAULT_GATE_SAMPLES, GateRejected, GateReport, run_gate, thresholds_for

REGATED_BACKENDS = ("openvino",)  # runtimes other than the one quantize gates with
FORMAT = "gan-deploy-runtime-gate"
VERSION = 1


def find_parent(artifact: Any) -> Any | None:
    """The FP32 artifact `artifact` was quantized from, found beside it by the sha256 quantize recorded; else None."""
    from gan_deploy.artifacts.load import load_artifact
    from gan_deploy.artifacts.onnx import META_CHECKPOINT_SHA, META_PARENT_SHA
    from gan_deploy.core.fileio import sha256_file
    from gan_deploy.core.resources import DEFAULT_GENERATOR, asset_path

    meta = artifact.metadata
    stem = Path(artifact.path).name.split(".")[0]
    folder = Path(artifact.path).parent
    candidates = [(folder / f"{stem}.onnx", meta.get(META_PARENT_SHA)),
                  (folder / f"{stem}.safetensors", meta.get(META_CHECKPOINT_SHA)),
                  (asset_path(DEFAULT_GENERATOR), meta.get(META_CHECKPOINT_SHA))]
    for path, sha in candidates:
        if sha and path.is_file() and path.resolve() != Path(artifact.path).resolve() and sha256_file(path) == sha:
            return load_artifact(onnx=path) if path.suffix == ".onnx" else load_artifact(path)
    return None


def _gate_samples(artifact: Any) -> int:
    """The number of images quantize's gate used (in the model's recorded figures), else the default."""
    from gan_deploy.artifacts.onnx import META_GATE

    try:
        n = json.loads(artifact.metadata.get(META_GATE, "{}")).get("n_images")
    except (ValueError, AttributeError):
        n = None
    return n if isinstance(n, int) and not isinstance(n, bool) and 32 <= n <= 100_000 else DEFAULT_GATE_SAMPLES


def _key(runner: Any, n: int) -> dict[str, Any]:
    from gan_deploy.core.hardware import cpu_flags, cpu_model

    return {"sha256": runner.artifact.sha256, "runtime": runner.describe().split(" (")[0], "cpu": cpu_model(),
            "cpu_flags": hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:16], "n_images": n}


def _cache_file(key: dict[str, Any]) -> Path | None:
    from gan_deploy.core.usercache import cache_dir

    folder = cache_dir("gate")
    return None if folder is None else folder / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32] + ".json")


def _passed_before(path: Path, key: dict[str, Any]) -> bool:
    from gan_deploy.core.jsonio import field, read_document

    if not path.exists():
        return False
    what, hint = "a cached quality-gate verdict", f"delete {path}; the gate runs again"
    try:
        d = read_document(path, FORMAT, VERSION, what=what, hint=hint)
        return bool(field(d, "key", path, what, kind="dict", hint=hint) == key
                    and field(d, "accepted", path, what, kind="bool", hint=hint))
    except GanDeployError as e:
        warn(f"ignoring a damaged cache file: {e}")
        return False


def require_runtime_gate(runner: Any) -> GateReport | None:
    """If `runner` is a runtime other than quantize's running a reduced-precision ONNX: activate it and gate the model
    on it (or find its pass recorded). Raises GateRejected with the figures when it fails; returns the report of a
    gate run here, None when none was needed or possible. Any other runner is left as it is (not activated)."""
    art = runner.artifact
    precision = getattr(art, "precision", "fp32")
    if runner.name not in REGATED_BACKENDS or art.kind != "onnx" or precision not in ("int8", "fp16"):
        return None
    runner.activate()
    n = _gate_samples(art)
    key = _key(runner, n)
    path = _cache_file(key)
    if path is not None and _passed_before(path, key):
        return None
    parent = find_parent(art)
    if parent is None:
        warn(f"the quality gate was not re-run on {runner.name} for {art.path}: its FP32 parent is not beside it "
             f"(quantize gated it on onnxruntime); put the model it was quantized from next to it to check it here")
        return None
    from gan_deploy.backends import make_runner

    reference = make_runner("eager" if parent.kind == "checkpoint" else "onnxruntime", parent, "cpu").activate()
    report = run_gate(runner, reference, thresholds_for(precision), precision, n)
    reference.close()
    if not report.accepted:
        raise GateRejected(report, f"{precision.upper()} model {art.path} on {runner.describe()}",
                           hint=f"it passed on onnxruntime: run it with --backend onnxruntime (or --backend auto); "
                                f"figures on {runner.name}: PSNR worst {report.figures['psnr_worst_db']:.1f} dB, median "
                                f"{report.figures['psnr_median_db']:.1f} dB, max abs err {report.figures['max_abs_err']:.3g}")
    if path is not None:
        from gan_deploy.core.fileio import atomic_write_text

        doc = {"format": FORMAT, "format_version": VERSION, "key": key, "accepted": True,
               "checks": [c.line() for c in report.checks], "parent": str(parent.path)}
        try:
            atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
        except OSError:
            pass  # not recorded: the gate runs again next time
    return report
