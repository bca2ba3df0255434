import json

import pytest
import torch

from gan_deploy.artifacts.checkpoint import load_generator, read_checkpoint
from gan_deploy.core.errors import GanDeployError
from gan_deploy.nets.config import GeneratorConfig
from tests.conftest import make_checkpoint


def test_roundtrip_rebuilds_the_same_generator(tmp_path):
    p = make_checkpoint(tmp_path / "g.safetensors")
    ck = read_checkpoint(p)
    assert ck.config.latent_dim == 8 and ck.meta["weights_sha256"] == ck.sha256
    g1, g2 = load_generator(p), load_generator(p.with_suffix(".json"))
    z = torch.randn(3, 8)
    assert torch.equal(g1(z), g2(z))
    assert g1(z).shape == (3, 1, 16, 16)


@pytest.mark.parametrize("damage,message", [
    (lambda p: p.write_bytes(b"not safetensors"), "weights do not match their sidecar"),
    (lambda p: p.with_suffix(".json").write_text("{oops"), "not valid JSON"),
    (lambda p: p.with_suffix(".json").unlink(), "no JSON sidecar"),
    (lambda p: p.unlink(), "checkpoint not found"),
])
def test_damaged_checkpoints_are_refused(tmp_path, damage, message):
    p = make_checkpoint(tmp_path / "g.safetensors")
    damage(p)
    with pytest.raises(GanDeployError, match=message):
        load_generator(p)


def test_weights_of_another_architecture_are_refused(tmp_path):
    p = make_checkpoint(tmp_path / "g.safetensors")
    meta = json.loads(p.with_suffix(".json").read_text())
    meta["generator"]["width"] = 16  # sidecar now describes a different network than the weights
    p.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(GanDeployError, match="does not fit the architecture"):
        load_generator(p)


def test_mlp_generator_checkpoint(tmp_path):
    cfg = GeneratorConfig(arch="mlp", latent_dim=4, image_size=8, width=2)
    p = make_checkpoint(tmp_path / "m.safetensors", cfg)
    assert load_generator(p)(torch.zeros(2, 4)).shape == (2, 1, 8, 8)
