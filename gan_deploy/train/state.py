"""The run folder and the training state that `--resume` continues from.

    out/generator.safetensors + .json         the EMA generator (artifacts.checkpoint), written at the end
    out/samples/step_XXXXXXXX.png             sample grids
    out/metrics.jsonl                         one JSON record a line (append_jsonl, iter_metrics, trim_metrics)
    out/state/step_XXXXXXXX.safetensors       G, D, EMA, Adam moments, per-rank latent RNG states (tensors)
    out/state/step_XXXXXXXX.json              options, step, elapsed, optimizer and scaler settings (written last:
                                              a JSON means a complete pair); never pickle

Only the newest state is kept. A resumed run must keep the FIXED_ON_RESUME options and the number of processes.
"""
from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import atomic_path, atomic_write_text, sha256_file
from gan_deploy.core.outputs import check_writable_folder
from gan_deploy.train.distributed import Dist, all_gather_bytes
from gan_deploy.train.options import FIXED_ON_RESUME, TrainOptions

STATE_FORMAT = "gan-deploy-train-state"
STATE_VERSION = 1


# -- the run folder ----------------------------------------------------------------------------------------

def default_out(data: str, arch: str) -> Path:
    from gan_deploy.data.sources import dataset_name

    return Path("runs") / f"{dataset_name(data)}_{arch}"


def run_started(out: Path) -> bool:
    return any((out / name).exists() for name in ("generator.safetensors", "state", "metrics.jsonl"))


def check_out(out: Path, o: TrainOptions) -> Path | None:
    """Refuse to clobber a run (nothing is removed here); return the state file to resume from."""
    if out.exists() and not out.is_dir():
        raise GanDeployError("--out is a file", str(out), expected="a folder for the run", hint="pick another --out")
    check_writable_folder(out)  # e.g. under a file: said now, not as a traceback after the data is loaded
    if o.resume:
        latest = latest_state(out)
        if latest is None:
            raise GanDeployError("nothing to resume", str(out), expected="a run folder with a state/ checkpoint", hint="pass the run's --out folder, or drop --resume to start a new run")
        return latest
    if run_started(out) and not o.overwrite:
        what = "a finished run" if (out / "generator.safetensors").exists() else "an unfinished run"
        raise GanDeployError(f"run folder already holds {what}", str(out), expected="a new or empty folder", hint="add --resume to continue it, --overwrite to start over, or pick another --out")
    return None


def clear_run(out: Path) -> None:
    """--overwrite: remove only the files a run writes; a user's other files in the folder are left alone."""
    for name in ("generator.safetensors", "generator.json", "metrics.jsonl"):
        (out / name).unlink(missing_ok=True)
    for name in ("samples", "state"):
        shutil.rmtree(out / name, ignore_errors=True)


# -- metrics.jsonl ------------------------------------------------------------------------------------------

