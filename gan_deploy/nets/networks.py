"""The generators and discriminators, whole, in one file (nanoGPT style).

`dcgan`: transposed convolutions + batch norm + ReLU, tanh output (Radford et al. 2015).
`mlp`:   the fully connected generator/discriminator of the classic MNIST GAN examples.
Both map a latent [N, Z] to an image [N, C, H, W] in [-1, 1].
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from gan_deploy.core.errors import GanDeployError
from gan_deploy.nets.config import ARCHS, GeneratorConfig


def _check(cfg: GeneratorConfig) -> int:
    if cfg.arch not in ARCHS:
        raise GanDeployError("unknown architecture", repr(cfg.arch), expected=f"one of {', '.join(ARCHS)}")
    if cfg.latent_dim < 1 or cfg.channels not in (1, 3) or cfg.width < 1:
        raise GanDeployError("bad generator dimensions", f"latent_dim={cfg.latent_dim} channels={cfg.channels} width={cfg.width}", expected="latent_dim >= 1, channels 1 or 3, width >= 1")
    n_up = int(round(math.log2(cfg.image_size / 4))) if cfg.image_size >= 8 else -1
    if cfg.arch == "dcgan" and (n_up < 1 or 4 * 2**n_up != cfg.image_size):
        raise GanDeployError("dcgan image size must be a power of two", cfg.image_size, expected="8, 16, 32, 64, 128 ...", hint="resize the data set (train --image-size) or use --arch mlp")
    cfg.check_size("generator", hint="lower --width or --image-size")  # before a terabyte allocation, not after
    return n_up


class DCGANGenerator(nn.Module):
    def __init__(self, latent_dim: int = 64, channels: int = 1, image_size: int = 32, width: int = 64):
        super().__init__()
        cfg = GeneratorConfig("dcgan", latent_dim, channels, image_size, width)
        n_up = _check(cfg)
        self.latent_dim = latent_dim
        ch = width * 2 ** (n_up - 1)  # channels at 4x4; halves at every upsampling step
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, ch, 4, 1, 0, bias=False),  # [N, Z, 1, 1] -> [N, ch, 4, 4]
            nn.BatchNorm2d(ch),
            nn.ReLU(True),
        ]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1), nn.Tanh()]  # -> [N, C, H, W]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: [N, Z]
        return self.net(z.reshape(z.shape[0], self.latent_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    def __init__(self, channels: int = 1, image_size: int = 32, width: int = 64, norm: bool = True):
        super().__init__()
        n_down = int(round(math.log2(image_size / 4)))
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = width
        for _ in range(n_down - 1):
            # WGAN-GP's gradient penalty is per sample, which batch norm breaks: it gets no norm then
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=not norm)]
            layers += [nn.BatchNorm2d(ch * 2)] if norm else []
            layers += [nn.LeakyReLU(0.2, True)]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0)]  # [N, ch, 4, 4] -> [N, 1, 1, 1] logit
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, C, H, W] -> [N]
        return self.net(x).flatten()


class MLPGenerator(nn.Module):
    def __init__(self, latent_dim: int = 64, channels: int = 1, image_size: int = 32, width: int = 64):
        super().__init__()
        _check(GeneratorConfig("mlp", latent_dim, channels, image_size, width))
        self.shape = (channels, image_size, image_size)
        h = [width * 4, width * 8, width * 16]  # 256, 512, 1024 at the default width
        self.net = nn.Sequential(
            nn.Linear(latent_dim, h[0]), nn.LeakyReLU(0.2, True),
            nn.Linear(h[0], h[1]), nn.LeakyReLU(0.2, True),
            nn.Linear(h[1], h[2]), nn.LeakyReLU(0.2, True),
            nn.Linear(h[2], channels * image_size * image_size), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: [N, Z] -> [N, C, H, W]
        return self.net(z.reshape(z.shape[0], -1)).reshape(z.shape[0], *self.shape)


class MLPDiscriminator(nn.Module):
    def __init__(self, channels: int = 1, image_size: int = 32, width: int = 64, norm: bool = True):
        super().__init__()
        h = [width * 16, width * 8, width * 4]
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * image_size * image_size, h[0]), nn.LeakyReLU(0.2, True),
            nn.Linear(h[0], h[1]), nn.LeakyReLU(0.2, True),
            nn.Linear(h[1], h[2]), nn.LeakyReLU(0.2, True),
            nn.Linear(h[2], 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N]
        return self.net(x).flatten()


def build_generator(cfg: GeneratorConfig) -> nn.Module:
    _check(cfg)
    cls = DCGANGenerator if cfg.arch == "dcgan" else MLPGenerator
    return cls(cfg.latent_dim, cfg.channels, cfg.image_size, cfg.width)


def build_discriminator(cfg: GeneratorConfig, width: int | None = None, norm: bool = True) -> nn.Module:
    _check(cfg)
    cls = DCGANDiscriminator if cfg.arch == "dcgan" else MLPDiscriminator
    return cls(cfg.channels, cfg.image_size, width or cfg.width, norm=norm)


def init_weights(m: nn.Module) -> None:
    """DCGAN paper init: N(0, 0.02) for conv weights, N(1, 0.02) for batch-norm scales."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def count_parameters(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
