"""Reduced precision: INT8 Q/DQ and FP16 ONNX models, the graph rewrites they need, and the quality gate.

Owns, one concept per module (each imports only modules listed after it; tests/test_precision_modules.py):
`quantize.py` (the entry: `quantize(parent, QuantizeOptions)`, `reduced_precision_model`),
`search.py` (`int8_onnx_from_onnx`: calibration method by the gate, the mixed INT8/FP32 search, speed vs FP32;
`int8_sensitivity`), `fp16.py` (the FP16 pass and `fp16_onnx_from_onnx`), `options.py` (QuantizeOptions,
validated when made; QUANTIZE_PRECISIONS, FP16_EVALUATORS), `sensitivity.py` (per-unit INT8 damage on the gate's
figures), `int8.py` (`Int8Builder`, the one INT8 builder, and onnxruntime's Q/DQ quantizer call), `report.py`
(PrecisionReport; writing a gated model), `lineage.py` (parent FP32 ONNX, child metadata and file name, the
gate's FP32 reference), `policy.py` (Int8Policy and its reader), `calibrate.py` (prior latents; activation
ranges: minmax, percentile, entropy from one calibration run), `rewrite.py` (all graph surgery: BatchNorm
folding, ConvTranspose -> Conv + DepthToSpace, untying biases, `prepare_int8`), `runtime_gate.py` (the gate re-run on the runtime that runs a model: OpenVINO),
`gate.py` (NaN/Inf, saturation,
PSNR and FD checks every reduced-precision artifact must pass).
May import: core, artifacts, export, backends (the gate runs candidates), quality.
"""
