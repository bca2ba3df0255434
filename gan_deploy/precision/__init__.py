"""Reduced precision: INT8 Q/DQ and FP16 ONNX models, the exact ConvTranspose rewrite, and the quality gate.

Owns: `quantize.py` (QuantizeOptions, INT8 calibration, FP16 pass, the commands' library functions),
`rewrite.py` (BatchNorm folding, ConvTranspose -> Conv + DepthToSpace), `gate.py` (NaN/Inf, saturation,
PSNR and FD checks every reduced-precision artifact must pass).
May import: core, nets, artifacts, export, backends (the gate runs candidates), quality.
"""
