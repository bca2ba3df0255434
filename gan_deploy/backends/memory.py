"""How much memory a batch needs, estimated before it is allocated, and how much there is.

A batch of B images costs its latents (B x Z floats), its images (B x C x H x W floats, once per copy the caller
keeps) and the generator's activations (every intermediate tensor of one image, times B: a rough upper bound,
since runtimes reuse buffers). `check_batch_fits` refuses a batch that would not fit with the largest that would,
instead of an allocator's traceback (or the machine swapping) minutes into a run. `check_pixels_fit` does the same
for the uint8 pixels a bulk run keeps in flight on the host (generate's ring of batches), with the same free
memory (`available_bytes`) and the same share of it (`USABLE`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.hardware import USABLE  # the share of the free memory a batch may take: one figure for every bound

if TYPE_CHECKING:
    from gan_deploy.artifacts.artifact import Artifact

FLOAT = 4  # bytes per float32


def activation_bytes_per_image(artifact: "Artifact") -> int:
    """Bytes of every intermediate tensor of one image (float32): from the PyTorch module's layers for a
    checkpoint, from ONNX shape inference for an ONNX file; otherwise (an engine) 8 images' worth."""
    image = FLOAT * artifact.spec.channels * artifact.spec.height * artifact.spec.width
    try:
        if artifact.kind == "checkpoint":
            return max(_torch_activations(artifact), image)
        if artifact.kind == "onnx":
            return max(_onnx_activations(artifact), image)
    except GanDeployError:
        raise
    except Exception:  # an estimate: a model it cannot trace gets the fallback, never an error
        pass
    return 8 * image


def _torch_activations(artifact: "Artifact") -> int:
    import torch

    module = artifact.torch_module()
    total = 0

    def hook(_m, _inp, out) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    leaves = [m for m in module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.inference_mode():
            module(torch.zeros(1, *artifact.spec.latent_shape))
    finally:
        for h in handles:
            h.remove()
    return total


def _onnx_activations(artifact: "Artifact") -> int:
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load_model_from_string(artifact.onnx_bytes()))
    size = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.UINT8: 1, onnx.TensorProto.INT8: 1,
            onnx.TensorProto.INT64: 8, onnx.TensorProto.INT32: 4, onnx.TensorProto.BFLOAT16: 2}
    batch = artifact.spec.fixed_batch or 1
    total = 0
    for vi in list(model.graph.value_info) + list(model.graph.output):
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if not dims or any(d is None for d in dims[1:]):
            continue
        n = 1
        for d in dims[1:]:
            n *= int(d)  # type: ignore[arg-type]
        if dims[0] is not None and dims[0] != batch:
            n *= int(dims[0])  # a tensor without the batch axis (a weight reshaped at run time): counted once
        total += n * size.get(t.elem_type, 4)
    return total


def batch_bytes(artifact: "Artifact", batch: int, image_copies: int = 1, activation_copies: int = 1) -> int:
    """Estimated bytes for one batch: latents, `image_copies` float32 image arrays, `activation_copies` models' activations."""
    s = artifact.spec
    per_image = FLOAT * (s.latent_dim + image_copies * s.channels * s.height * s.width)
    return batch * (per_image + activation_copies * activation_bytes_per_image(artifact))


def available_bytes(device: str = "cpu") -> int | None:
    """Free memory where the batch will live: the GPU's free memory for cuda[:N]; else the host's available memory
    (MemAvailable), lowered to what a cgroup limit leaves. None when it cannot be read."""
    if device.startswith("cuda"):
        try:
            import torch
            free, _ = torch.cuda.mem_get_info(torch.device(device))
            return int(free)
        except Exception:
            return None
    from gan_deploy.core.hardware import host_available_bytes

    return host_available_bytes()


def check_batch_fits(artifact: "Artifact", batch: int, device: str = "cpu", *, image_copies: int = 1,
                     activation_copies: int = 1, option: str = "--batch-size") -> int:
    """Refuse a batch size whose estimated memory exceeds what is free, naming the largest one that fits.
    Returns the estimate in bytes (0 when the free memory cannot be read: then nothing is refused)."""
    need = batch_bytes(artifact, batch, image_copies, activation_copies)
    free = available_bytes(device)
    if free is None:
        return 0
    room = int(free * USABLE)
    if need > room:
        per = max(batch_bytes(artifact, 1, image_copies, activation_copies), 1)
        top = room // per
        where = "GPU" if device.startswith("cuda") else "host"
        raise GanDeployError(f"{option} {batch} needs more memory than is free", f"about {_gib(need)} for batch {batch} "
                             f"({_gib(per)} per image: latents, images and the model's activations); {_gib(free)} free on the {where}",
                             expected=f"{option} <= {top:,}" if top >= 1 else "a machine with more free memory",
                             hint=f"use {option} {_round_down(top)} or smaller" if top >= 1 else "free memory or use a smaller model")
    return need


def pixel_bytes_per_image(shape: tuple[int, int, int], latent_dim: int, slots: int) -> int:
    """Host memory one image of a batch costs in a bulk run: its uint8 pixels in each of `slots` ring slots and in
    the backend's result, the float32 image and the conversion's temporaries (about 3 float32 copies), and its
    latent's temporaries."""
    h, w, c = shape
    return h * w * c * (slots + 1 + 12) + 48 * latent_dim


def check_pixels_fit(batch_size: int, shape: tuple[int, int, int], latent_dim: int, slots: int, avail: int | None = None) -> int:
    """The number of ring slots (<= slots, >= 2) whose pixels fit in USABLE of the host's free memory (`avail`
    bytes, default `available_bytes()`), or a one-line error naming the largest batch that fits."""
    avail = available_bytes("cpu") if avail is None else avail
    if avail is None:
        return slots
    budget = avail * USABLE
    for s in range(slots, 1, -1):
        if batch_size * pixel_bytes_per_image(shape, latent_dim, s) <= budget:
            return s
    largest = int(budget // pixel_bytes_per_image(shape, latent_dim, 2))
    need = batch_size * pixel_bytes_per_image(shape, latent_dim, 2)
    h, w, c = shape
    raise GanDeployError("batch too large for this machine's memory",
                         f"{batch_size} images of {h}x{w}x{c} need {need / 2**30:.1f} GiB in flight, {avail / 2**30:.1f} GiB available",
                         expected=f"a batch size of at most {largest}" if largest else "a smaller image", hint="lower the batch size")


def _round_down(n: int) -> int:
    """A friendly batch size at most n: the largest power of two."""
    return 1 << (max(n, 1).bit_length() - 1)


def _gib(n: float) -> str:
    from gan_deploy.core.hardware import gib

    return gib(n)
