"""Which nodes INT8 damages, measured on the quality gate's own figures (the mixed INT8/FP32 search built on it is
`search.py`'s).

Units. Every node onnxruntime's quantizer would quantize is in exactly one unit:

* weighted nodes (Conv, ConvTranspose, Gemm, MatMul) one by one: they are where the time goes, and where weights
  are rounded;
* every other quantizable operator type as one block ("all 40 Mul", "all 6 Resize", ...): elementwise and data
  movement operators whose INT8 versions mostly save a dequantize/quantize pair around a neighbour. A block that
  does damage (>= `SPLIT_DAMAGE`) is then measured again split by kind of module ("6 Mul in mapping", "36 Mul in
  layers.*", "2 Add in (top level)": the first component of the exporter's node path, indices dropped), so that
  the search can keep the damaging part in FP32 without the rest. A block that quantizes nothing on its own
  (Reshape, Transpose, Resize ... only pass on a neighbour's quantized tensor) has damage 0 and is not gated.

Damage. A unit's damage is measured by quantizing *that unit alone* (everything else FP32, same calibration) and
running the quality gate's checks on `samples` gate latents against FP32. Each check's figure is turned into the
share of its limit the unit uses up alone ("budget"):

    psnr_worst / psnr_median   per-image MSE relative to the MSE at the limit: 10^((limit_dB - psnr_dB) / 10)
    fd_ratio                   fd_ratio / max_fd_ratio
    saturation                 max(0, saturation increase) / max_saturation_increase
    nonfinite                  inf if it makes NaN/Inf at all

and the damage is the largest share. A share above 1 means the unit alone fails that check. Quantization noise
of independent units roughly adds in MSE and in FD, so the shares of the units left in INT8 predict where a
mixed model lands.

The search (`search.py`) keeps the most damaging units in FP32 until the gate passes; every candidate is an
ordinary Q/DQ model made by onnxruntime's quantizer with `nodes_to_exclude` (`policy.Int8Policy`).
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gan_deploy.core.errors import GanDeployError
from gan_deploy.precision.gate import GateReport, GateThresholds, batched, check_artifact, gate_latents
from gan_deploy.precision.int8 import quantizable_op_types

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
DEFAULT_SENSITIVITY_SAMPLES = 64  # the first gate latents, per unit: FD needs >= 32; for ranking, not acceptance
SPLIT_DAMAGE = 0.05  # a block doing at least this much damage alone is measured again, split by module
CHECKS = ("nonfinite", "saturation", "psnr_worst", "psnr_median", "fd_ratio")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Unit:
    name: str  # the node's name, or "all N <op>" for a block
    op_type: str
    nodes: tuple[str, ...]
    macs: int | None = None  # multiply-accumulates per image (weighted nodes whose shapes are known)

    @property
    def kind(self) -> str:
        return "node" if self.op_type in WEIGHTED_OPS else "block"


def _shapes(model) -> dict[str, list[int | None]]:
    import onnx

    try:
        inf = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return {}
    out: dict[str, list[int | None]] = {}
    for vi in list(inf.graph.value_info) + list(inf.graph.input) + list(inf.graph.output):
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    for t in model.graph.initializer:
        out[t.name] = list(t.dims)
    return out


def _macs(node, shapes: dict[str, list[int | None]]) -> int | None:
    """Multiply-accumulates per image of a weighted node, from inferred shapes (None where a dimension is unknown)."""
    try:
        if node.op_type in ("Conv", "ConvTranspose"):
            w, y = shapes[node.input[1]], shapes[node.output[0]]
            x = shapes[node.input[0]]
            if node.op_type == "Conv":
                return int(np.prod(y[1:]) * np.prod(w[1:]))  # type: ignore[arg-type]  # every output value: Cin/groups x kh x kw products
            return int(np.prod(x[1:]) * np.prod(w[1:]))  # type: ignore[arg-type]  # transposed: every input value scatters into Cout x kh x kw
        if node.op_type in ("Gemm", "MatMul"):
            a, y = shapes[node.input[0]], shapes[node.output[0]]
            return int(np.prod(y[1:]) * a[-1])  # type: ignore[arg-type]
    except (KeyError, IndexError, TypeError):
        return None
    return None


def scope_of(node_name: str) -> str:
    """The first component of an exporter's node path ("/layers.1.0/conv/Mul" -> "layers.1.0"); "" at top level."""
    parts = node_name.split("/")
    return parts[1] if node_name.startswith("/") and len(parts) > 2 else ""


def module_kind(node_name: str) -> str:
    """The scope with its indices replaced ("layers.1.0" -> "layers.*"): modules of one kind form one group."""
    sc = scope_of(node_name)
    return re.sub(r"\.\d+", ".*", sc) if sc else "(top level)"


