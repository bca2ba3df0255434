"""Export: PyTorch generator (a checkpoint or the user's own factory) -> ONNX, verified against eager.

Owns: `onnx_from_checkpoint`, `onnx_from_factory`, `onnx_bytes_of` (any artifact's ONNX, in memory).
May import: core, artifacts. torch and onnx load inside functions.
"""