def append_jsonl(path: Path, rec: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")  # one write per record: a crash cannot leave half a record behind a whole one


def iter_metrics(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a metrics.jsonl (skipping a line cut short by a crash)."""
    for line in Path(path).read_text().splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


def trim_metrics(path: Path, step: int) -> None:
    """On resume, drop log records after the resumed step, so the log matches the weights.

    Eval records up to that step stay: they score weights the resumed run continues from (an eval at exactly
    `step` scored the same EMA weights the resumed run starts with). "end" records go: the run goes on."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(rec, dict) and rec.get("step", 0) <= step and rec.get("event", "eval") == "eval":
            keep.append(line)
    atomic_write_text(path, "".join(s + "\n" for s in keep))


# -- reading a saved state's options (--resume) ---------------------------------------------------------------

def latest_state(out: Path) -> Path | None:
    """The newest complete state checkpoint (its JSON is written last, so a JSON means a complete pair)."""
    found = sorted((out / "state").glob("step_*.json")) if (out / "state").is_dir() else []
    return found[-1] if found else None


_STATE_HINT = "delete the state/ folder's newest step_*.json to resume from an earlier checkpoint, or start over with --overwrite"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def read_state_meta(path: Path) -> dict[str, Any]:
    """A training state's JSON through the project's one validated reader, every field used later checked here
    (a hand-edited or truncated state ends in one line naming the field, never a KeyError or TypeError)."""
    from gan_deploy.core.jsonio import field, is_number, read_document

    what = "training state"
    meta = read_document(path, STATE_FORMAT, STATE_VERSION, what=what, hint=_STATE_HINT, version_key="version")

    def f(key: str, kind: str, **kw: Any) -> Any:
        return field(meta, key, path, what, kind=kind, hint=_STATE_HINT, **kw)

    f("step", "int", check=lambda v: v >= 0, expected="an integer >= 0")
    f("world_size", "int", check=lambda v: v >= 1, expected="an integer >= 1")
    f("elapsed_s", "number", check=lambda v: v >= 0, expected="a number of seconds >= 0")
    f("weights_sha256", "str", check=lambda v: bool(_SHA256.fullmatch(v)), expected="64 lowercase hex digits")
    f("device_type", "str", required=False)
    f("scalers", "dict")
    check_saved_options(f("options", "dict"), path)
    optimizers = f("optimizers", "dict")
    for name in ("G", "D"):
        o = field(optimizers, name, path, what, kind="dict", hint=_STATE_HINT, expected=f"optimizers.{name}: an object")
        groups = field(o, "param_groups", path, what, kind="list", hint=_STATE_HINT,
                       check=lambda v: bool(v) and all(isinstance(g, dict) for g in v), expected="a list of objects")
        for g in groups:
            for k in ("lr", "betas", "eps", "weight_decay"):
                if k in g and not (is_number(g[k]) or (k == "betas" and isinstance(g[k], list)
                                                       and len(g[k]) == 2 and all(is_number(b) for b in g[k]))):
                    raise GanDeployError(f"{what} field is invalid", f"{path}: optimizers.{name}.param_groups.{k}={g[k]!r}",
                                         expected="a finite number (betas: two)", hint=_STATE_HINT)
        state = field(o, "state", path, what, kind="dict", expected="an object of per-parameter states", hint=_STATE_HINT)
        for idx, st in state.items():
            if not (idx.isdigit() and isinstance(st, dict)):
                raise GanDeployError(f"{what} field is invalid", f"{path}: optimizers.{name}.state.{idx}",
                                     expected="parameter numbers mapping to objects", hint=_STATE_HINT)
    for k, s in meta["scalers"].items():
        if not isinstance(s, dict):
            raise GanDeployError(f"{what} field is invalid", f"{path}: scalers.{k}={s!r}", expected="an object", hint=_STATE_HINT)
    return meta


# An option's JSON kind from its annotation in TrainOptions (the saved options are the same dataclass's to_dict()).
_KINDS = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}


def check_saved_options(saved: dict[str, Any], where: Path) -> None:
    """Each saved option the trainer will use: present when it defines the model (FIXED_ON_RESUME) and of the
    type its TrainOptions field declares; ranges are TrainOptions' own checks (validate) once merged."""
    import dataclasses

    from gan_deploy.core.jsonio import is_number

    for fld in dataclasses.fields(TrainOptions):
        if fld.name not in saved:
            if fld.name in FIXED_ON_RESUME:
                raise GanDeployError("training state lacks a field", f"{where}: options.{fld.name}",
                                     expected="every option that defines the model", hint=_STATE_HINT)
            continue
        v = saved[fld.name]
        ann = str(fld.type).replace(" ", "").split("|")
        ok = (v is None and "None" in ann) or any(
            isinstance(v, _KINDS[a]) and (a == "bool" or not isinstance(v, bool)) and (a != "float" or is_number(v))
            for a in ann if a in _KINDS)
        if not ok:
            raise GanDeployError("training state field is invalid", f"{where}: options.{fld.name}={v!r}",
                                 expected=" or ".join(ann), hint=_STATE_HINT)


def same_setting(key: str, a: Any, b: Any) -> bool:
    """Equality for FIXED_ON_RESUME values; data paths compare by the file they name, however spelled."""
    if key == "data" and a != b:
        pa, pb = Path(str(a)).expanduser(), Path(str(b)).expanduser()
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    return a == b


def options_for_resume(given: dict[str, Any]) -> TrainOptions:
    """Options for `--resume`: the saved run's options, overlaid with those given explicitly.

    Changing an option that defines the model or its optimisation (FIXED_ON_RESUME) is refused; steps,
    device, amp, compile, deterministic, sample/checkpoint/log intervals and progress may change."""
    if given.get("overwrite"):  # both asked for: say so (merging below would silently drop --overwrite)
        raise GanDeployError("--resume and --overwrite contradict each other", "--resume --overwrite",
                             expected="one of them", hint="--resume continues the run in --out; --overwrite starts it over")
    data = given.get("data", TrainOptions.data)
    out = Path(given.get("out") or default_out(data, given.get("arch", TrainOptions.arch)))
    latest = latest_state(out)
    if latest is None:
        raise GanDeployError("nothing to resume", str(out), expected="a run folder with a state/ checkpoint", hint="pass the run's --out folder, or drop --resume to start a new run")
    saved = read_state_meta(latest)["options"]
    for k in FIXED_ON_RESUME:
        if k in given and given[k] is not None and not same_setting(k, given[k], saved.get(k)):
            raise GanDeployError(f"cannot change --{k.replace('_', '-')} when resuming", given[k], expected=f"{saved.get(k)!r} as in {latest.parent.parent}", hint="drop the option, or start a new run with --overwrite")
    merged = {**{k: v for k, v in saved.items() if k in TrainOptions.__dataclass_fields__}, **given}
    merged.update(out=str(out), resume=True, overwrite=False)
    return TrainOptions(**merged)


# -- optimizers <-> (tensors, JSON) ------------------------------------------------------------------------

def optim_split(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """optimizer.state_dict() -> (tensors for safetensors, the rest for JSON)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        rest[str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                rest[str(idx)][k] = v
    return tensors, {"param_groups": sd["param_groups"], "state": rest}


# How an optimizer runs its step, not what it computes: this run's choice, never the saved one. (The saved
# param_groups replace the optimizer's own in load_state_dict, so a CPU run resumed on CUDA would otherwise
# lose fused Adam, and a CUDA run resumed on the CPU would ask for it.)
_IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")


def optim_join(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str) -> None:
    """The inverse of optim_split: load the saved state into `opt`, each tensor placed as its step expects
    (place_optimizer_state)."""
    state: dict[int, dict[str, Any]] = {}
    for idx, rest in meta["state"].items():
        st = dict(rest)
        head = f"{prefix}.{idx}."
        st.update({k[len(head):]: v for k, v in tensors.items() if k.startswith(head)})
        state[int(idx)] = st
    groups = []
    for saved, current in zip(meta["param_groups"], opt.param_groups):
        g = dict(saved, betas=tuple(saved["betas"])) if "betas" in saved else dict(saved)
        g.update({k: current[k] for k in _IMPLEMENTATION_KEYS if k in current})
        groups.append(g)
    groups += meta["param_groups"][len(groups):]  # a count mismatch is load_state_dict's to report
    opt.load_state_dict({"state": state, "param_groups": groups})
    place_optimizer_state(opt)


def place_optimizer_state(opt: torch.optim.Optimizer) -> None:
    """Put every state tensor of `opt` where its step wants it.

    The tensors come back from safetensors on the CPU, contiguous (NCHW). load_state_dict moves them to their
    parameter's device and dtype, but not to its memory layout: a channels_last parameter then has NCHW
    moments, and fused Adam on CUDA refuses the step ("params, grads, exp_avgs, and exp_avg_sqs must have same
    dtype, device, and layout": its kernel checks strides too). So: a state tensor shaped like its parameter
    becomes a copy with the parameter's device, dtype (floating point) and strides (torch.empty_like); `step`
    goes to the parameter's device as float32 for fused or capturable Adam, and stays a CPU scalar otherwise
    (torch's convention for the plain and foreach implementations). Values are copied exactly: a resumed run
    continues bit for bit."""
    for group in opt.param_groups:
        step_on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            st = opt.state.get(p)
            if not st:
                continue
            for k, v in list(st.items()):
                if not torch.is_tensor(v):
                    continue
                if k == "step":
                    st[k] = (v.to(device=p.device, dtype=torch.float32) if step_on_device
                             else v.to(device="cpu"))
                elif v.shape == p.shape:
                    placed = torch.empty_like(p, dtype=p.dtype if v.is_floating_point() else v.dtype)
                    placed.copy_(v)
                    st[k] = placed
                else:
                    st[k] = v.to(device=p.device)


# -- save / load ---------------------------------------------------------------------------------------------

def save_state(out: Path, step: int, o: TrainOptions, G: nn.Module, D: nn.Module, ema: nn.Module,
               opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, scalers: dict[str, torch.amp.GradScaler],
               gen: torch.Generator, ctx: Dist, device: torch.device, elapsed: float) -> None:
    """Write state/step_N.safetensors then state/step_N.json (each atomic), then drop older checkpoints.

    Every rank must call it: the per-rank latent generator states are gathered to rank 0."""
    from safetensors.torch import save_file

    rng = all_gather_bytes(gen.get_state(), ctx, device)  # [world] x uint8 state
    if not ctx.main:
        return
    tensors: dict[str, torch.Tensor] = {}
    for prefix, m in (("G", G), ("D", D), ("EMA", ema)):
        tensors.update({f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in m.state_dict().items()})
    tg, mg = optim_split(opt_g, "optG")
    td, md = optim_split(opt_d, "optD")
    tensors.update(tg)
    tensors.update(td)
    for r, s in enumerate(rng):
        tensors[f"rng.latent.rank{r}"] = s
    stem = out / "state" / f"step_{step:08d}"
    weights = stem.with_suffix(".safetensors")
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": STATE_FORMAT})
    meta = {
        "format": STATE_FORMAT, "version": STATE_VERSION, "step": step, "world_size": ctx.world,
        "options": {k: v for k, v in o.to_dict().items()}, "elapsed_s": elapsed,
        "optimizers": {"G": mg, "D": md}, "scalers": {k: s.state_dict() for k, s in scalers.items()},
        "weights_sha256": sha256_file(weights), "torch": torch.__version__, "device_type": device.type,
    }
    atomic_write_text(stem.with_suffix(".json"), json.dumps(meta, indent=1, sort_keys=True) + "\n")
    for old in sorted((out / "state").glob("step_*.json")):
        if old != stem.with_suffix(".json"):
            old.unlink(missing_ok=True)
            old.with_suffix(".safetensors").unlink(missing_ok=True)


def load_state(path: Path, o: TrainOptions, G: nn.Module, D: nn.Module, ema: nn.Module,
               opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, scalers: dict[str, torch.amp.GradScaler],
               gen: torch.Generator, ctx: Dist) -> tuple[int, float]:
    """Restore everything save_state wrote into the freshly built objects; returns (step, elapsed seconds)."""
    from safetensors.torch import load_file

    meta = read_state_meta(path)
    saved = meta["options"]
    for k in FIXED_ON_RESUME:
        if not same_setting(k, getattr(o, k), saved.get(k)):
            raise GanDeployError(f"cannot change {k} when resuming", getattr(o, k), expected=f"{saved.get(k)!r} as saved in {path}", hint="drop the option, or start a new run with --overwrite")
    if meta["world_size"] != ctx.world:
        raise GanDeployError("resumed with a different number of processes", ctx.world, expected=f"{meta['world_size']} as when the state was saved", hint="the data sharding and per-rank latents depend on it; use the same torchrun --nproc-per-node")
    weights = path.with_suffix(".safetensors")
    if not weights.exists() or sha256_file(weights) != meta["weights_sha256"]:
        raise GanDeployError("training state weights missing or damaged", str(weights), expected=f"sha256 {meta['weights_sha256'][:12]}", hint="restore the file, or start over with --overwrite")
    t = load_file(str(weights))
    for prefix, m in (("G", G), ("D", D), ("EMA", ema)):
        m.load_state_dict({k[len(prefix) + 1:]: v for k, v in t.items() if k.startswith(prefix + ".")}, strict=True)
    try:  # read_state_meta checked the JSON's shape; whether it fits these networks only torch can say
        optim_join(opt_g, t, meta["optimizers"]["G"], "optG")
        optim_join(opt_d, t, meta["optimizers"]["D"], "optD")
        for k, s in scalers.items():
            if s.is_enabled() and meta["scalers"].get(k):
                s.load_state_dict(meta["scalers"][k])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise GanDeployError("training state does not fit this run's optimizers", f"{path} ({type(e).__name__}: {str(e)[:120]})",
                             expected="the optimizer state saved with these networks", hint=_STATE_HINT) from None
    try:
        gen.set_state(t[f"rng.latent.rank{ctx.rank}"])
    except RuntimeError:  # a CPU generator's state is ~5 kB, a CUDA one's 16 bytes: they do not convert
        raise GanDeployError("cannot resume on another kind of device", f"--device {o.device} ({gen.device.type})", expected=f"the kind of device the state was saved on ({meta.get('device_type', 'see ' + str(path))})", hint="resume with that --device; the latent random stream cannot move between CPU and GPU") from None
    return int(meta["step"]), float(meta["elapsed_s"])
