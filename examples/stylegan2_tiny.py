"""A StyleGAN2-style generator of gan-deploy's own writing (Karras et al. 2020, "Analyzing and Improving the Image
Quality of StyleGAN"), small enough for a CPU: the bring-your-own example of a *modern* generator.

    mapping      z [N, Z] -> 2nd-moment normalization -> n_mlp x (Linear + LeakyReLU(0.2) * sqrt 2) -> w [N, W],
                 truncation w = w_avg + psi (w - w_avg) (w_avg: the mapping's mean over 4096 prior latents)
    synthesis    a learned constant 4x4 input; per resolution (4, 8, 16, 32): bilinear 2x upsampling (from 8x8 on),
                 modulated + demodulated 3x3 convolutions (one at 4x4, two above), constant noise with a learned
                 strength, bias, LeakyReLU(0.2) * sqrt 2; a modulated 1x1 toRGB per resolution whose outputs are
                 summed through bilinear upsampling (the skip architecture); tanh at the end -> [-1, 1]

Modulation is written the way StyleGAN2-ADA runs it unfused (`fused_modconv=False`): scale the input channels by
the style, convolve with the *shared* weight, scale the output channels by the demodulation coefficients
rsqrt(s^2 @ sum_k W^2 + eps). Mathematically the same as modulating the weight per sample, and it exports to
ONNX as a plain Conv with constant weights and a dynamic batch (a grouped convolution per sample would need a
static batch), which is also what lets the convolutions be quantized.

The default size is 1.40 M parameters, 32x32 RGB, Z = 64. Use it with `gan-deploy export --factory`:

    python examples/stylegan2_tiny.py models/stylegan2_tiny_weights.safetensors     # deterministic weights, ~1 s
    gan-deploy export --factory examples/stylegan2_tiny.py:Generator \\
        --weights models/stylegan2_tiny_weights.safetensors --out models/stylegan2_tiny.onnx

`make_weights` makes deterministic weights without a download or a training run: StyleGAN2's initialization under
a seed, seeded noise strengths and biases, and a few outlier dimensions of w (`add_outlier_dims`; see the
docstrings). Its images are smooth coloured shapes that use the whole [-1, 1] range. The outliers are a
constructed stand-in for what trained weights do to INT8, not a measurement of trained StyleGAN2 weights: with
them, full INT8 fails gan-deploy's quality gate (one per-tensor scale for w), which is the case `quantize --int8`'s
mixed precision search is for (docs/precision.md). `tiny_kwargs()` is the small variant the tests use.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)
DEFAULT_CHANNELS = {4: 128, 8: 128, 16: 128, 32: 64}


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * SQRT2  # StyleGAN's activation gain keeps the variance at 1


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class MappingNetwork(nn.Module):
    def __init__(self, z_dim: int, w_dim: int, n_mlp: int):
        super().__init__()
        dims = [z_dim] + [w_dim] * n_mlp
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        for fc in self.layers:
            nn.init.normal_(fc.weight, 0.0, 1.0 / math.sqrt(fc.in_features))
            nn.init.zeros_(fc.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)  # normalize_2nd_moment
        for fc in self.layers:
            x = _lrelu(fc(x))
        return x


class ModulatedConv(nn.Module):
    """Style-modulated convolution: x * s -> conv(W) -> * demod (or no demodulation: toRGB)."""

    def __init__(self, cin: int, cout: int, kernel: int, w_dim: int, demodulate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel) / math.sqrt(cin * kernel * kernel))
        self.affine = nn.Linear(w_dim, cin)
        nn.init.normal_(self.affine.weight, 0.0, 1.0 / math.sqrt(w_dim))
        nn.init.ones_(self.affine.bias)  # styles start around 1, as in StyleGAN2
        self.demodulate, self.padding = demodulate, kernel // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.affine(w)  # [N, Cin]
        x = F.conv2d(x * s[:, :, None, None], self.weight, padding=self.padding)
        if self.demodulate:  # rsqrt(sum over Cin, kh, kw of (W s)^2): [N, Cout]
            d = torch.rsqrt(s.square() @ self.weight.square().sum(dim=(2, 3)).t() + 1e-8)
            x = x * d[:, :, None, None]
        return x


class StyleLayer(nn.Module):
    """Modulated 3x3 convolution + constant noise * learned strength + bias + LeakyReLU."""

    def __init__(self, cin: int, cout: int, w_dim: int, resolution: int, seed: int):
        super().__init__()
        self.conv = ModulatedConv(cin, cout, 3, w_dim)
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution, generator=gen))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self.conv(x, w) + self.noise_strength * self.noise_const
        return _lrelu(x + self.bias[None, :, None, None])


class ToRGB(nn.Module):
    def __init__(self, cin: int, w_dim: int, channels: int):
        super().__init__()
        self.conv = ModulatedConv(cin, channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias[None, :, None, None]


class Generator(nn.Module):
    """z [N, latent_dim] -> image [N, channels, resolution, resolution] in [-1, 1]."""

    def __init__(self, latent_dim: int = 64, w_dim: int = 256, n_mlp: int = 4, resolution: int = 32, channels: int = 3,
                 widths: dict | None = None, truncation_psi: float = 0.7):
        super().__init__()
        n_res = int(round(math.log2(resolution)))
        if resolution < 4 or 2 ** n_res != resolution:
            raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
        widths = {int(k): int(v) for k, v in (widths or DEFAULT_CHANNELS).items()}
        res = [2 ** i for i in range(2, n_res + 1)]
        missing = [r for r in res if r not in widths]
        if missing:
            raise ValueError(f"widths needs a channel count for resolutions {missing}")
        self.latent_dim, self.w_dim, self.truncation_psi = latent_dim, w_dim, float(truncation_psi)
        self.mapping = MappingNetwork(latent_dim, w_dim, n_mlp)
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.const = nn.Parameter(torch.randn(widths[4], 4, 4))
        self.layers = nn.ModuleList()
        self.torgb = nn.ModuleList()
        cin = widths[4]
        for i, r in enumerate(res):
            convs = [StyleLayer(cin, widths[r], w_dim, r, seed=1000 + 2 * i)]
            if r > 4:
                convs.append(StyleLayer(widths[r], widths[r], w_dim, r, seed=1001 + 2 * i))
            self.layers.append(nn.ModuleList(convs))
            self.torgb.append(ToRGB(widths[r], w_dim, channels))
            cin = widths[r]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.mapping(z)
        w = self.w_avg + self.truncation_psi * (w - self.w_avg)  # truncation trick
        x = self.const.unsqueeze(0).expand(z.shape[0], -1, -1, -1)
        img = None
        for i, (convs, torgb) in enumerate(zip(self.layers, self.torgb)):
            if i > 0:
                x = _up(x)
            for layer in convs:
                x = layer(x, w)
            rgb = torgb(x, w)
            img = rgb if img is None else _up(img) + rgb  # skip architecture
        return torch.tanh(img)


def tiny_kwargs() -> dict:
    """The small variant the tests use (16x16, ~60 k parameters): same structure, milliseconds per batch."""
    return {"latent_dim": 16, "w_dim": 32, "n_mlp": 2, "resolution": 16, "widths": {4: 32, 8: 32, 16: 16}}


# -- deterministic weights -------------------------------------------------------------------------

@torch.no_grad()
def update_w_avg(g: Generator, n: int = 4096, seed: int = 0) -> None:
    """w_avg, the truncation centre: the mapping network's mean output over n prior latents."""
    z = torch.randn(n, g.latent_dim, generator=torch.Generator().manual_seed(seed))
    g.w_avg.copy_(g.mapping(z).mean(dim=0))


