"""`gan-deploy quantize` and `gan-deploy build-engine`: parse options into the library's options object (which
checks itself), call precision/quantize.py / engine/build.py, print the report.

Kept free of imports from gan_deploy.cli.main (which imports this module at its end) and of heavy imports at module
level, so `gan-deploy --help` needs neither onnxruntime nor TensorRT.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gan_deploy.artifacts.onnx import INT8_TARGETS
from gan_deploy.cli.options import (
    artifact_options,
    calib_samples_option,
    chosen_precision,
    command,
    device_option,
    gate_options,
    input_path_option,
    json_option,
    kind_by,
    load_artifact_from_options,
    output_option,
    precision_flags,
    write_json,
)
from gan_deploy.core.errors import GanDeployError
from gan_deploy.engine.build import DEFAULT_PROFILE, DEFAULT_WORKSPACE_MIB
from gan_deploy.precision.calibrate import CALIB_METHODS
from gan_deploy.precision.options import FP16_EVALUATORS
from gan_deploy.precision.sensitivity import DEFAULT_SENSITIVITY_SAMPLES

# quantize -o: an INT8 or an FP16 model, by the precision flag (an existing file of the other kind is refused)
QUANTIZED_KIND = kind_by(lambda params: "onnx-fp16" if params.get("fp16") else "onnx-int8", "onnx-int8", "onnx-fp16")

# --int8 / --fp16 (/ --fp32): one flag per precision the operation makes (precision.quantize.QUANTIZE_PRECISIONS,
# engine.build.ENGINE_PRECISIONS; tests/test_cli_options.py checks the keys), in the order --help lists them
QUANTIZE_FLAGS = {"int8": "INT8 Q/DQ model, per-channel weights, calibrated on prior latents.",
                  "fp16": "FP16 model with FP32 inputs/outputs; overflow-prone ops kept FP32."}
ENGINE_FLAGS = {"fp16": "FP16 network (the FP16 ONNX of `quantize --fp16`).",
                "int8": "INT8 network (the TensorRT-flavour Q/DQ ONNX of `quantize --int8`).",
                "fp32": "FP32 network (TensorRT may use TF32 on Ampere and newer)."}
SOURCE_ONNX_HELP = "FP32 ONNX generator (from `gan-deploy export`, or any [N,Z] -> [N,C,H,W] model)."
SOURCE_CHECKPOINT_HELP = "Checkpoint, exported to ONNX in memory. Default: the shipped digits_dcgan."


def _thresholds(precision: str, max_nonfinite, max_saturation_increase, min_psnr_worst, min_psnr_median, max_fd_ratio):
    from dataclasses import replace

    from gan_deploy.precision.gate import thresholds_for

    t = thresholds_for(precision, max_nonfinite=max_nonfinite, max_saturation_increase=max_saturation_increase,
                       min_psnr_worst=min_psnr_worst, min_psnr_median=min_psnr_median,
                       max_fd_ratio=None if max_fd_ratio == "none" else max_fd_ratio)
    return replace(t, max_fd_ratio=None) if max_fd_ratio == "none" else t


def _parent(checkpoint: Path | None, onnx: Path | None, value_range: str | None) -> Any:
    return load_artifact_from_options(checkpoint, onnx, None, value_range)


@command("quantize", short_help="INT8 (Q/DQ, mixed INT8/FP32 if need be) or FP16 ONNX, accepted only if it passes the quality gate.")
@precision_flags(QUANTIZE_FLAGS)
@artifact_options(engine=False, checkpoint_help=SOURCE_CHECKPOINT_HELP, onnx_help=SOURCE_ONNX_HELP)
@output_option("--out", "-o", kind=QUANTIZED_KIND, default=None,
              help="File to write. Default: beside the input, NAME.int8.onnx / NAME.int8-tensorrt.onnx / NAME.fp16.onnx.")
@click.option("--target", type=click.Choice(list(INT8_TARGETS)), default=INT8_TARGETS[0], show_default=True,
              help="INT8 flavour: onnxruntime (UINT8 activations, fast on CPU) or tensorrt (symmetric INT8, FP32 "
                   "biases: what TensorRT parses; runs on CPU too, slowly).")
@calib_samples_option(help="Latents from the generator's prior used to calibrate activation ranges (no data set needed).")
@click.option("--calib-method", type=click.Choice(["auto", *CALIB_METHODS]), default="auto", show_default=True,
              help="Activation ranges. auto: minmax; if its model fails the gate, percentile and entropy too, and the "
                   "one the gate's figures favour (recorded in the model's recipe).")
@click.option("--no-rewrite", is_flag=True,
              help="Keep ConvTranspose as is (onnxruntime then runs it dequantized in FP32: slower than FP32).")
@click.option("--no-mixed", is_flag=True,
              help="INT8: if full INT8 fails the gate, stop (no sensitivity analysis, no mixed INT8/FP32 model).")
@input_path_option("--policy", "policy_file", default=None,
              help="INT8: calibration method and nodes kept FP32 from this file (the --json of an earlier "
                   "`quantize --int8`, or a policy); no search. E.g. the TensorRT flavour of a searched model.")
@click.option("--report", is_flag=True,
              help="INT8: only the sensitivity report (each unit's damage alone in INT8 on the gate's figures): a "
                   "table, and a PNG bar chart (--plot). Writes no model.")
@output_option("--plot", kind="png", default=None,
              help="With --report: the bar chart. Default: beside the input, NAME.int8-sensitivity.png.")
@click.option("--sensitivity-samples", type=click.IntRange(min=32), default=DEFAULT_SENSITIVITY_SAMPLES, show_default=True,
              help="INT8 mixed search / --report: gate latents each unit's damage is measured on.")
@click.option("--speed-rounds", type=click.IntRange(min=1), default=5, show_default=True,
              help="INT8 mixed: interleaved FP32/INT8 timing rounds (onnxruntime, batch 64).")
@click.option("--min-speedup", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="INT8 mixed: write the model only if it is at least this many times as fast as FP32.")
@click.option("--evaluator", type=click.Choice(list(FP16_EVALUATORS)), default=FP16_EVALUATORS[0], show_default=True,
              help="FP16: what runs the model for the gate: onnxruntime where it has FP16 kernels, else ONNX's "
                   "reference evaluator (slow; at most 64 images).")
@gate_options
@json_option(help="Also write the report (recipe, policy, gate figures, sensitivity, speed) as JSON.")
def quantize(int8, fp16, checkpoint, onnx, value_range, out, target, calib_samples, calib_method, no_rewrite, no_mixed,
             policy_file, report, plot, sensitivity_samples, speed_rounds, min_speedup, evaluator, gate_samples, max_nonfinite,
             max_saturation_increase, min_psnr_worst, min_psnr_median, max_fd_ratio, json_out) -> None:
    """Make an INT8 or FP16 ONNX model and accept it only if its images match eager FP32's.

    The gate runs the new model and eager FP32 on the same latents and checks NaN/Inf, saturated pixels,
    per-image PSNR (worst and median) and the quality score's FD relative to the FP32 noise floor. A model
    that fails is not written; the report says which check failed and the exit code is 2.

    INT8 rewrites each stride-2 transposed convolution exactly into four 2x2 convolutions + DepthToSpace, so
    every layer has a quantized kernel (onnxruntime has none for ConvTranspose). When full INT8 fails the
    gate, the damage each node (weighted layers one by one, other operators in blocks) does alone in INT8 is
    measured on the gate's figures, and the most damaging are kept in FP32 until the gate passes; the report
    names them and why, and times the result against FP32. A mixed model slower than FP32 is not written.

    \b
    Examples:
      gan-deploy quantize --int8                       # -> models/digits_dcgan.int8.onnx
      gan-deploy quantize --fp16 --onnx models/digits_dcgan.onnx
      gan-deploy quantize --int8 --onnx models/stylegan2_tiny.onnx --json sg.int8.json   # mixed if need be
      gan-deploy quantize --int8 --onnx models/stylegan2_tiny.onnx --report    # table + PNG, no model
      gan-deploy quantize --int8 --target tensorrt --onnx models/stylegan2_tiny.onnx --policy sg.int8.json
      gan-deploy quantize --int8 --min-psnr-worst 25 --json q.json
      gan-deploy bench --onnx models/digits_dcgan.int8.onnx
    """
    from gan_deploy.precision.gate import GateRejected
    from gan_deploy.precision.lineage import default_out
    from gan_deploy.precision.options import QuantizeOptions
    from gan_deploy.precision.quantize import quantize as run_quantize
    from gan_deploy.precision.search import int8_sensitivity

    precision = chosen_precision({"int8": int8, "fp16": fp16})
    int8_only = [f for f, v in (("--report", report), ("--policy", policy_file), ("--no-mixed", no_mixed), ("--plot", plot)) if v]
    if precision != "int8" and int8_only:
        raise GanDeployError("option only applies to --int8", " ".join(int8_only), expected="--int8")
    if plot and not report:
        raise GanDeployError("--plot is the bar chart of --report", str(plot), expected="--report as well")
    if report and policy_file:
        raise GanDeployError("--report measures every unit; a policy fixes them", "--report --policy", expected="one of them")
    thresholds = _thresholds(precision, max_nonfinite, max_saturation_increase, min_psnr_worst, min_psnr_median, max_fd_ratio)

    def progress(msg: str) -> None:
        click.echo(msg, err=True)

    opts = QuantizeOptions(precision=precision, out=out, target=target, calib_samples=calib_samples,
                           calib_method=calib_method, rewrite=not no_rewrite, evaluator=evaluator, gate_samples=gate_samples,
                           thresholds=thresholds, mixed=not no_mixed, policy=policy_file, sensitivity_samples=sensitivity_samples,
                           speed_rounds=speed_rounds, min_speedup=min_speedup, progress=progress)
    parent = _parent(checkpoint, onnx, value_range)
    if report:
        png = plot or default_out(parent, "int8", target).with_name(parent.path.name.split(".")[0] + ".int8-sensitivity.png")
        sens = int8_sensitivity(parent, opts, plot=png)
        click.echo(sens.summary(top=None))
        write_json(json_out, sens.to_dict())
        return
    result = run_quantize(parent, opts)
    click.echo(result.summary())
    write_json(json_out, result.to_dict())
    if not result.accepted:
        raise GateRejected(result.gate, f"the {precision} model", "nothing was written; change a threshold only "
                           "after looking at the images (gan-deploy generate --onnx ...)")
    if result.path is None:
        raise GanDeployError(f"no {precision} model was written", result.note, hint="see the report above")


@command("build-engine", short_help="TensorRT engine (FP16/INT8/FP32) with a sidecar, gated against eager FP32.")
@precision_flags(ENGINE_FLAGS)
@artifact_options(engine=False, checkpoint_help=SOURCE_CHECKPOINT_HELP, onnx_help=SOURCE_ONNX_HELP)
@output_option("--out", "-o", kind="engine", default=None,
              help="Engine file. Default: engines/NAME.PRECISION.engine (+ engines/NAME.PRECISION.json sidecar).")
@click.option("--min-batch", type=click.IntRange(min=1), default=DEFAULT_PROFILE[0], show_default=True, help="Optimization profile: smallest batch.")
@click.option("--opt-batch", type=click.IntRange(min=1), default=DEFAULT_PROFILE[1], show_default=True, help="Batch TensorRT tunes for.")
@click.option("--max-batch", type=click.IntRange(min=1), default=DEFAULT_PROFILE[2], show_default=True, help="Largest batch.")
@click.option("--workspace", type=click.IntRange(min=16), default=DEFAULT_WORKSPACE_MIB, show_default=True, help="Workspace limit, MiB.")
@output_option("--timing-cache", kind="timing-cache", specials=("auto", "none", "None", "NONE"), default="auto", show_default=True,
              help="Timing cache file reused across builds; 'auto': engines/timing_smXY_trtVER.cache, 'none': no cache.")
@calib_samples_option(help="INT8 from an FP32 model: prior latents used for calibration.")
@device_option(default="cuda", help="cuda or cuda:N.")
@click.option("--no-cuda-graphs", is_flag=True, help="Gate the engine without CUDA graph replay.")
@click.option("--version-compatible", is_flag=True,
              help="BuilderFlag.VERSION_COMPATIBLE: the engine embeds TensorRT's lean runtime and runs on this TensorRT or a "
                   "later one of the same major version, NVIDIA's lean runtime (tensorrt_lean) included; can be slower. "
                   "Loading it runs code from the plan: load only engines you trust.")
@gate_options
@json_option()
def build_engine(fp16, int8, fp32, checkpoint, onnx, value_range, out, min_batch, opt_batch, max_batch, workspace,
                 timing_cache, calib_samples, device, no_cuda_graphs, version_compatible, gate_samples, max_nonfinite,
                 max_saturation_increase, min_psnr_worst, min_psnr_median, max_fd_ratio, json_out) -> None:
    """Build a TensorRT engine for this GPU, check it against eager FP32, write it with its sidecar JSON.

    Needs TensorRT and an NVIDIA GPU (from the clone: `pip install -e ".[gpu]"`). Networks are strongly typed: the
    precision comes from the ONNX (FP16 casts, INT8 Q/DQ), on TensorRT 10 and 11 alike. The sidecar records
    the TensorRT version, GPU name and compute capability, precision, profile and the ONNX's sha256; an
    engine whose source changed, or that was built for another GPU or TensorRT version, is refused at load
    with the command that rebuilds it. The engine is written only if it passes the quality gate.

    \b
    Examples:
      gan-deploy build-engine --fp16                   # -> engines/digits_dcgan.fp16.engine
      gan-deploy build-engine --int8 --onnx models/digits_dcgan.onnx --max-batch 1024
      gan-deploy build-engine --fp32 --min-batch 1 --opt-batch 16 --max-batch 64 --workspace 512
      gan-deploy build-engine --fp16 --version-compatible   # also runs with the lean runtime (tensorrt_lean)
      gan-deploy generate --engine engines/digits_dcgan.fp16.engine -n 10000 --out samples/
      gan-deploy bench --engine engines/digits_dcgan.fp16.engine
    """
    from gan_deploy.core.errors import BackendUnavailable
    from gan_deploy.engine.build import EngineOptions
    from gan_deploy.engine.build import build_engine as run_build
    from gan_deploy.engine.build import builder_unavailable_reason as unavailable_reason
    from gan_deploy.precision.gate import GateRejected

    precision = chosen_precision({"fp16": fp16, "int8": int8, "fp32": fp32})
    reason = unavailable_reason()
    if reason:  # first: without TensorRT or a GPU nothing else matters
        raise BackendUnavailable("cannot build a TensorRT engine here", reason)
    cache = None if str(timing_cache).lower() == "none" else ("auto" if timing_cache == "auto" else Path(timing_cache))
    opts = EngineOptions(precision=precision, out=out, profile=(min_batch, opt_batch, max_batch), workspace_mib=workspace,
                         timing_cache=cache, gate_samples=gate_samples, calib_samples=calib_samples, device=device,
                         cuda_graphs=not no_cuda_graphs, version_compatible=version_compatible,
                         thresholds=_thresholds(precision, max_nonfinite, max_saturation_increase, min_psnr_worst,
                                                min_psnr_median, max_fd_ratio))
    report = run_build(_parent(checkpoint, onnx, value_range), opts)
    click.echo(report.summary())
    write_json(json_out, {"path": str(report.path) if report.path else None, "precision": precision,
                           "version_compatible": version_compatible, "build_s": report.build_s, "gate": report.gate.to_dict(), "recipe": report.recipe})
    if report.path is None:
        raise GateRejected(report.gate, f"the {precision} engine", "nothing was written")
