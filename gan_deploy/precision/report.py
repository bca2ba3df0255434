"""`PrecisionReport`, what `quantize` returns, and `finish`: a gated model written, or not, and its report."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gan_deploy.artifacts.artifact import Artifact
from gan_deploy.artifacts.onnx import META_GATE, set_onnx_metadata
from gan_deploy.core.fileio import atomic_write_bytes, sha256_bytes
from gan_deploy.precision.gate import GateRejected, GateReport


@dataclass
class PrecisionReport:
    """What `quantize` made of a parent: the model written (or why not), its recipe and the gate's report."""

    precision: str  # int8 | fp16
    path: Path | None  # None: nothing written (rejected by the gate, or `note` says why)
    parent: str
    parent_sha256: str  # the FP32 ONNX's
    gate: GateReport
    recipe: dict[str, Any]
    size_bytes: int
    parent_size_bytes: int
    attempts: dict[str, GateReport] = field(default_factory=dict)  # int8: full INT8 per calibration method tried
    sensitivity: Any = None  # int8 mixed search: sensitivity.SensitivityReport
    search: Any = None  # int8 mixed search: search.SearchResult
    speed: dict[str, Any] | None = None  # int8 mixed: search.speed_vs_fp32
    note: str | None = None  # why nothing was written when the gate accepted, or what the search concluded

    @property
    def accepted(self) -> bool:
        return self.gate.accepted

    def summary(self) -> str:
        what = f"{self.precision}" + (f" ({self.recipe['target']} flavour)" if "target" in self.recipe else "")
        kept = self.recipe.get("kept_fp32") or []
        if kept:
            what += f", mixed: {len(kept)} node(s) kept FP32"
        if self.path:
            head = f"wrote {self.path} ({what}, {self.size_bytes / 1e6:.2f} MB vs FP32 {self.parent_size_bytes / 1e6:.2f} MB)"
        elif self.gate.accepted:
            head = f"{what} model passes the gate but was NOT written: {self.note}"
        else:
            head = f"{what} model REJECTED: nothing was written"
        lines = [head, f"  from {self.parent} (FP32 ONNX sha256 {self.parent_sha256[:12]})"]
        if "rewrite" in self.recipe:
            rw = self.recipe["rewrite"]
            lines.append(f"  rewrite: {len(rw['rewritten'])} ConvTranspose -> Conv + DepthToSpace"
                         + (f"; kept: {'; '.join(rw['kept'])}" if rw["kept"] else ""))
        if "calibration" in self.recipe:
            c = self.recipe["calibration"]
            lines.append(f"  calibration: {c['samples']} prior latents (seed {c['seed']}), {c['method']}; "
                         f"weights {self.recipe['weights']}, activations {self.recipe['activations']}")
            if c.get("chosen_by"):
                methods = c["chosen_by"]["methods"]
                lines.append(f"  calibration chosen by the gate's figures ({c['chosen_by']['rule']})" + (":" if methods else ""))
                for m, d in methods.items():
                    lines.append(f"    {m:<10} full INT8 {'ACCEPTED' if d['accepted'] else 'REJECTED'}, damage {d['damage']}: {d['figures']}")
        if "fp32_nodes" in self.recipe:
            fkept = self.recipe["fp32_nodes"]
            lines.append(f"  fp16: {self.recipe['fp16_nodes']} nodes FP16, kept FP32: {', '.join(fkept) or 'none'}; "
                         f"checked with {self.recipe['checked_with']}")
        if self.sensitivity is not None:
            sens = self.sensitivity
            lines.append(f"  full INT8 failed the gate: mixed precision search over {len(sens.rows)} units "
                         f"({sens.quantizable_nodes} quantizable nodes), damage of each alone on {sens.n_images} gate latents "
                         f"in {sens.seconds:.0f} s")
        if self.search is not None:
            steps = ", ".join(f"{st.kept_units} -> {'ok' if st.accepted else 'fail'}" for st in self.search.steps)
            lines.append(f"  search (units kept FP32 -> gate on {self.gate.n_images} latents): {steps}")
        mixed = self.recipe.get("mixed")
        if mixed:
            lines.append(f"  kept in FP32 ({len(mixed['units'])} unit(s), most damaging first; damage = share of a gate "
                         "limit the unit uses alone in INT8):")
            for u in mixed["units"]:
                lines.append(f"    {u['unit']} ({u['op_type']}{', ' + str(len(u['nodes'])) + ' nodes' if len(u['nodes']) > 1 else ''}): "
                             f"{u['reason']}")
        if self.speed:
            sp = self.speed
            lines.append(f"  speed vs FP32 (onnxruntime CPU, batch {sp['batch']}, {sp['rounds']} interleaved rounds, median of "
                         f"p50): FP32 {sp['fp32_ms']:.1f} ms, INT8 {sp['int8_ms']:.1f} ms: {sp['speedup']:.2f}x")
        if self.note and (self.path or not self.gate.accepted):
            lines.append(f"  note: {self.note}")
        lines.append(self.gate.summary())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = {"precision": self.precision, "path": str(self.path) if self.path else None, "accepted": self.accepted,
             "parent": self.parent, "parent_sha256": self.parent_sha256, "size_bytes": self.size_bytes,
             "parent_size_bytes": self.parent_size_bytes, "recipe": self.recipe, "gate": self.gate.to_dict(), "note": self.note}
        if self.attempts:
            d["full_int8"] = {m: g.to_dict() for m, g in self.attempts.items()}
        if self.sensitivity is not None:
            d["sensitivity"] = self.sensitivity.to_dict()
        if self.search is not None:
            d["search"] = self.search.to_dict()
        if self.speed is not None:
            d["speed"] = self.speed
        return d


def finish(parent: Artifact, parent_bytes: bytes, model, precision: str, recipe: dict[str, Any], out: Path,
            gate: GateReport, raise_on_reject: bool) -> PrecisionReport:
    """The report of a gated model; an accepted one gets the gate's figures in its metadata and is written to `out`."""
    if gate.accepted:
        set_onnx_metadata(model, {META_GATE: json.dumps(gate.to_dict()["figures"])})
    data = model.SerializeToString()
    report = PrecisionReport(precision, None, parent.describe(), sha256_bytes(parent_bytes), gate, recipe, len(data),
                             len(parent_bytes))
    if not gate.accepted:
        if raise_on_reject:
            raise GateRejected(gate, f"the {precision} model", "nothing was written; see the thresholds in `gan-deploy quantize --help`")
        return report
    atomic_write_bytes(out, data)
    report.path = out
    return report
