"""gan-deploy: take a GAN generator from PyTorch to fast, verified inference.

The public Python API (what the CLI calls; each operation takes one options object):

    from gan_deploy import load_artifact, make_runner, GenerateOptions, generate_images
    art = load_artifact()                                  # the shipped digits_dcgan (or checkpoint=/onnx=/engine=)
    runner = make_runner("auto", art, "cuda", precision="fp16")   # backends: eager, compile, onnxruntime, tensorrt
    pixels = runner.infer_pixels(latents_range(0, 0, 16, art.spec.latent_dim))   # uint8 [16, H, W, C]
    generate_images(art, GenerateOptions(n=1000, out="samples"))

    export_onnx(checkpoint, out)        bench(art, BenchOptions(...))        quantize(art, QuantizeOptions(...))
    build_engine(art, EngineOptions(...))    train(TrainOptions(...))    evaluate(artifact=art, ...)
    run_service(ServeConfig(art, port=8000))   # the HTTP service until SIGTERM or Ctrl-C, then drained

Importing this package is cheap and needs no GPU, onnxruntime or TensorRT: names load on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute"; resolved lazily so `import gan_deploy` stays light
_API = {
    "GanDeployError": "gan_deploy.core.errors:GanDeployError",
    "latents_range": "gan_deploy.core.latents:latents_range",
    "load_artifact": "gan_deploy.artifacts.load:load_artifact",
    "Artifact": "gan_deploy.artifacts.artifact:Artifact",
    "GeneratorSpec": "gan_deploy.artifacts.spec:GeneratorSpec",
    "make_runner": "gan_deploy.backends:make_runner",
    "export_onnx": "gan_deploy.export.onnx:onnx_from_checkpoint",
    "export_factory": "gan_deploy.export.onnx:onnx_from_factory",
    "GenerateOptions": "gan_deploy.generate.pipeline:GenerateOptions",
    "generate_images": "gan_deploy.generate.pipeline:run",
    "BenchOptions": "gan_deploy.bench.run:BenchOptions",
    "bench": "gan_deploy.bench.run:bench",
    "QuantizeOptions": "gan_deploy.precision.quantize:QuantizeOptions",
    "quantize": "gan_deploy.precision.quantize:quantize",
    "EngineOptions": "gan_deploy.engine.build:EngineOptions",
    "build_engine": "gan_deploy.engine.build:build_engine",
    "TrainOptions": "gan_deploy.train.options:TrainOptions",
    "train": "gan_deploy.train.loop:train",
    "evaluate": "gan_deploy.quality.evaluate:run_eval",
    "ServeConfig": "gan_deploy.serve.config:ServeConfig",
    "run_service": "gan_deploy.serve.driver:run_service",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'gan_deploy' has no attribute {name!r}")
    module, attr = _API[name].split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
