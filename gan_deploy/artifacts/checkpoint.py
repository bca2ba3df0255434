"""Generator checkpoints: weights in safetensors, a JSON sidecar with everything needed to rebuild them.

    models/digits_dcgan.safetensors   # the EMA generator's state dict (no pickle anywhere)
    models/digits_dcgan.json          # {"format": ..., "generator": GeneratorConfig, "train": ..., "weights_sha256": ...}
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads only when weights are read or written: describing a checkpoint needs none
    import torch

from gan_deploy.artifacts.factory import FactoryRef
from gan_deploy.artifacts.spec import GeneratorSpec, check_spec_bounds
from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import atomic_path, atomic_write_text, sha256_file
from gan_deploy.core.resources import DEFAULT_GENERATOR, asset_path
from gan_deploy.nets.config import FORMAT_VERSION, GeneratorConfig, dumps

FORMAT = "gan-deploy-generator"
DEFAULT_CHECKPOINT = asset_path(DEFAULT_GENERATOR)  # shipped in the wheel: gan_deploy/assets/


@dataclass
class Checkpoint:
    path: Path  # the .safetensors file
    config: GeneratorConfig | None  # our own architectures; None for a user's generator (then `factory`)
    meta: dict[str, Any] = field(default_factory=dict)  # the whole JSON sidecar
    sha256: str = ""
    factory: FactoryRef | None = None  # `export --factory`: how to rebuild the user's module
    spec: GeneratorSpec | None = None  # the contract, when there is no config to derive it from

    def build(self) -> torch.nn.Module:
        """The generator in eval mode, weights loaded."""
        return load_generator(self)


def sidecar_of(weights: Path) -> Path:
    return weights.with_suffix(".json")


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: GeneratorConfig,
                    train: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Checkpoint:
    """Write `<path>.safetensors` and its `.json` sidecar, each atomically."""
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "generator": config.to_dict(),
        "train": train or {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "weights_sha256": sha256_file(path),
        **(extra or {}),
    }
    atomic_write_text(sidecar_of(path), dumps(meta) + "\n")
    return Checkpoint(path, config, meta, meta["weights_sha256"])


FACTORY_FORMAT_VERSION = 2  # sidecars with "factory" instead of "generator"


def save_factory_checkpoint(path: str | Path, model: torch.nn.Module, fref: FactoryRef, spec: GeneratorSpec,
                            weights_parent_sha256: str = "") -> Path:
    """The user's generator as weights + a sidecar that names its factory (`export --factory` writes it)."""
    import dataclasses

    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "format_version": FACTORY_FORMAT_VERSION, "factory": fref.to_dict(),
            "spec": {**dataclasses.asdict(spec), "value_range": list(spec.value_range)},
            "weights_parent_sha256": weights_parent_sha256,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "weights_sha256": sha256_file(path)}
    atomic_write_text(sidecar_of(path), dumps(meta) + "\n")
    return path


def resolve_checkpoint(path: str | Path | None) -> Path:
    """Accept the .safetensors file, its .json sidecar, or a folder holding exactly one checkpoint."""
    if path is None:
        if not DEFAULT_CHECKPOINT.exists():
            raise GanDeployError("no default generator found", str(DEFAULT_CHECKPOINT), hint="pass --checkpoint PATH, or run `gan-deploy train` to make one")
        return DEFAULT_CHECKPOINT
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.safetensors"))
        if len(found) != 1:
            raise GanDeployError("folder must hold exactly one .safetensors checkpoint", f"{p} holds {len(found)}", hint="pass the .safetensors file itself")
        p = found[0]
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    if not p.exists():
        raise GanDeployError("checkpoint not found", str(p), hint="check the path, or run `gan-deploy train`")
    if p.suffix != ".safetensors":
        raise GanDeployError("not a safetensors checkpoint", str(p), expected="a .safetensors file with a .json sidecar", hint="for an ONNX file use --onnx; for your own PyTorch generator use `gan-deploy export --factory`")
    return p