OUTLIER_DIMS = 4  # dimensions of w made `OUTLIER_GAIN` times larger than the rest (see make_weights)
OUTLIER_GAIN = 16.0


@torch.no_grad()
def add_outlier_dims(g: Generator, dims: int = OUTLIER_DIMS, gain: float = OUTLIER_GAIN, seed: int = 0) -> list[int]:
    """Make `dims` dimensions of w `gain` times larger and every style affine read them `gain` times weaker: the
    images are unchanged (LeakyReLU and truncation are positively homogeneous, the affines linear), but w now has
    a few outlier dimensions, the pattern known to break per-tensor INT8 activations (one scale for all of w: the
    other dimensions keep ~4 of their 8 bits). Returns the dimensions."""
    idx = torch.randperm(g.w_dim, generator=torch.Generator().manual_seed(seed))[:dims].tolist()
    last = g.mapping.layers[-1]
    last.weight[idx] *= gain
    last.bias[idx] *= gain
    for m in g.modules():
        if isinstance(m, ModulatedConv):
            m.affine.weight[:, idx] /= gain
    g.w_avg[idx] *= gain
    return idx


@torch.no_grad()
def make_weights(out: str | Path | None = None, *, seed: int = 0, outliers: bool = True, **kwargs) -> Generator:
    """Deterministic weights, no download, no training: StyleGAN2's own initialization under `seed` (N(0, 1/fan_in)
    weights, styles around 1), plus what training gives a model and an init leaves at zero or at one: per-layer
    noise strengths and biases, style affine biases around 1 (seeded draws, so noise and bias paths matter and
    no two biases are equal), w_avg for truncation, and `add_outlier_dims` (unless `outliers=False`). torch.randn
    under a seed gives the same numbers on every CPU, so the weights (and the INT8 failure they show) are the
    same everywhere. Saves a safetensors state dict to `out` when given."""
    torch.manual_seed(seed)
    g = Generator(**kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    for layer in g.modules():
        if isinstance(layer, StyleLayer):
            layer.noise_strength.fill_(0.05 + 0.15 * float(torch.rand((), generator=gen)))
            layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=gen))
        elif isinstance(layer, ToRGB):
            layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=gen))
        elif isinstance(layer, ModulatedConv):
            layer.affine.bias.copy_(1.0 + 0.1 * torch.randn(layer.affine.bias.shape, generator=gen))
    for fc in g.mapping.layers:
        fc.bias.copy_(0.05 * torch.randn(fc.bias.shape, generator=gen))
    update_w_avg(g, seed=seed + 2)
    if outliers:
        add_outlier_dims(g, seed=seed + 3)
    g.eval()
    if out is not None:
        from safetensors.torch import save_file

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in g.state_dict().items()}, str(out))
    return g


if __name__ == "__main__":
    import argparse
    import json
    import time

    ap = argparse.ArgumentParser(description="Write deterministic weights for the StyleGAN2-style example generator.")
    ap.add_argument("out", nargs="?", default="models/stylegan2_tiny_weights.safetensors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kwargs", default="{}", help="constructor arguments as JSON (the same go to export --kwargs)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    net = make_weights(a.out, seed=a.seed, **json.loads(a.kwargs))
    n = sum(p.numel() for p in net.parameters())
    print(f"wrote {a.out} ({n / 1e6:.2f} M parameters, seed {a.seed}, {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