def split_block(unit: Unit) -> list[Unit]:
    """A block's nodes grouped by kind of module (mapping, layers.*, torgb.*, top level ...); [] if that is one group."""
    groups: dict[str, list[str]] = {}
    for n in unit.nodes:
        groups.setdefault(module_kind(n), []).append(n)
    if len(groups) < 2:
        return []
    return [Unit(f"{len(ns)} {unit.op_type} in {kind}", unit.op_type, tuple(ns)) for kind, ns in groups.items()]


def units_of(model, op_types: frozenset[str] | None = None) -> list[Unit]:
    """The units of a prepared graph (`rewrite.prepare_int8`): weighted nodes one by one, other quantizable
    operator types as one block each, in graph order."""
    ops = op_types or quantizable_op_types()
    shapes = _shapes(model)
    units: list[Unit] = []
    blocks: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type not in ops:
            continue
        if node.op_type in WEIGHTED_OPS:
            units.append(Unit(node.name, node.op_type, (node.name,), _macs(node, shapes)))
        else:
            blocks.setdefault(node.op_type, []).append(node.name)
    for op, names in blocks.items():
        units.append(Unit(f"all {len(names)} {op}", op, tuple(names)))
    return units


# -- the gate on a fixed set of latents ----------------------------------------------------------------

class GateBench:
    """The quality gate's checks on `n` gate latents, with the FP32 reference (and the FD noise floor) computed
    once, so that many candidates can be gated against the same images."""

    def __init__(self, reference, thresholds: GateThresholds, n: int, precision: str = "int8", batch_size: int = 256):
        if n < 32 and thresholds.max_fd_ratio is not None:
            raise GanDeployError("too few gate images for the quality score", n, expected="at least 32",
                                 hint="raise --gate-samples / --sensitivity-samples or pass --max-fd-ratio none")
        self.spec = reference.spec
        self.thresholds, self.n, self.precision, self.batch_size = thresholds, n, precision, batch_size
        self.z = gate_latents(n, self.spec.latent_dim)
        self.ref = batched(reference.infer, self.z, batch_size)
        self.noise = (batched(reference.infer, gate_latents(n, self.spec.latent_dim, start=n), batch_size)
                      if thresholds.max_fd_ratio is not None else None)

    def check(self, runner) -> GateReport:
        images = batched(runner.infer, self.z, self.batch_size)
        return check_artifact(images, self.ref, self.thresholds, self.precision, self.spec.value_range, self.noise)


def shares(report: GateReport, t: GateThresholds) -> dict[str, float]:
    """Each check's figure as the share of its limit it uses (1 = at the limit; see the module doc)."""
    f = report.figures

    def mse_share(psnr: float, limit: float) -> float:
        if not math.isfinite(psnr):
            return math.inf if psnr < 0 else 0.0
        return 10.0 ** ((limit - psnr) / 10.0)

    out = {"nonfinite": math.inf if f["nonfinite"] > t.max_nonfinite else 0.0,
           "saturation": max(0.0, f["saturated_rate"] - f["reference_saturated_rate"]) / t.max_saturation_increase
           if t.max_saturation_increase > 0 else 0.0,
           "psnr_worst": mse_share(f["psnr_worst_db"], t.min_psnr_worst),
           "psnr_median": mse_share(f["psnr_median_db"], t.min_psnr_median)}
    if t.max_fd_ratio is not None:
        r = f.get("fd_ratio")
        out["fd_ratio"] = math.inf if r is None else (r / t.max_fd_ratio if t.max_fd_ratio > 0 else (0.0 if r == 0 else math.inf))
    return out


def damage_of(report: GateReport) -> float:
    """A gate report's damage: the largest share of a gate limit it uses (0 when no check has a figure)."""
    v = shares(report, report.thresholds).values()
    return max(v) if v else 0.0


def brief(report: GateReport) -> str:
    """One line of a gate report's figures."""
    f = report.figures
    s = (f"psnr worst {f['psnr_worst_db']:.1f} dB, median {f['psnr_median_db']:.1f} dB, "
         f"saturation {f['saturated_rate'] - f['reference_saturated_rate']:+.4f}")
    if f.get("fd_ratio") is not None:
        s += f", fd_ratio {f['fd_ratio']:.3g}"
    if f["nonfinite"]:
        s += f", {f['nonfinite']} NaN/Inf"
    return s


# -- sensitivity -----------------------------------------------------------------------------------

_IDENTICAL = {"psnr_worst_db": 200.0, "psnr_median_db": 200.0, "psnr_mean_db": 200.0, "fd_ratio": 0.0, "max_abs_err": 0.0,
              "nonfinite": 0, "nonfinite_images": 0}