def read_checkpoint(path: str | Path | None = None) -> Checkpoint:
    """A checkpoint's description from its sidecar, every field checked (nothing is loaded)."""
    from gan_deploy.core.jsonio import field, read_document

    p = resolve_checkpoint(path)
    side = sidecar_of(p)
    if not side.exists():
        raise GanDeployError("checkpoint has no JSON sidecar", str(side), expected="the .json written beside the weights by `gan-deploy train`",
                             hint="a bare state dict can be exported with `gan-deploy export --factory MODULE:CLASS --weights FILE`")
    hint = "re-run `gan-deploy train` or restore the file"
    meta = read_document(side, FORMAT, FACTORY_FORMAT_VERSION, what="checkpoint sidecar", hint=hint)
    sha = field(meta, "weights_sha256", side, "checkpoint sidecar", kind="str", check=_is_sha256, expected="64 hex digits",
                hint=hint, required=False, default="")
    if "factory" in meta:
        return _factory_checkpoint(p, side, meta, sha)
    gen = field(meta, "generator", side, "checkpoint sidecar", kind="dict", expected="the generator config object", hint=hint)
    for key in ("train",):
        field(meta, key, side, "checkpoint sidecar", kind="dict", expected="a JSON object", hint=hint, required=False)
    cfg = GeneratorConfig.from_dict(gen, where=f"{side}: generator")
    return Checkpoint(p, cfg, meta, sha)


def _factory_checkpoint(p: Path, side: Path, meta: dict[str, Any], sha: str) -> Checkpoint:
    from gan_deploy.core.jsonio import field, is_int, is_number

    what, hint = "checkpoint sidecar", "re-run `gan-deploy export --factory ...`"
    f = field(meta, "factory", side, what, kind="dict", hint=hint)
    ref = field(f, "ref", side, what, kind="str", check=lambda v: ":" in v, expected="'module:callable' or 'file.py:Class'", hint=hint)
    kwargs = field(f, "kwargs", side, what, kind="dict", hint=hint, required=False, default={})
    src = field(f, "source_sha256", side, what, kind="str", check=lambda v: v == "" or _is_sha256(v), expected="64 hex digits",
                hint=hint, required=False, default="")
    s = field(meta, "spec", side, what, kind="dict", hint=hint)
    dims = {k: field(s, k, side, what, kind="int", check=lambda v: 1 <= v <= 65536, expected="an integer in 1..65536", hint=hint)
            for k in ("latent_dim", "channels", "height", "width")}
    rank = field(s, "latent_rank", side, what, kind="int", check=lambda v: v in (2, 4), expected="2 or 4", hint=hint)
    vr = field(s, "value_range", side, what, kind="list", check=lambda v: len(v) == 2 and all(is_number(x) for x in v) and v[1] > v[0],
               expected="[lo, hi] with lo < hi", hint=hint)
    if dims["channels"] not in (1, 3) or not all(is_int(v) for v in dims.values()):
        raise GanDeployError(f"{what} field is invalid", f"{side}: spec.channels={dims['channels']}", expected="1 or 3", hint=hint)
    spec = GeneratorSpec(dims["latent_dim"], dims["channels"], dims["height"], dims["width"], (float(vr[0]), float(vr[1])), rank)
    check_spec_bounds(spec, f"{side}: spec", hint=hint)
    return Checkpoint(p, None, meta, sha, FactoryRef(ref, kwargs, src), spec)


def _is_sha256(v: str) -> bool:
    return len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def load_generator(ck: Checkpoint | str | Path | None = None, verify_hash: bool = True) -> torch.nn.Module:
    """Build the generator from its config and load its weights; refuse a foreign or damaged file."""
    from safetensors.torch import load_file

    from gan_deploy.nets.networks import build_generator

    if not isinstance(ck, Checkpoint):
        ck = read_checkpoint(ck)
    if verify_hash and ck.sha256:
        actual = sha256_file(ck.path)
        if actual != ck.sha256:
            raise GanDeployError("checkpoint weights do not match their sidecar", f"{ck.path} sha256 {actual[:12]}", expected=f"{ck.sha256[:12]} as recorded in {sidecar_of(ck.path).name}", hint="the weights were replaced or damaged; restore them or retrain")
    try:
        state = load_file(str(ck.path))
    except Exception as e:  # safetensors raises its own error types across versions
        raise GanDeployError("corrupt or unreadable safetensors file", f"{ck.path} ({e})", hint="restore the file or retrain") from None
    if ck.factory is not None:
        from gan_deploy.artifacts.factory import build

        model = build(ck.factory)  # refuses a source file changed since the export
    else:
        assert ck.config is not None  # read_checkpoint gives a checkpoint a config or a factory
        model = build_generator(ck.config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise GanDeployError("checkpoint does not fit the architecture in its config", f"{ck.path.name}: {first}", expected=(f"weights of a {ck.config.arch} generator with {ck.config.to_dict()}" if ck.config else f"weights of {ck.factory.ref}"), hint="the weights were saved by a different architecture; pair them with their own .json") from None
    return model.eval()
