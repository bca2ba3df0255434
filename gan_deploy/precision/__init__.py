"""Reduced precision: INT8 Q/DQ and FP16 ONNX models, the exact ConvTranspose rewrite, and the quality gate.

Owns: `quantize.py` (QuantizeOptions, Int8Policy, INT8 and FP16 passes, the commands' library functions),
`calibrate.py` (activation ranges: minmax, percentile, entropy from one calibration run),
`sensitivity.py` (per-unit INT8 damage on the gate's figures, the mixed INT8/FP32 search, speed vs FP32),
`rewrite.py` (BatchNorm folding, ConvTranspose -> Conv + DepthToSpace), `gate.py` (NaN/Inf, saturation,
PSNR and FD checks every reduced-precision artifact must pass).
May import: core, artifacts, export, backends (the gate runs candidates), quality.
"""