@dataclass
class UnitDamage:
    unit: Unit
    shares: dict[str, float]
    figures: dict[str, Any]  # the gate's figures with only this unit in INT8
    quantizes: bool = True  # False: alone, this unit puts no Q/DQ pair anywhere (not gated)

    @property
    def damage(self) -> float:
        return max(self.shares.values()) if self.shares else 0.0

    @property
    def worst_check(self) -> str:
        return max(self.shares, key=lambda k: self.shares[k]) if self.shares else ""

    def reason(self) -> str:
        if not self.quantizes:
            return "quantizes nothing on its own (passes a neighbour's quantized tensor on)"
        f = self.figures
        alone = f"alone in INT8: psnr worst {f['psnr_worst_db']:.1f} dB, median {f['psnr_median_db']:.1f} dB"
        if f.get("fd_ratio") is not None:
            alone += f", fd_ratio {f['fd_ratio']:.3g}"
        return f"uses {_fmt_share(self.damage)} of the gate's {self.worst_check} budget {alone}"

    def to_dict(self) -> dict[str, Any]:
        u = self.unit
        return {"unit": u.name, "op_type": u.op_type, "kind": u.kind, "nodes": list(u.nodes), "macs": u.macs,
                "damage": _json_num(self.damage), "worst_check": self.worst_check, "quantizes_alone": self.quantizes,
                "shares": {k: _json_num(v) for k, v in self.shares.items()},
                "psnr_worst_db": _json_num(self.figures["psnr_worst_db"]), "psnr_median_db": _json_num(self.figures["psnr_median_db"]),
                "fd_ratio": _json_num(self.figures.get("fd_ratio")),
                "saturation_increase": self.figures["saturated_rate"] - self.figures["reference_saturated_rate"]}


