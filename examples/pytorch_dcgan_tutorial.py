"""A generator that is not gan-deploy's own: the Generator of PyTorch's DCGAN tutorial
(pytorch.org/tutorials/beginner/dcgan_faces_tutorial.html), 64x64 RGB, latent [N, nz, 1, 1].

Used in the README to show `gan-deploy export --factory` on a foreign model. Run it to save a state dict
the way the tutorial does (`torch.save(netG.state_dict(), ...)`):

    python examples/pytorch_dcgan_tutorial.py netG.pth      # random weights, for trying the path
"""
import sys

import torch
import torch.nn as nn


class Generator(nn.Module):
    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),  # 4x4
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),  # 8x8
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),  # 16x16
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),  # 32x32
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh(),  # 64x64
        )

    def forward(self, input):  # [N, nz, 1, 1] -> [N, nc, 64, 64]
        return self.main(input)


if __name__ == "__main__":
    torch.manual_seed(0)
    net = Generator()
    for m in net.modules():  # the tutorial's weights_init
        if isinstance(m, nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    out = sys.argv[1] if len(sys.argv) > 1 else "netG.pth"
    torch.save(net.state_dict(), out)
    print(f"wrote {out}")
