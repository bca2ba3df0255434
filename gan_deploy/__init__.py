"""gan-deploy: take a GAN generator from PyTorch to fast, verified inference.

Importing this package is cheap and needs no GPU, onnxruntime or TensorRT: heavy modules load on use.
"""
__version__ = "0.1.0"
