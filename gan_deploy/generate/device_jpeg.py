"""`--jpeg-encoder cuda`: JPEG encoded on the GPU (nvJPEG, through `torchvision.io.encode_jpeg`) in the main
process, from the uint8 pixels the backend leaves on the device; the encoder workers then only write files.

Why opt-in, not the default: torchvision's CUDA encoder (0.19 and later) encodes the images of a batch one
after another, synchronising its stream twice per image, so for small images the per-image cost can exceed
what the CPU encoder processes achieve together; for large images the GPU wins. Which is faster depends on
the image size, the GPU and the cores: `benchmarks/jpeg_encoders.py` measures both on the machine at hand.
A run-time race between the two is not an option: the bytes differ (PIL/libjpeg-turbo subsamples chroma
4:2:0, nvJPEG as torchvision drives it keeps 4:4:4, both at quality 95), and the bytes of image i must
depend only on (seed, i) and the settings, never on timing. The run record names the encoder, so a resumed
run uses the same one.

What it needs: a PyTorch backend (eager, compile) on CUDA, RGB images (torchvision's CUDA encoder takes 3
channels only), torchvision built with nvJPEG (the CUDA wheels are).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from gan_deploy.backends import TORCH_BACKENDS
from gan_deploy.core.errors import GanDeployError
from gan_deploy.generate.sinks.base import Encoded

JPEG_ENCODERS = ("cpu", "cuda")
JPEG_QUALITY = 95  # the CPU encoder's (core.images.encode), so the choice changes the bytes, not the quality setting


def check_jpeg_encoder(encoder: str, fmt: str, sink: str, device: str | None, backend: str | None, channels: int) -> None:
    """Everything that can be known before loading anything; the rest (torchvision) when the encoder starts."""
    if encoder not in JPEG_ENCODERS:
        raise GanDeployError("unknown JPEG encoder", repr(encoder), expected=" or ".join(JPEG_ENCODERS))
    if encoder == "cpu":
        return
    if fmt != "jpg":
        raise GanDeployError("a GPU JPEG encoder for another format", f"--format {fmt}", expected="--format jpg",
                             hint="drop --jpeg-encoder cuda, or write JPEG")
    if sink == "array":
        raise GanDeployError("the array sink stores raw pixels", "--sink array", expected="--sink folder or tar")
    if backend is not None and backend not in TORCH_BACKENDS:
        raise GanDeployError("a GPU JPEG encoder needs the pixels on the GPU", f"backend {backend}", expected="backend eager or compile",
                             hint="use a checkpoint with --backend eager (or compile) --device cuda, or --jpeg-encoder cpu")
    if device is not None and not device.startswith("cuda"):
        raise GanDeployError("a GPU JPEG encoder needs a CUDA device", f"device {device}", expected="cuda",
                             hint="run on a machine with an NVIDIA GPU (--device cuda), or use --jpeg-encoder cpu")
    if channels != 3:
        raise GanDeployError("torchvision's GPU JPEG encoder takes RGB images only", f"{channels} channel(s)", expected="3 channels",
                             hint="use --jpeg-encoder cpu for grayscale images")


class DeviceJpegEncoder:
    """Encodes a batch of device pixels, uint8 [B, H, W, 3], into B JPEG files, with one device-to-host copy."""

    def __init__(self, quality: int = JPEG_QUALITY):
        try:
            import torch
            from torchvision.io import encode_jpeg
        except ImportError as e:
            raise GanDeployError("--jpeg-encoder cuda needs torchvision", str(e), expected="torchvision with CUDA (nvJPEG)",
                                 hint="pip install torchvision (the build matching your torch), or use --jpeg-encoder cpu") from None
        except RuntimeError as e:  # a torchvision built for another torch fails while registering its operators
            raise GanDeployError("torchvision does not load with this torch", str(e).splitlines()[0],
                                 expected=f"the torchvision build made for torch {torch.__version__}",
                                 hint="reinstall the matching torchvision, or use --jpeg-encoder cpu") from None
        self.torch, self.encode_jpeg, self.quality = torch, encode_jpeg, quality

    def encode(self, pixels: Any) -> Encoded:
        torch = self.torch
        images = list(pixels.permute(0, 3, 1, 2).contiguous().unbind(0))  # B x [3, H, W], each contiguous
        try:
            out = self.encode_jpeg(images, quality=self.quality)  # B x uint8 [length], on the images' device
        except RuntimeError as e:  # e.g. "torchvision not compiled with nvJPEG support"
            raise GanDeployError("the GPU JPEG encoder failed", str(e).splitlines()[0], expected="torchvision built with nvJPEG",
                                 hint="install torchvision's CUDA build, or use --jpeg-encoder cpu") from None
        lengths = np.fromiter((t.numel() for t in out), dtype=np.int64, count=len(out))
        flat = torch.cat(out).cpu().numpy()  # one copy to the host for the whole batch, not one per image
        ends = np.cumsum(lengths)
        starts = ends - lengths
        return Encoded([flat[a:b].tobytes() for a, b in zip(starts.tolist(), ends.tolist())])


__all__ = ["JPEG_ENCODERS", "JPEG_QUALITY", "DeviceJpegEncoder", "check_jpeg_encoder"]
