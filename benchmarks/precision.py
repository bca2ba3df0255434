"""FP32 vs INT8 (vs FP16) in onnxruntime on this machine's CPU, per batch size, with the gate's figures.

Target (issue 4): INT8 >= 1.5x FP32 at batch 64 while passing the quality gate. Variants, all made by
gan_deploy.precision (search.py, fp16.py) from the same FP32 ONNX and each gated against FP32 on 1000 gate latents:

    fp32            the exported model (ConvTranspose)
    int8            what `quantize --int8` writes: full INT8 if it passes the gate (calibration chosen by the gate),
                    else the mixed INT8/FP32 model of the sensitivity search; UINT8 activations (the CPU flavour)
    int8-full       full INT8, min/max calibration, written whether or not it passes (to time what the gate refuses)
    int8-norewrite  Q/DQ of the original graph: onnxruntime runs ConvTranspose dequantized (the known slow case)
    int8-tensorrt   Q/DQ in TensorRT's form (symmetric INT8, FP32 bias); gated and timed here for completeness
    fp16            FP16 with FP32 I/O (onnxruntime has FP16 kernels on this CPU; no speed is expected from them)

The parent is the shipped DCGAN, a checkpoint (--checkpoint) or any FP32 ONNX (--onnx, e.g. the StyleGAN2-style
example of examples/stylegan2_tiny.py exported with `gan-deploy export --factory`).

Latency: gan_deploy.core.timing.measure, variants interleaved in rounds so that load from other processes on
the machine hits them alike; per variant and batch the median over rounds of each round's p50.

    python benchmarks/precision.py [--checkpoint models/digits_dcgan.safetensors] [--rounds 5] [--json out.json]
    python benchmarks/precision.py --onnx models/stylegan2_tiny.onnx --batch-sizes 64 --variants fp32,int8,int8-full,fp16
    python benchmarks/precision.py --damage     # only: what the gate says about deliberately damaged models
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from gan_deploy.artifacts.checkpoint import DEFAULT_CHECKPOINT, save_checkpoint
from gan_deploy.artifacts.load import load_artifact
from gan_deploy.artifacts.onnx import artifact_from_onnx
from gan_deploy.backends import make_runner
from gan_deploy.core.latents import latents_range
from gan_deploy.core.timing import measure
from gan_deploy.export.onnx import onnx_bytes_of
from gan_deploy.nets.config import GeneratorConfig
from gan_deploy.precision.fp16 import fp16_onnx_from_onnx
from gan_deploy.precision.options import QuantizeOptions
from gan_deploy.precision.search import int8_onnx_from_onnx


def parent_artifact(checkpoint: str | None, tmp: Path, onnx_path: str | None = None):
    if onnx_path:
        return artifact_from_onnx(onnx_path), onnx_path
    if checkpoint or DEFAULT_CHECKPOINT.exists():
        return load_artifact(checkpoint), "trained" if not checkpoint else checkpoint
    # the default model is not trained yet: a freshly initialised generator of the same config
    import torch

    from gan_deploy.nets.networks import build_generator, init_weights
    torch.manual_seed(0)
    cfg = GeneratorConfig()
    g = build_generator(cfg)
    g.apply(init_weights)
    path = save_checkpoint(tmp / "untrained_default_config.safetensors", g, cfg).path
    print("NOTE: models/digits_dcgan.safetensors not found: using a freshly initialised generator of the default config",
          file=sys.stderr)
    return load_artifact(path), "untrained (default config, DCGAN init)"


def _write_anyway(rep, parent, tmp: Path):
    """The full INT8 model even when the gate refused it (timing only; marked in the table)."""
    if rep.path is None:
        from gan_deploy.precision.quantize import reduced_precision_model

        q, _, _ = reduced_precision_model(parent, "int8", calib_method="minmax")
        rep.path = tmp / "int8f-rejected.onnx"
        rep.path.write_bytes(q.SerializeToString())
    return rep


def damage_sweep(parent, n: int) -> None:
    """Change one layer's weights in the FP32 ONNX by known amounts; print the gate's INT8 verdict on each."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from gan_deploy.precision.gate import run_gate, thresholds_for

    base = onnx.load_model_from_string(onnx_bytes_of(parent))
    layers = [n_ for n_ in base.graph.node if n_.op_type == "ConvTranspose"]
    reference = make_runner("eager", parent, "cpu") if parent.kind == "checkpoint" else make_runner("onnxruntime", parent, "cpu")
    rng = np.random.default_rng(0)
    cases = [("layer 2 weights x1.05", 1, lambda w: w * 1.05), ("layer 2 weights + 30% noise", 1,
              lambda w: w + rng.standard_normal(w.shape).astype(np.float32) * 0.3 * w.std()),
             ("layer 2 weights x1.2", 1, lambda w: w * 1.2), ("last layer x0.8", len(layers) - 1, lambda w: w * 0.8),
             ("last layer x1.5", len(layers) - 1, lambda w: w * 1.5), ("layer 2 weights x2", 1, lambda w: w * 2)]
    print(f"{'damage':<28} {'sat+':>7} {'PSNR worst':>10} {'median':>7} {'FD ratio':>9}  verdict")
    with tempfile.TemporaryDirectory() as d:
        for name, layer, how in cases:
            m = onnx.ModelProto()
            m.CopyFrom(base)
            init = next(i for i in m.graph.initializer if i.name == layers[layer].input[1])
            init.CopyFrom(numpy_helper.from_array(how(numpy_helper.to_array(init).copy()).astype(np.float32), init.name))
            path = Path(d) / "damaged.onnx"
            onnx.save(m, str(path))
            rep = run_gate(make_runner("onnxruntime", artifact_from_onnx(path), "cpu"), reference, thresholds_for("int8"),
                           "int8", n)
            f = rep.figures
            print(f"{name:<28} {f['saturated_rate'] - f['reference_saturated_rate']:>7.4f} {f['psnr_worst_db']:>10.2f} "
                  f"{f['psnr_median_db']:>7.2f} {f['fd_ratio']:>9.4f}  "
                  + ("accepted" if rep.accepted else "rejected: " + ", ".join(rep.failed)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--onnx", default=None, help="an FP32 ONNX parent instead of a checkpoint")
    ap.add_argument("--batch-sizes", default="1,64,256")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default="fp32,int8,int8-norewrite,int8-tensorrt,fp16")
    ap.add_argument("--gate-samples", type=int, default=1000)
    ap.add_argument("--json", default=None)
    ap.add_argument("--damage", action="store_true", help="Only run the gate on deliberately damaged models.")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gan-deploy-precision-"))
    parent, which = parent_artifact(a.checkpoint, tmp, a.onnx)
    if a.damage:
        return damage_sweep(parent, a.gate_samples)
    fp32_path = tmp / "fp32.onnx"
    fp32_path.write_bytes(onnx_bytes_of(parent))
    arts, gates = {"fp32": artifact_from_onnx(fp32_path)}, {}
    wanted = a.variants.split(",")

    def full(out: Path, **kw) -> QuantizeOptions:  # full INT8, minmax: no method choice, no mixed search
        return QuantizeOptions(out=out, calib_method="minmax", mixed=False, gate_samples=a.gate_samples, **kw)

    makers = {
        "int8": lambda: int8_onnx_from_onnx(parent, QuantizeOptions(out=tmp / "int8.onnx", gate_samples=a.gate_samples,
                                                                    progress=lambda m: print(m, file=sys.stderr)),
                                            raise_on_reject=False),
        "int8-full": lambda: _write_anyway(int8_onnx_from_onnx(parent, full(tmp / "int8f.onnx"), raise_on_reject=False), parent, tmp),
        "int8-norewrite": lambda: int8_onnx_from_onnx(parent, full(tmp / "int8n.onnx", rewrite=False), raise_on_reject=False),
        "int8-tensorrt": lambda: int8_onnx_from_onnx(parent, full(tmp / "int8t.onnx", target="tensorrt"), raise_on_reject=False),
        "fp16": lambda: fp16_onnx_from_onnx(parent, QuantizeOptions("fp16", tmp / "fp16.onnx", gate_samples=a.gate_samples),
                                            raise_on_reject=False),
    }
    for name in wanted:
        if name in makers:
            rep = makers[name]()
            gates[name] = rep.gate
            print(f"[{name}] {rep.summary()}\n", file=sys.stderr)
            if rep.path:
                arts[name] = artifact_from_onnx(rep.path)

    runners = {n: make_runner("onnxruntime", art, "cpu").activate() for n, art in arts.items()}
    sizes = [int(b) for b in a.batch_sizes.split(",")]
    p50: dict[tuple[str, int], list[float]] = {}
    for b in sizes:
        z = latents_range(0, 0, b, parent.spec.latent_dim)
        iters = 200 if b == 1 else max(5, 1280 // b)
        for _ in range(a.rounds):
            for n, r in runners.items():
                p50.setdefault((n, b), []).append(measure(lambda: r.infer(z), b, warmup=3, iters=iters, max_time_s=5).p50_ms)

    rows = []
    print(f"\nmodel: {which}; onnxruntime CPU, {os.cpu_count()} cores, threads={os.environ.get('GAN_DEPLOY_THREADS', 'all')}; "
          f"median over {a.rounds} rounds of p50")
    head = f"{'variant':<15} {'batch':>5} {'p50 ms':>9} {'img/s':>9} {'vs fp32':>8}"
    print(head + "\n" + "-" * len(head))
    for b in sizes:
        base = statistics.median(p50[("fp32", b)])
        for n in runners:
            ms = statistics.median(p50[(n, b)])
            rows.append({"variant": n, "batch": b, "p50_ms": ms, "images_per_s": b / ms * 1e3, "speedup_vs_fp32": base / ms,
                         "rounds_p50_ms": p50[(n, b)]})
            print(f"{n:<15} {b:>5} {ms:>9.3f} {b / ms * 1e3:>9.0f} {base / ms:>7.2f}x")
    print("\ngate vs eager FP32 (same latents):")
    print(f"{'variant':<15} {'verdict':<9} {'NaN/Inf':>7} {'sat+':>8} {'PSNR worst':>10} {'median':>8} {'FD ratio':>9}")
    for n, g in gates.items():
        f = g.figures
        fdr = "n/a" if f.get("fd_ratio") is None else f"{f['fd_ratio']:.4f}"
        print(f"{n:<15} {'ACCEPTED' if g.accepted else 'REJECTED':<9} {f['nonfinite']:>7} "
              f"{f['saturated_rate'] - f['reference_saturated_rate']:>8.4f} {f['psnr_worst_db']:>10.2f} "
              f"{f['psnr_median_db']:>8.2f} {fdr:>9}")
    if a.json:
        Path(a.json).write_text(json.dumps({"model": which, "rows": rows, "gates": {n: g.to_dict() for n, g in gates.items()}},
                                           indent=2) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
