"""gan-deploy: take a GAN generator from PyTorch to fast, verified inference.

The public Python API: what the CLI calls, each operation with one options object that checks itself when built
(every line runs on a CPU as written; tests/test_api.py runs them):

    from gan_deploy import *
    art = load_artifact()                                   # the shipped digits_dcgan (or checkpoint=/onnx=/engine=)
    runner = make_runner("auto", art)                       # the fastest backend here: eager, compile, onnxruntime, tensorrt
    pixels = runner.infer_pixels(latents_range(0, 0, 16, art.spec.latent_dim))   # uint8 [16, H, W, C]
    half = make_runner("auto", art, precision="fp16")       # a torch precision: the PyTorch backend (eager)
    report = generate_images(art, GenerateOptions(n=1000, out="samples"))
    print(bench(art, BenchOptions(batch_sizes=(1, 64))).table())
    print(evaluate(art, EvalOptions(n=1000)).summary())
    export_onnx(art.path, "generator.onnx")
    quantize(load_artifact(onnx="generator.onnx"), QuantizeOptions(precision="fp16"))
    train(TrainOptions(out="runs/digits", steps=1500))

`build_engine(art, EngineOptions(...))` makes a TensorRT engine (an NVIDIA GPU and TensorRT needed). `progress`
in every options object means the same: True show it on stderr, False nothing, None a bar only on a terminal
(gan_deploy.core.progress).
`run_service(ServeConfig(art, port=8000))` runs the HTTP service (in process; Ray Serve replicas with `ray=True`) until SIGTERM or Ctrl-C,
then drains.

Importing this package is cheap and needs no GPU, onnxruntime or TensorRT: names load on first use.
"""
from __future__ import annotations

import importlib
import sys
import types
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
    "GenerateOptions": "gan_deploy.generate.options:GenerateOptions",
    "generate_images": "gan_deploy.generate.run:generate_images",
    "BenchOptions": "gan_deploy.bench.run:BenchOptions",
    "bench": "gan_deploy.bench.run:bench",
    "QuantizeOptions": "gan_deploy.precision.options:QuantizeOptions",
    "quantize": "gan_deploy.precision.quantize:quantize",
    "EngineOptions": "gan_deploy.engine.build:EngineOptions",
    "build_engine": "gan_deploy.engine.build:build_engine",
    "TrainOptions": "gan_deploy.train.options:TrainOptions",
    "train": "gan_deploy.train.loop:train",
    "EvalOptions": "gan_deploy.quality.evaluate:EvalOptions",
    "evaluate": "gan_deploy.quality.evaluate:evaluate",
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


class _Package(types.ModuleType):
    """`bench` and `train` name both an API function and a subpackage. Importing a subpackage sets it as an
    attribute of this package, which would make `gan_deploy.bench` the module whenever `gan_deploy.bench.run`
    was imported first (e.g. by `BenchOptions`). Those names stay the API's: the subpackages are reached by
    import (`from gan_deploy.bench.run import ...`), never as attributes."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