def _json_num(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _fmt_share(v: float) -> str:
    return "inf" if not math.isfinite(v) else (f"{v:.3g}" if v < 100 else f"{v:.0f}")


@dataclass
class SensitivityReport:
    calib_method: str
    target: str
    n_images: int
    thresholds: GateThresholds
    full: GateReport  # every unit in INT8, on the same latents
    rows: list[UnitDamage]  # most damaging first
    seconds: float
    quantizable_nodes: int
    methods: dict[str, Any] = field(default_factory=dict)  # calibration method -> full INT8 figures, when several were tried
    plot_path: Path | None = None

    def ranked(self) -> list[UnitDamage]:
        return self.rows

    def predicted(self, kept: int) -> dict[str, float]:
        """Predicted shares when the first `kept` units of the ranking stay FP32 (sum over the rest)."""
        out: dict[str, float] = {}
        for r in self.rows[kept:]:
            for k, v in r.shares.items():
                out[k] = out.get(k, 0.0) + v
        return out

    def table(self, top: int | None = None) -> str:
        rows = self.rows[:top] if top else self.rows
        w = max([len(r.unit.name) for r in rows] + [4])
        head = (f"{'#':>3} {'unit':<{w}} {'op':<9} {'MMAC':>7} {'damage':>7} {'check':<11} "
                f"{'worst dB':>8} {'median dB':>9} {'fd_ratio':>9} {'sat+':>8}")
        lines = [head, "-" * len(head)]
        for i, r in enumerate(rows, 1):
            f = r.figures
            fd = "n/a" if f.get("fd_ratio") is None else f"{f['fd_ratio']:.3g}"
            macs = "" if r.unit.macs is None else f"{r.unit.macs / 1e6:.1f}"
            if not r.quantizes:
                lines.append(f"{i:>3} {r.unit.name:<{w}} {r.unit.op_type:<9} {macs:>7} {'0':>7} (quantizes nothing alone)")
                continue
            lines.append(f"{i:>3} {r.unit.name:<{w}} {r.unit.op_type:<9} {macs:>7} {_fmt_share(r.damage):>7} {r.worst_check:<11} "
                         f"{f['psnr_worst_db']:>8.1f} {f['psnr_median_db']:>9.1f} {fd:>9} "
                         f"{f['saturated_rate'] - f['reference_saturated_rate']:>+8.4f}")
        if top and len(self.rows) > top:
            lines.append(f"    ... {len(self.rows) - top} more units, damage <= {_fmt_share(self.rows[top].damage)}")
        return "\n".join(lines)

    def summary(self, top: int | None = 12) -> str:
        n_nodes = sum(1 for r in self.rows if r.unit.kind == "node")
        return "\n".join([
            f"INT8 sensitivity ({self.target} flavour, {self.calib_method} calibration): {len(self.rows)} units "
            f"({n_nodes} weighted nodes one by one, {len(self.rows) - n_nodes} operator-type blocks; "
            f"{self.quantizable_nodes} quantizable nodes), each alone in INT8, gated on {self.n_images} gate latents, "
            f"{self.seconds:.0f} s",
            *[f"  full INT8, {m} calibration: damage {d['damage']}: {d['figures']}" for m, d in self.methods.items()],
            f"  all of them in INT8 ({self.calib_method}): {brief(self.full)}"
            + ("" if self.full.accepted else f" -> REJECTED ({', '.join(self.full.failed)})"),
            "  damage = the largest share of a gate limit the unit uses alone (1 = fails alone); "
            "MMAC = million multiply-accumulates per image",
            self.table(top)] + ([f"bar chart: {self.plot_path}"] if self.plot_path else []))

    def plot(self, path: str | Path, top: int = 40) -> Path:
        """A horizontal bar chart of per-unit damage (log scale), the gate's limit at 1: a PNG at `path`."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.rows if r.quantizes][:top]
        vals = [min(r.damage, 1e6) if math.isfinite(r.damage) else 1e6 for r in rows]
        colors = {"psnr_worst": "#c0392b", "psnr_median": "#e67e22", "fd_ratio": "#2980b9", "saturation": "#8e44ad",
                  "nonfinite": "#000000"}
        fig, ax = plt.subplots(figsize=(9, 0.28 * len(rows) + 1.6))
        y = np.arange(len(rows))[::-1]
        ax.barh(y, [max(v, 1e-6) for v in vals], color=[colors.get(r.worst_check, "#7f8c8d") for r in rows])
        ax.set_yticks(y, [f"{r.unit.name} ({r.unit.op_type})" if r.unit.kind == "node" else r.unit.name for r in rows], fontsize=7)
        ax.set_xscale("log")
        ax.axvline(1.0, color="k", lw=1, ls="--")
        ax.set_xlabel("damage: share of the gate's limit used by this unit alone in INT8 (1 = fails alone)")
        ax.set_title(f"INT8 sensitivity, {self.calib_method} calibration, {self.n_images} gate latents "
                     f"(all INT8: psnr median {self.full.figures['psnr_median_db']:.1f} dB)", fontsize=9)
        from matplotlib.patches import Patch

        used = list(dict.fromkeys(r.worst_check for r in rows))
        ax.legend(handles=[Patch(color=colors.get(c, "#7f8c8d"), label=c) for c in used], fontsize=7, loc="lower right",
                  title="largest share", title_fontsize=7)
        fig.tight_layout()
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=110)
        plt.close(fig)
        return p

    def to_dict(self) -> dict[str, Any]:
        return {"calib_method": self.calib_method, "target": self.target, "n_images": self.n_images,
                "seconds": self.seconds, "quantizable_nodes": self.quantizable_nodes,
                "thresholds": self.thresholds.to_dict(), "full_int8": self.full.to_dict(), "methods": self.methods,
                "plot": str(self.plot_path) if self.plot_path else None,
                "units": [r.to_dict() for r in self.rows]}


def analyse(units: list[Unit], evaluate: Callable[[tuple[str, ...]], GateReport], full: GateReport,
            thresholds: GateThresholds, *, calib_method: str, target: str, n_images: int,
            progress: Progress | None = None) -> SensitivityReport:
    """Damage of each unit alone in INT8 (blocks that do damage split by module and measured again).
    `evaluate(nodes)` gates the model with only `nodes` quantized, or returns None when that quantizes nothing."""
    t0 = time.perf_counter()
    rows: list[UnitDamage] = []

    def measure(u: Unit, i: int, total: int) -> UnitDamage:
        rep = evaluate(u.nodes)
        if rep is None:  # nothing quantized: the FP32 model's figures, damage 0
            row = UnitDamage(u, dict.fromkeys(shares(full, thresholds), 0.0), dict(full.figures, **_IDENTICAL), quantizes=False)
        else:
            row = UnitDamage(u, shares(rep, thresholds), rep.figures)
        if progress:
            what = "quantizes nothing alone" if not row.quantizes else f"damage {_fmt_share(row.damage)} ({row.worst_check})"
            progress(f"  [{i}/{total}] {u.name} ({u.op_type}): {what}")
        return row

    for i, u in enumerate(units, 1):
        rows.append(measure(u, i, len(units)))
    final: list[UnitDamage] = []
    for row in rows:
        parts = split_block(row.unit) if row.unit.kind == "block" and row.damage >= SPLIT_DAMAGE else []
        if not parts:
            final.append(row)
            continue
        if progress:
            progress(f"  {row.unit.name}: damage {_fmt_share(row.damage)}, measured again by module ({len(parts)} parts)")
        final += [measure(p, k, len(parts)) for k, p in enumerate(parts, 1)]
    order = sorted(range(len(final)), key=lambda k: (-final[k].damage if math.isfinite(final[k].damage) else -math.inf, k))
    return SensitivityReport(calib_method, target, n_images, thresholds, full, [final[k] for k in order],
                             time.perf_counter() - t0, sum(len(u.nodes) for u in units))
