"""The INT8 search: the calibration method, and the nodes kept in FP32, of an INT8 model that passes the gate.

`int8_onnx_from_onnx` (what `quantize --int8` runs):

1. Full INT8, calibrated with `calib_method`; "auto": minmax, and only if that fails the gate percentile and
   entropy too (compared on the first `sensitivity_samples` gate latents, confirmed on all of them if they
   pass there); the method the gate's figures favour (passing, then lowest damage) is kept, and the figures
   of each are recorded in the recipe.
2. If no full INT8 model passes and `mixed`: the per-unit sensitivity analysis (`sensitivity.py`) ranks what
   INT8 damages, and `search` keeps the most damaging units in FP32 until the gate passes. For the onnxruntime
   flavour the result is timed against FP32 (`speed_vs_fp32`) and written only if it is at least `min_speedup`
   times as fast; the TensorRT flavour runs unfused on CPU, so its speed is TensorRT's to show.

A given `policy` (e.g. `Int8Policy.load` of an earlier run's JSON) skips both: that calibration, those nodes kept
FP32. `int8_sensitivity` is the analysis on its own (`quantize --int8 --report`).

Search. Units are ranked by damage. The smallest prefix of the ranking whose remaining units' predicted shares
all stay under `SAFETY` is kept in FP32 first; that model is gated on the gate's own latents and count. While it
fails, more units are kept (1, 2, 4, ... more); once one passes, bisection finds the fewest kept units that pass.
Every candidate is an ordinary Q/DQ model made by onnxruntime's quantizer with `nodes_to_exclude`
(`policy.Int8Policy`), so the same policy gives the TensorRT flavour.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gan_deploy.artifacts.artifact import Artifact
from gan_deploy.artifacts.onnx import META_RECIPE, set_onnx_metadata
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.latents import latents_range
from gan_deploy.core.timing import measure
from gan_deploy.precision.calibrate import CALIB_METHODS
from gan_deploy.precision.gate import GateRejected, GateReport, thresholds_for
from gan_deploy.precision.int8 import Int8Builder
from gan_deploy.precision.lineage import candidate_artifact, check_out, default_out, reference_runner
from gan_deploy.precision.options import QuantizeOptions
from gan_deploy.precision.policy import Int8Policy
from gan_deploy.precision.report import PrecisionReport, finish
from gan_deploy.precision.sensitivity import (
    DEFAULT_SENSITIVITY_SAMPLES,
    GateBench,
    SensitivityReport,
    Unit,
    analyse,
    brief,
    damage_of,
    units_of,
)

SAFETY = 0.5  # the search starts where the predicted shares of what stays INT8 are all below this
MAX_SEARCH_TRIES = 10
SPEED_BATCH = 64
SPEED_ROUNDS = 5

Progress = Callable[[str], None]


# -- the mixed search ------------------------------------------------------------------------------

@dataclass
class SearchStep:
    kept_units: int
    kept_nodes: int
    accepted: bool
    failed: list[str]
    figures: str  # brief()
    n_images: int  # the gate latents it was judged on (a pre-screen on the first few, or the gate's own)

    def to_dict(self) -> dict[str, Any]:
        return {"kept_units": self.kept_units, "kept_nodes": self.kept_nodes, "accepted": self.accepted,
                "failed": self.failed, "figures": self.figures, "n_images": self.n_images}


@dataclass
class SearchResult:
    kept_units: int | None  # None: no prefix of the ranking passes
    report: GateReport | None  # the gate's report of the chosen model (the gate's own latents and count)
    steps: list[SearchStep] = field(default_factory=list)
    start: int = 0  # where the prediction said to start

    def to_dict(self) -> dict[str, Any]:
        return {"kept_units": self.kept_units, "predicted_start": self.start, "steps": [s.to_dict() for s in self.steps]}


def search(sens: SensitivityReport, evaluate: Callable[[int], GateReport], max_tries: int = MAX_SEARCH_TRIES,
           progress: Progress | None = None) -> SearchResult:
    """The fewest top-ranked units to keep in FP32 so that the gate passes. `evaluate(k)` gates the model with the
    first k units of the ranking kept FP32 (on the gate's own latents). Assumes keeping more never hurts."""
    n = len(sens.rows)
    start = next((k for k in range(n + 1) if all(v < SAFETY for v in sens.predicted(k).values())), n)
    start = max(1, min(start, n))
    res = SearchResult(None, None, start=start)
    reports: dict[int, GateReport] = {}

    def run(k: int) -> bool:
        rep = evaluate(k)
        reports[k] = rep
        res.steps.append(SearchStep(k, sum(len(r.unit.nodes) for r in sens.rows[:k]), rep.accepted, rep.failed, brief(rep),
                                    rep.n_images))
        if progress:
            progress(f"  keep {k} unit(s) in FP32: " + ("ACCEPTED" if rep.accepted else f"REJECTED ({', '.join(rep.failed)})")
                     + f" on {rep.n_images} latents - {brief(rep)}")
        return rep.accepted

    fail, ok, k, step = 0, None, start, 1  # keeping 0 units is the full INT8 model, known to fail
    while ok is None and len(res.steps) < max_tries:
        if run(k):
            ok = k
        else:
            fail = k
            if k == n:
                break
            k = min(n, k + step)
            step *= 2
    if ok is None:
        return res
    while ok - fail > 1 and len(res.steps) < max_tries:  # fewest units that still pass
        mid = (ok + fail) // 2
        if run(mid):
            ok = mid
        else:
            fail = mid
    res.kept_units, res.report = ok, reports[ok]
    return res


# -- speed -----------------------------------------------------------------------------------------

def speed_vs_fp32(fp32_runner, candidate_runner, batch: int = SPEED_BATCH, rounds: int = SPEED_ROUNDS,
                  max_time_s: float = 3.0) -> dict[str, Any]:
    """FP32 and candidate on the same latents, interleaved rounds (load from other processes hits both alike);
    per model the median over rounds of each round's p50."""
    z = latents_range(0, 0, batch, fp32_runner.spec.latent_dim)
    p50: dict[str, list[float]] = {"fp32": [], "int8": []}
    for _ in range(rounds):
        for name, r in (("fp32", fp32_runner), ("int8", candidate_runner)):
            p50[name].append(measure(lambda r=r: r.infer(z), batch, warmup=1, iters=3, max_time_s=max_time_s).p50_ms)  # type: ignore[misc]
    f, q = statistics.median(p50["fp32"]), statistics.median(p50["int8"])
    return {"backend": "onnxruntime", "batch": batch, "rounds": rounds, "fp32_ms": f, "int8_ms": q, "speedup": f / q,
            "rounds_ms": p50}


# -- running candidates ----------------------------------------------------------------------------

class _Candidates:
    """The builder's models run in onnxruntime on the CPU, as artifacts of `out` (not written until accepted)."""

    def __init__(self, builder: Int8Builder, out: Path):
        assert builder.parent is not None, "Int8Builder.for_parent"
        self.builder, self.parent, self.out = builder, builder.parent, out

    def runner(self, model):
        from gan_deploy.backends import make_runner

        return make_runner("onnxruntime", candidate_artifact(self.parent, model, self.out), "cpu").activate()

    def check(self, bench: GateBench, model) -> GateReport:
        r = self.runner(model)
        try:
            return bench.check(r)
        finally:
            r.close()

    def fp32_runner(self):
        """The FP32 model the INT8 one replaces, in onnxruntime: what its speed is compared with."""
        from gan_deploy.backends import make_runner

        if self.parent.kind == "onnx":
            return make_runner("onnxruntime", self.parent, "cpu").activate()
        b = self.builder
        art = Artifact.onnx_in_memory(self.out.with_suffix(".fp32.onnx"), self.parent.spec, b.parent_bytes,
                                      self.parent.config, self.parent.metadata, sha256=b.parent_sha)
        return make_runner("onnxruntime", art, "cpu").activate()

    def speed(self, q, rounds: int | None) -> dict[str, Any]:
        f, c = self.fp32_runner(), self.runner(q)
        try:
            return speed_vs_fp32(f, c, rounds=rounds or SPEED_ROUNDS)
        finally:
            f.close()
            c.close()


def _fmt_damage(v: float) -> str:
    return "inf" if v == float("inf") else f"{v:.3g}"


def _unit_damage(cands: _Candidates, bench: GateBench, method: str, units: list[Unit], full: GateReport,
                 say: Progress) -> SensitivityReport:
    """Every unit's damage alone in INT8 (`method` calibration), gated on `bench`."""
    b = cands.builder
    all_nodes = [n for u in units for n in u.nodes]

    def alone(nodes: tuple[str, ...]) -> GateReport | None:
        keep = set(nodes)
        m_, _ = b.model(Int8Policy(method, tuple(n for n in all_nodes if n not in keep)))
        if not any(n.op_type == "QuantizeLinear" for n in m_.graph.node):
            return None
        return cands.check(bench, m_)

    return analyse(units, alone, full, bench.thresholds, calib_method=method, target=b.target,  # type: ignore[arg-type]
                   n_images=bench.n, progress=say)


# -- quantize --int8 -------------------------------------------------------------------------------

def int8_onnx_from_onnx(parent: Artifact, opts: QuantizeOptions, raise_on_reject: bool = True) -> PrecisionReport:
    """Quantize the parent's FP32 ONNX (a checkpoint is exported in memory) to Q/DQ INT8, gate it, write it: full
    INT8 with the calibration method the gate favours, else a mixed INT8/FP32 model (see the module doc).
    `opts.precision` is not read."""
    policy = opts.int8_policy()
    out = check_out(Path(opts.out) if opts.out else None, parent, "int8", opts.target)
    say = opts.progress or (lambda _msg: None)
    t = opts.thresholds or thresholds_for("int8")
    b = Int8Builder.for_parent(parent, opts.target, opts.calib_samples, opts.calib_seed, opts.rewrite)
    cands = _Candidates(b, out)
    reference = reference_runner(parent)
    bench = GateBench(reference, t, opts.gate_samples)

    if policy is not None:  # a given policy: no choice, no search
        q, recipe = b.model(policy)
        gate = cands.check(bench, q)
        if not policy.mixed or not gate.accepted:
            return finish(parent, b.parent_bytes, q, "int8", recipe, out, gate, raise_on_reject)
        return _mixed_finish(cands, q, recipe, gate, {}, None, None, opts, raise_on_reject, say)

    methods = CALIB_METHODS if opts.calib_method == "auto" else (opts.calib_method,)
    n_sens = opts.sensitivity_samples or DEFAULT_SENSITIVITY_SAMPLES
    sbench = GateBench(reference, t, n_sens) if opts.mixed or len(methods) > 1 else None
    attempts, small = _full_int8(cands, bench, sbench, methods, say)
    passing = [m for m in attempts if attempts[m][2].accepted]
    if passing:
        best = min(passing, key=lambda m: (damage_of(attempts[m][2]), methods.index(m)))
    else:
        best = min(small or attempts, key=lambda m: (damage_of((small or {m: attempts[m][2]})[m]), methods.index(m)))
    if opts.calib_method == "auto" and len(attempts) > 1:
        chosen = {"rule": f"auto: a method whose full INT8 model passes the gate, else the lowest damage (largest share of a "
                          f"gate limit) on the first {n_sens} gate latents",
                  "methods": {m: {"accepted": attempts[m][2].accepted, "n_images": g.n_images,
                                  "damage": _fmt_damage(damage_of(g)), "figures": brief(g)}
                              for m, g in (small or {k: v[2] for k, v in attempts.items()}).items()}}
    elif opts.calib_method == "auto":
        chosen = {"rule": "auto: minmax passed the gate", "methods": {}}
    else:
        chosen = None
    q, recipe, gate = attempts[best]
    if chosen is not None:
        recipe["calibration"]["chosen_by"] = chosen
        set_onnx_metadata(q, {META_RECIPE: json.dumps(recipe)})
    full_reports = {m: g for m, (_, _, g) in attempts.items()}
    if gate.accepted or not opts.mixed:
        rep = finish(parent, b.parent_bytes, q, "int8", recipe, out, gate, raise_on_reject)
        rep.attempts = full_reports
        return rep
    assert sbench is not None
    return _mixed(cands, bench, sbench, best, small.get(best), (q, recipe, gate), chosen, full_reports, opts,
                  raise_on_reject, say)


def _full_int8(cands: _Candidates, bench: GateBench, sbench: GateBench | None, methods: tuple[str, ...],
               say: Progress) -> tuple[dict[str, tuple[Any, dict[str, Any], GateReport]], dict[str, GateReport]]:
    """Full INT8 per calibration method: the first on the gate's latents (today's model when it passes); the others,
    tried only when it fails, compared on `sbench`'s first gate latents and confirmed on all of them if they pass
    there. Returns ({method: (model, recipe, gate report)}, {method: report on sbench})."""
    b = cands.builder
    attempts: dict[str, tuple[Any, dict[str, Any], GateReport]] = {}
    small: dict[str, GateReport] = {}
    for i, m in enumerate(methods):
        q, recipe = b.model(Int8Policy(m))
        if i == 0:
            attempts[m] = (q, recipe, cands.check(bench, q))
            if attempts[m][2].accepted:
                break
            say(f"full INT8, {m} calibration: REJECTED on {bench.n} gate latents - {brief(attempts[m][2])}")
            if len(methods) == 1:
                break
            small[m] = cands.check(sbench, q)  # type: ignore[arg-type]
            continue
        small[m] = cands.check(sbench, q)  # type: ignore[arg-type]
        say(f"full INT8, {m} calibration, first {sbench.n} gate latents: "  # type: ignore[union-attr]
            f"{'ACCEPTED' if small[m].accepted else 'REJECTED'} - {brief(small[m])}")
        attempts[m] = (q, recipe, cands.check(bench, q) if small[m].accepted else small[m])
    return attempts, small


def _mixed(cands: _Candidates, bench: GateBench, sbench: GateBench, method: str, full_small: GateReport | None,
           full: tuple[Any, dict[str, Any], GateReport], chosen: dict[str, Any] | None,
           full_reports: dict[str, GateReport], opts: QuantizeOptions, raise_on_reject: bool, say: Progress) -> PrecisionReport:
    """Full INT8 failed the gate: what does INT8 damage, and how much of it must stay FP32? `full_small`: the full
    INT8 model's report on `sbench`, if it was made."""
    b = cands.builder
    q, recipe, gate = full
    base = cands.check(sbench, b.prepared)  # nothing quantized: if FP32 itself fails these thresholds, nothing can pass
    if not base.accepted:
        return _mixed_fail(cands, q, recipe, gate, full_reports, raise_on_reject,
                           f"no mixed model can pass: the FP32 model itself fails these thresholds ({', '.join(base.failed)})")
    units = units_of(b.prepared)
    say(f"mixed precision: damage of {len(units)} units ({sum(len(u.nodes) for u in units)} quantizable nodes) alone in "
        f"INT8, {method} calibration, first {sbench.n} gate latents ...")
    sens = _unit_damage(cands, sbench, method, units, full_small or cands.check(sbench, q), say)
    models: dict[int, tuple[Any, dict[str, Any]]] = {}

    def policy_for(k: int) -> Int8Policy:
        rows = sens.rows[:k]
        reasons = {n: f"{r.unit.name}: {r.reason()}" for r in rows for n in r.unit.nodes}
        return Int8Policy(method, tuple(n for r in rows for n in r.unit.nodes), "fp32", reasons, "search")

    def keep_k(k: int) -> GateReport:
        models[k] = b.model(policy_for(k))
        pre = cands.check(sbench, models[k][0])  # the first gate latents: an image that fails there fails the gate too
        return cands.check(bench, models[k][0]) if pre.accepted else pre

    say(f"search: keeping the most damaging units in FP32 until the gate passes on {bench.n} latents ...")
    found = search(sens, keep_k, progress=say)
    if found.kept_units is None:
        rep = _mixed_fail(cands, q, recipe, gate, full_reports, raise_on_reject,
                          f"no mixed model passed: kept up to {max(s.kept_units for s in found.steps)} of {len(sens.rows)} units in FP32")
        rep.sensitivity, rep.search = sens, found
        return rep
    k = found.kept_units
    mq, mrecipe = models[k]
    mrecipe["calibration"]["chosen_by"] = chosen
    mrecipe["mixed"] = {"units": [{"unit": r.unit.name, "op_type": r.unit.op_type, "nodes": list(r.unit.nodes),
                                   "damage": _fmt_damage(r.damage), "check": r.worst_check, "reason": r.reason()}
                                  for r in sens.rows[:k]],
                        "sensitivity": {"units": len(sens.rows), "n_images": sens.n_images, "seconds": round(sens.seconds, 1)},
                        "search": found.to_dict()}
    return _mixed_finish(cands, mq, mrecipe, found.report, full_reports, sens, found, opts, raise_on_reject, say)  # type: ignore[arg-type]


def _mixed_finish(cands: _Candidates, mq, mrecipe: dict[str, Any], gate: GateReport, attempts: dict[str, GateReport],
                  sens: SensitivityReport | None, found: SearchResult | None, opts: QuantizeOptions,
                  raise_on_reject: bool, say: Progress) -> PrecisionReport:
    """A gate-passing mixed model: timed against FP32 (onnxruntime flavour) and written only if fast enough."""
    b, parent, min_speedup = cands.builder, cands.parent, opts.min_speedup
    speed, note = None, None
    if b.target == "onnxruntime":
        say(f"speed: FP32 vs mixed INT8, onnxruntime batch {SPEED_BATCH} ...")
        speed = cands.speed(mq, opts.speed_rounds)
        mrecipe["speed"] = speed
        if speed["speedup"] < min_speedup:
            note = (f"the gate-passing mixed model runs at {speed['speedup']:.2f}x FP32 (< {min_speedup:g}x): no mixed model "
                    "found is faster than FP32")
    else:
        note = ("speed not measured: the TensorRT flavour runs unfused on this CPU; build the engine on the GPU "
                f"(gan-deploy build-engine --int8 --onnx {cands.out}) and bench it there")
    set_onnx_metadata(mq, {META_RECIPE: json.dumps(mrecipe)})
    if note and b.target == "onnxruntime":  # passes the gate, but not faster: not written
        data = mq.SerializeToString()
        rep = PrecisionReport("int8", None, parent.describe(), b.parent_sha, gate, mrecipe, len(data), len(b.parent_bytes),
                              attempts, sens, found, speed, note)
        if raise_on_reject:
            raise GanDeployError("no mixed-precision INT8 model is faster than FP32", f"{speed['speedup']:.2f}x",  # type: ignore[index]
                                 expected=f">= {min_speedup:g}x", hint="nothing was written; FP16 or FP32 it is")
        return rep
    rep = finish(parent, b.parent_bytes, mq, "int8", mrecipe, cands.out, gate, raise_on_reject)
    rep.attempts, rep.sensitivity, rep.search, rep.speed, rep.note = attempts, sens, found, speed, note
    return rep


def _mixed_fail(cands: _Candidates, q, recipe: dict[str, Any], gate: GateReport, attempts: dict[str, GateReport],
                raise_on_reject: bool, note: str) -> PrecisionReport:
    if raise_on_reject:
        raise GateRejected(gate, "the int8 model", f"{note}; nothing was written")
    rep = finish(cands.parent, cands.builder.parent_bytes, q, "int8", recipe, cands.out, gate, False)
    rep.attempts, rep.note = attempts, note
    return rep


# -- quantize --int8 --report ----------------------------------------------------------------------

def int8_sensitivity(parent: Artifact, opts: QuantizeOptions, plot: str | Path | None = None) -> SensitivityReport:
    """The sensitivity report on its own (`quantize --int8 --report`): every unit's damage alone in INT8 on the gate's
    figures (`opts.sensitivity_samples` gate latents), a table, and a PNG bar chart at `plot`. "auto" calibration:
    the method whose full INT8 model has the lowest damage on the same latents. Writes no model."""
    say = opts.progress or (lambda _msg: None)
    t = opts.thresholds or thresholds_for("int8")
    b = Int8Builder.for_parent(parent, opts.target, opts.calib_samples, opts.calib_seed, opts.rewrite)
    cands = _Candidates(b, default_out(parent, "int8", opts.target))
    n = opts.sensitivity_samples or DEFAULT_SENSITIVITY_SAMPLES
    bench = GateBench(reference_runner(parent), t, n)
    fulls = {}
    for m in (CALIB_METHODS if opts.calib_method == "auto" else (opts.calib_method,)):
        fulls[m] = cands.check(bench, b.model(Int8Policy(m))[0])
        say(f"full INT8, {m} calibration: {brief(fulls[m])}")
    method = min(fulls, key=lambda m: (damage_of(fulls[m]), CALIB_METHODS.index(m)))
    units = units_of(b.prepared)
    say(f"damage of {len(units)} units alone in INT8 ({method} calibration, {n} gate latents) ...")
    sens = _unit_damage(cands, bench, method, units, fulls[method], say)
    sens.methods = {m: {"damage": _fmt_damage(damage_of(g)), "figures": brief(g), "accepted": g.accepted} for m, g in fulls.items()}
    if plot:
        sens.plot_path = sens.plot(plot)
    return sens
