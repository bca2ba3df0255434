"""Shared fixtures: tiny generators (milliseconds per call) so the suite stays fast on 2 cores."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GAN_DEPLOY_THREADS", "1")  # deterministic, and no oversubscription on CI's 2 cores
os.environ.setdefault("GAN_DEPLOY_AUTO_MEASURE", "0")  # `auto` never depends on a timing here (tests of it set 1)
if "GAN_DEPLOY_CACHE_DIR" not in os.environ:  # OpenVINO's compiled models and auto's choices: never the user's cache
    import tempfile
    os.environ["GAN_DEPLOY_CACHE_DIR"] = tempfile.mkdtemp(prefix="gan-deploy-test-cache-")
torch.set_num_threads(1)

from gan_deploy.artifacts.checkpoint import save_checkpoint  # noqa: E402
from gan_deploy.nets.config import GeneratorConfig  # noqa: E402
from gan_deploy.nets.networks import build_generator, init_weights  # noqa: E402

TINY = GeneratorConfig(arch="dcgan", latent_dim=8, channels=1, image_size=16, width=8)


def make_checkpoint(path: Path, cfg: GeneratorConfig = TINY, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    g = build_generator(cfg)
    g.apply(init_weights)
    # random batch-norm statistics so eval-mode BN is not an identity and export bugs would show
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    # larger weights than the DCGAN init so images use the whole tanh range, like a trained generator
    for m in g.modules():
        if isinstance(m, torch.nn.ConvTranspose2d):
            m.weight.data.mul_(10)
    return save_checkpoint(path, g, cfg, train={"dataset": "none", "seed": seed}).path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.safetensors")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint, tmp_path_factory) -> Path:
    from gan_deploy.export.onnx import onnx_from_checkpoint
    return onnx_from_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "tiny.onnx").path


@pytest.fixture
def cli():
    from click.testing import CliRunner

    from gan_deploy.cli.main import main

    runner = CliRunner()

    def invoke(*args: str, **kw):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False, **kw)
    return invoke
