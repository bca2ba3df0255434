"""Engines: TensorRT engine building (`build.py`), gated on the GPU against eager FP32, written with a sidecar.

May import: core, artifacts, export, backends (the TensorRT runner gates the engine), precision.
"""
