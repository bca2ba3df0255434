"""Bad input, table-driven: every case is a command line, the files it is given, and the one-line error it must give.

Each case runs the CLI (in-process; a few in a subprocess with a memory cap) in a fresh folder holding copies of the
tiny test generator, and asserts: exit code 2, exactly one `Error:` line containing the expected fragment, no
traceback, and no file created, changed or removed outside what the command may write (a snapshot of the folder
before and after). Cases whose fix belongs to another part of the code base are marked xfail(strict=False) with the
branch that fixes them, so they turn green when it is merged.
"""
from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

# -- building bad files -----------------------------------------------------------------------------------------


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj))


def sidecar(edit: Callable[[dict], None], name: str = "bad") -> Callable[[Path], None]:
    """A copy of the tiny checkpoint as NAME.safetensors whose sidecar was edited by `edit(d)`."""
    def setup(d: Path) -> None:
        shutil.copy(d / "tiny.safetensors", d / f"{name}.safetensors")
        meta = _json(d / "tiny.json")
        edit(meta)
        _dump(d / f"{name}.json", meta)
    return setup


def gen_field(key: str, value: Any) -> Callable[[Path], None]:
    return sidecar(lambda m: m["generator"].__setitem__(key, value))


def top_field(key: str, value: Any) -> Callable[[Path], None]:
    return sidecar(lambda m: m.__setitem__(key, value))


def sidecar_text(text: str | bytes) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        shutil.copy(d / "tiny.safetensors", d / "bad.safetensors")
        (d / "bad.json").write_bytes(text.encode() if isinstance(text, str) else text)
    return setup


def factory_sidecar(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    """A factory checkpoint (what `export --factory` writes beside the ONNX) with its sidecar edited."""
    def setup(d: Path) -> None:
        write_factory(d)
        from gan_deploy.export.onnx import onnx_from_factory
        onnx_from_factory("gen.py:G", d / "fac.onnx")
        meta = _json(d / "fac.json")
        edit(meta)
        _dump(d / "fac.json", meta)
    return setup


def onnx_meta(**kv: str) -> Callable[[Path], None]:
    """A copy of the tiny ONNX file as bad.onnx with gan_deploy.<key> metadata set (dots as __ in the key)."""
    def setup(d: Path) -> None:
        import onnx
        m = onnx.load(d / "tiny.onnx")
        props = {p.key: p.value for p in m.metadata_props}
        props.update({"gan_deploy." + k.replace("__", "."): v for k, v in kv.items()})
        del m.metadata_props[:]
        for k, v in props.items():
            e = m.metadata_props.add()
            e.key, e.value = k, v
        onnx.save(m, d / "bad.onnx")
    return setup


def graph(name: str = "bad.onnx", batch: Any = "N", out_batch: Any = None, reshape=(-1, 1, 8, 8), declared=(1, 8, 8),
          z=8, act: str = "Tanh", external: str | None = None, meta: dict[str, str] | None = None,
          extra_input: bool = False, in_type: int | None = None, custom_op: bool = False, opset: int = 17) -> Callable[[Path], None]:
    """A hand-built ONNX generator: z [batch, Z] -> MatMul -> act -> Reshape(reshape) -> image [out_batch, *declared]."""
    def setup(d: Path) -> None:
        import onnx
        from onnx import TensorProto as T
        from onnx import helper as h
        from onnx import numpy_helper as nh

        w = nh.from_array(np.random.default_rng(0).standard_normal((z, 64)).astype(np.float32), "W")
        shape = nh.from_array(np.array(reshape, dtype=np.int64), "shape")
        nodes = [h.make_node("MatMul", ["z", "W"], ["a"]), h.make_node(act, ["a"], ["t"]),
                 h.make_node("Reshape", ["t", "shape"], ["image"])]
        if custom_op:
            nodes[1] = h.make_node("Frobnicate", ["a"], ["t"], domain="com.example")
        inputs = [h.make_tensor_value_info("z", in_type or T.FLOAT, [batch, z])]
        if extra_input:
            inputs.append(h.make_tensor_value_info("y", T.FLOAT, [batch, 2]))
        ob = batch if out_batch is None else out_batch
        g = h.make_graph(nodes, "g", inputs, [h.make_tensor_value_info("image", T.FLOAT, [ob, *declared])], [w, shape])
        imports = [h.make_opsetid("", opset)] + ([h.make_opsetid("com.example", 1)] if custom_op else [])
        m = h.make_model(g, opset_imports=imports)
        m.ir_version = 8
        for k, v in (meta or {}).items():
            e = m.metadata_props.add()
            e.key, e.value = k, v
        if external:
            onnx.save(m, d / name, save_as_external_data=True, all_tensors_to_one_file=True, location=external, size_threshold=0)
        else:
            onnx.save(m, d / name)
    return setup


def declared_only(inp: list, out: list, name: str = "bad.onnx") -> Callable[[Path], None]:
    """A graph that only declares shapes (its output is a constant): what load-time checks see, before any run."""
    def setup(d: Path) -> None:
        import onnx
        from onnx import TensorProto as T
        from onnx import helper as h
        from onnx import numpy_helper as nh

        c = nh.from_array(np.zeros((1, 1, 1, 1), dtype=np.float32), "c")
        g = h.make_graph([h.make_node("Identity", ["c"], ["image"])], "g", [h.make_tensor_value_info("z", T.FLOAT, inp)],
                         [h.make_tensor_value_info("image", T.FLOAT, out)], [c])
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.save(m, d / name)
    return setup


def relocate(name: str, location: str) -> Callable[[Path], None]:
    """Point every external tensor of an ONNX file at `location` (onnx.save refuses to write such a path itself)."""
    def setup(d: Path) -> None:
        import onnx
        m = onnx.load(d / name, load_external_data=False)
        moved = set()
        for t in m.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    if e.value not in moved:
                        shutil.move((d / name).parent / e.value, ((d / name).parent / location).resolve())
                        moved.add(e.value)
                    e.value = location
        (d / name).write_bytes(m.SerializeToString())
    return setup


def then(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        for s in steps:
            s(d)
    return setup


def write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return setup


def mkdir(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).mkdir(parents=True, exist_ok=True)


def link(target: str, name: str, hard: bool = False) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        (os.link if hard else os.symlink)(d / target if hard else target, d / name)
    return setup


def _generate_into(d: Path, out: str) -> None:
    from click.testing import CliRunner

    from gan_deploy.cli.main import main
    res = CliRunner().invoke(main, ["generate", "-n", "4", "-b", "4", "-c", str(d / "tiny.safetensors"), "--out", str(d / out)])
    assert res.exit_code == 0, res.output


def run_record(edit: Callable[[dict], None], folder: str = "done") -> Callable[[Path], None]:
    """A finished generate run in FOLDER whose generate.json was then edited by `edit(d)`."""
    def setup(d: Path) -> None:
        _generate_into(d, folder)
        rec = _json(d / folder / "generate.json")
        edit(rec)
        _dump(d / folder / "generate.json", rec)
    return setup


def record_field(key: str, value: Any) -> Callable[[Path], None]:
    return run_record(lambda r: r.__setitem__(key, value))


def manifest_row(row: str, folder: str = "done") -> Callable[[Path], None]:
    """A finished generate run in FOLDER with one more row appended to its manifest."""
    def setup(d: Path) -> None:
        _generate_into(d, folder)
        with open(d / folder / "manifest.csv", "a") as f:
            f.write(row + "\n")
    return setup


def policy(obj: Any, name: str = "p.json") -> Callable[[Path], None]:
    return write(name, json.dumps(obj))


FACTORY = '''import torch
import torch.nn as nn


class G(nn.Module):
    def __init__(self, latent_dim=4, side=8):
        super().__init__()
        self.latent_dim, self.side = latent_dim, side
        self.fc = nn.Linear(latent_dim, side * side)

    def forward(self, z):
        return torch.tanh(self.fc(z)).reshape(z.shape[0], 1, self.side, self.side)


class NoZ(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 64)

    def forward(self, z):
        return self.fc(z).reshape(z.shape[0], 1, 8, 8)


class Flat(nn.Module):
    latent_dim = 4

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 64)

    def forward(self, z):
        return self.fc(z)


def not_a_module():
    return 42
'''


def write_factory(d: Path) -> None:
    (d / "gen.py").write_text(FACTORY)


def state_dict(name: str, **kw: Any) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        import torch
        write_factory(d)
        sys.path.insert(0, str(d))
        try:
            import importlib
            mod = importlib.import_module("gen")
            importlib.reload(mod)
            torch.save(mod.G(**kw).state_dict(), d / name)
        finally:
            sys.path.remove(str(d))
            sys.modules.pop("gen", None)
    return setup


def pickled_module(name: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        import torch
        torch.save(torch.nn.Sequential(torch.nn.Linear(4, 64)), d / name)
    return setup


def torchscript(name: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        import torch
        torch.jit.save(torch.jit.script(torch.nn.Linear(4, 64)), d / name)
    return setup


def engine(name: str = "bad", edit: Callable[[dict], None] | None = None, sidecar_text: str | None = None,
           engine_bytes: bytes = b"not really a plan", write_sidecar: bool = True) -> Callable[[Path], None]:
    """An engine file and the sidecar build-engine would write for it (built from tiny.onnx), then edited."""
    def setup(d: Path) -> None:
        from gan_deploy.artifacts.engine import RuntimeInfo, make_sidecar
        from gan_deploy.artifacts.load import load_artifact
        from gan_deploy.core.fileio import sha256_file

        (d / f"{name}.engine").write_bytes(engine_bytes)
        if not write_sidecar:
            return
        art = load_artifact(onnx=d / "tiny.onnx")
        side = make_sidecar(engine_sha256=hashlib.sha256(engine_bytes).hexdigest(), precision="fp16",
                            runtime=RuntimeInfo("10.13.0.35", "NVIDIA H100", "9.0"), profile=(1, 64, 256),
                            onnx_sha256=art.sha256, source={"kind": "onnx", "path": "tiny.onnx", "sha256": sha256_file(d / "tiny.onnx")},
                            spec=art.spec, generator=None, workspace_mib=1024, rebuild="gan-deploy build-engine --fp16")
        if edit:
            edit(side)
        (d / f"{name}.json").write_text(sidecar_text if sidecar_text is not None else json.dumps(side))
    return setup


def idx(name: str, dims: list[int], data: bytes | None = None, magic: bytes = bytes([0, 0, 8]), gz: bool = False) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        raw = magic + bytes([len(dims)]) + b"".join(struct.pack(">I", x) for x in dims)
        raw += data if data is not None else b""
        (d / name).write_bytes(gzip.compress(raw) if gz else raw)
    return setup


def npy(name: str, array: Any, allow_pickle: bool = False) -> Callable[[Path], None]:
    return lambda d: np.save(d / name, array, allow_pickle=allow_pickle)


def generated(folder: str = "imgs", rows: list[tuple] | None = None, manifest: bytes | None = None) -> Callable[[Path], None]:
    """A `generate`-style folder of PNGs (4 of the tiny generator's) with a manifest, optionally rewritten."""
    def setup(d: Path) -> None:
        from PIL import Image
        f = d / folder
        f.mkdir()
        for i in range(4):
            Image.fromarray(np.full((16, 16), 40 * i, dtype=np.uint8)).save(f / f"{i:06d}.png")
        lines = ["index,seed,file"] + [",".join(map(str, r)) for r in (rows or [(i, 0, f"{i:06d}.png") for i in range(4)])]
        (f / "manifest.csv").write_bytes(manifest if manifest is not None else ("\n".join(lines) + "\n").encode())
        Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(d / "outside.png")
    return setup


# -- the table --------------------------------------------------------------------------------------------------

OWNER = "fixed in the {} branch"


@dataclass
class Case:
    id: str
    args: str  # the command line after `gan-deploy`, split on spaces (paths relative to the case's folder)
    message: str  # a fragment of the one Error: line
    setup: Callable[[Path], None] | None = None
    writes: tuple[str, ...] = ()  # globs (relative) of what the command may create or change
    env: dict[str, str] = field(default_factory=dict)
    owner: str | None = None  # xfail(strict=False): the branch whose files hold the fix
    subprocess: bool = False  # run as a separate process with a memory cap (cases that could allocate or hang)
    timeout: float = 30.0  # seconds, for a subprocess case: an unfixed one may hang
    cpu_only: bool = False  # the error is "no GPU here": on a machine with one the command would just run


C = Case
GEN = "generate -n 4 -b 4 --out out"  # generate, with the folder it may write
OUT = ("out", "out/*")
# every case: a generator the command can load beside what it is given
CASES: list[Case] = [
    # --- 1. checkpoint sidecar fields (each through a command that loads checkpoints) ---
    C("ck-latent-dim-string", f"{GEN} -c bad.safetensors", "latent_dim='64'", gen_field("latent_dim", "64"), OUT),
    C("ck-latent-dim-bool", "bench -c bad.safetensors --backends eager", "latent_dim=True", gen_field("latent_dim", True)),
    C("ck-latent-dim-zero", "export -c bad.safetensors -o x.onnx", "latent_dim=0", gen_field("latent_dim", 0)),
    C("ck-latent-dim-float", "eval -c bad.safetensors -n 64", "latent_dim=8.5", gen_field("latent_dim", 8.5)),
    C("ck-latent-dim-huge", "quantize --int8 -c bad.safetensors", "latent_dim=", gen_field("latent_dim", 10**9)),
    C("ck-generator-null", f"{GEN} -c bad.safetensors", "generator=None", top_field("generator", None), OUT),
    C("ck-generator-number", "bench -c bad.safetensors --backends eager", "generator=5", top_field("generator", 5)),
    C("ck-generator-list", "export -c bad.safetensors -o x.onnx", "generator=[", top_field("generator", [1, 2])),
    C("ck-generator-missing", "triton-repo -c bad.safetensors --out repo", "'generator'", sidecar(lambda m: m.pop("generator"))),
    C("ck-value-range-equal", f"{GEN} -c bad.safetensors", "value_range=[0, 0]", gen_field("value_range", [0, 0]), OUT),
    C("ck-value-range-string", "bench -c bad.safetensors --backends eager", "value_range='ab'", gen_field("value_range", "ab")),
    C("ck-value-range-reversed", "export -c bad.safetensors -o x.onnx", "value_range=[1, -1]", gen_field("value_range", [1, -1])),
    C("ck-value-range-three", "eval -c bad.safetensors -n 64", "value_range=[0, 1, 2]", gen_field("value_range", [0, 1, 2])),
    C("ck-value-range-strings", "quantize --fp16 -c bad.safetensors", "value_range=['a', 'b']", gen_field("value_range", ["a", "b"])),
    C("ck-format-version-string", f"{GEN} -c bad.safetensors", "format_version='1'", top_field("format_version", "1"), OUT),
    C("ck-format-version-negative", "bench -c bad.safetensors --backends eager", "format_version=-1", top_field("format_version", -1)),
    C("ck-format-version-newer", "export -c bad.safetensors -o x.onnx", "newer gan-deploy", top_field("format_version", 99)),
    C("ck-format-version-float", "eval -c bad.safetensors -n 64", "format_version=1.0", top_field("format_version", 1.0)),
    C("ck-format-foreign", f"{GEN} -c bad.safetensors", "not a gan-deploy checkpoint sidecar", top_field("format", "other")),
    C("ck-width-huge", f"{GEN} -c bad.safetensors", "width=100000", gen_field("width", 100000), OUT),
    C("ck-width-times-size", "bench -c bad.safetensors --backends eager", "too large to build",
      sidecar(lambda m: m["generator"].update(width=4096, image_size=1024))),
    C("ck-mlp-too-large", "export -c bad.safetensors -o x.onnx", "too large to build",
      sidecar(lambda m: m["generator"].update(arch="mlp", width=4096, image_size=1024, channels=3))),
    C("ck-image-size-not-power", "eval -c bad.safetensors -n 64", "image_size=24", gen_field("image_size", 24)),
    C("ck-image-size-tiny", "quantize --int8 -c bad.safetensors", "image_size=2", gen_field("image_size", 2)),
    C("ck-arch-unknown", f"{GEN} -c bad.safetensors", "arch='resnet'", gen_field("arch", "resnet"), OUT),
    C("ck-channels-two", "bench -c bad.safetensors --backends eager", "channels=2", gen_field("channels", 2)),
    C("ck-unknown-key", "export -c bad.safetensors -o x.onnx", "unknown generator config keys", gen_field("depth", 3)),
    C("ck-train-not-object", "triton-repo -c bad.safetensors --out repo", "train=", top_field("train", "fast")),
    C("ck-sha-not-hex", f"{GEN} -c bad.safetensors", "weights_sha256=", top_field("weights_sha256", "xyz"), OUT),
    C("ck-sidecar-not-json", "bench -c bad.safetensors --backends eager", "not valid JSON", sidecar_text("{")),
    C("ck-sidecar-nan", "export -c bad.safetensors -o x.onnx", "not valid JSON", sidecar_text('{"format": NaN}')),
    C("ck-sidecar-list", "eval -c bad.safetensors -n 64", "not a gan-deploy checkpoint sidecar", sidecar_text("[1, 2]")),
    C("ck-sidecar-binary", f"{GEN} -c bad.safetensors", "unreadable", sidecar_text(b"\xff\xfe\x00\x81"), OUT),
    C("ck-sidecar-deep", "quantize --int8 -c bad.safetensors", "not valid JSON", sidecar_text("[" * 100000 + "]" * 100000)),
    C("ck-sidecar-is-folder", "bench -c bad.safetensors --backends eager", "not a regular file",
      then(lambda d: shutil.copy(d / "tiny.safetensors", d / "bad.safetensors"), mkdir("bad.json"))),
    C("ck-sidecar-huge", "export -c bad.safetensors -o x.onnx", "too large",
      then(lambda d: shutil.copy(d / "tiny.safetensors", d / "bad.safetensors"), write("bad.json", b" " * (17 << 20)))),
    C("ck-sidecar-missing", f"{GEN} -c bad.safetensors", "no JSON sidecar",
      lambda d: shutil.copy(d / "tiny.safetensors", d / "bad.safetensors"), OUT),
    C("ck-weights-replaced", "bench -c bad.safetensors --backends eager", "do not match their sidecar",
      then(sidecar(lambda m: None), write("bad.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "))),
    C("ck-weights-garbage", "export -c bad.safetensors -o x.onnx", "corrupt or unreadable safetensors",
      then(write("bad.safetensors", b"garbage!"),
           lambda d: _dump(d / "bad.json", {**_json(d / "tiny.json"), "weights_sha256": hashlib.sha256(b"garbage!").hexdigest()}))),
    C("ck-weights-other-arch", f"{GEN} -c bad.safetensors --backend eager", "does not fit the architecture",
      gen_field("width", 16), OUT),
    C("ck-not-found", "bench -c missing.safetensors", "checkpoint not found"),
    C("ck-folder-with-two", "export -c two -o x.onnx", "exactly one",
      then(mkdir("two"), lambda d: shutil.copy(d / "tiny.safetensors", d / "two/a.safetensors"),
           lambda d: shutil.copy(d / "tiny.safetensors", d / "two/b.safetensors"))),
    C("ck-wrong-suffix", f"{GEN} -c notes.txt", "not a safetensors checkpoint", write("notes.txt", "hi"), OUT),
    C("ck-factory-ref", "bench -c fac.safetensors --backends eager", "ref=", factory_sidecar(lambda m: m["factory"].update(ref="noref")),
      ("fac.*", "gen.py")),
    C("ck-factory-channels", f"{GEN} -c fac.safetensors", "channels", factory_sidecar(lambda m: m["spec"].update(channels=2)),
      ("fac.*", "gen.py", *OUT)),
    C("ck-factory-height", "bench -c fac.safetensors --backends eager", "height=100000",
      factory_sidecar(lambda m: m["spec"].update(height=100000)), ("fac.*", "gen.py")),
    C("ck-factory-gigapixel", "export -c fac.safetensors -o x.onnx", "out of bounds",
      factory_sidecar(lambda m: m["spec"].update(height=16384, width=16384, channels=3)), ("fac.*", "gen.py")),
    C("ck-factory-rank", f"{GEN} -c fac.safetensors", "latent_rank=3", factory_sidecar(lambda m: m["spec"].update(latent_rank=3)),
      ("fac.*", "gen.py", *OUT)),
    C("ck-factory-source-changed", f"{GEN} -c fac.safetensors --backend eager", "source code changed",
      then(factory_sidecar(lambda m: None), lambda d: (d / "gen.py").write_text(FACTORY + "\n# edited\n")), ("fac.*", "gen.py", *OUT)),
    C("ck-factory-kwargs-list", "bench -c fac.safetensors --backends eager", "kwargs=",
      factory_sidecar(lambda m: m["factory"].update(kwargs=[1])), ("fac.*", "gen.py")),

    # --- 1. ONNX metadata ---
    C("onnx-meta-range-not-json", f"{GEN} --onnx bad.onnx", "not valid JSON", onnx_meta(value_range="ab"), OUT),
    C("onnx-meta-range-equal", "bench --onnx bad.onnx", "value_range='[0, 0]'", onnx_meta(value_range="[0, 0]")),
    C("onnx-meta-range-arity", "eval --onnx bad.onnx -n 64", "value_range='[0, 1, 2]'", onnx_meta(value_range="[0, 1, 2]")),
    C("onnx-meta-range-nan", "quantize --int8 --onnx bad.onnx", "value_range", onnx_meta(value_range="[NaN, 1]")),
    C("onnx-meta-range-object", "triton-repo --onnx bad.onnx --out repo", "value_range", onnx_meta(value_range='{"lo": 0}')),
    C("onnx-meta-config-not-json", f"{GEN} --onnx bad.onnx", "not valid JSON", onnx_meta(generator="{not json"), OUT),
    C("onnx-meta-config-list", "bench --onnx bad.onnx", "JSON object", onnx_meta(generator="[1, 2]")),
    C("onnx-meta-config-disagrees", "eval --onnx bad.onnx -n 64", "disagrees with the graph",
      onnx_meta(generator='{"arch": "dcgan", "latent_dim": 9, "channels": 1, "image_size": 16, "width": 8}')),
    C("onnx-meta-config-width", f"{GEN} --onnx bad.onnx", "width=100000", onnx_meta(generator='{"width": 100000}'), OUT),
    C("onnx-meta-config-range-disagrees", "bench --onnx bad.onnx", "disagrees with the graph",
      onnx_meta(generator='{"latent_dim": 8, "image_size": 16, "width": 8, "value_range": [0, 1]}')),
    C("onnx-meta-precision", f"{GEN} --onnx bad.onnx", "precision='int4'", onnx_meta(precision="int4"), OUT),
    C("onnx-meta-parent-sha", "bench --onnx bad.onnx", "parent_sha256='xyz'", onnx_meta(parent_sha256="xyz")),
    C("onnx-meta-checkpoint-sha", "eval --onnx bad.onnx -n 64", "checkpoint_sha256", onnx_meta(checkpoint_sha256="12")),
    C("onnx-meta-parent-kind", f"{GEN} --onnx bad.onnx", "parent_kind='alien'", onnx_meta(parent_kind="alien"), OUT),
    C("onnx-meta-int8-target", "bench --onnx bad.onnx", "int8_target='bogus'", onnx_meta(int8_target="bogus")),
    C("onnx-meta-tolerance", "triton-repo --onnx bad.onnx --out repo", "export_max_abs_err", onnx_meta(export_max_abs_err="abc")),
    C("onnx-meta-tolerance-inf", f"{GEN} --onnx bad.onnx", "export_max_abs_err", onnx_meta(export_max_abs_err="inf"), OUT),
    C("onnx-meta-recipe", "bench --onnx bad.onnx", "not valid JSON", onnx_meta(recipe="{bad")),
    C("onnx-meta-gate", "eval --onnx bad.onnx -n 64", "precision.gate", onnx_meta(precision__gate="[1]")),
    C("onnx-meta-factory-kwargs", f"{GEN} --onnx bad.onnx", "not valid JSON", onnx_meta(factory_kwargs="[bad"), OUT),
    C("onnx-value-range-disagrees", f"{GEN} --onnx tiny.onnx --value-range 0,1", "disagrees with the ONNX metadata", None, OUT),

    # --- 2. ONNX graphs ---
    C("onnx-garbage", f"{GEN} --onnx bad.onnx", "corrupt or unreadable ONNX", write("bad.onnx", b"xx"), OUT),
    C("onnx-empty-file", "bench --onnx bad.onnx", "corrupt or unreadable ONNX", write("bad.onnx", b"")),
    C("onnx-is-folder", "eval --onnx bad.onnx -n 64", "is a directory", mkdir("bad.onnx")),
    C("onnx-missing", "bench --onnx missing.onnx", "ONNX file not found"),
    C("onnx-two-inputs", f"{GEN} --onnx bad.onnx", "2 inputs", graph(extra_input=True), OUT),
    C("onnx-int-input", "bench --onnx bad.onnx", "float32", graph(in_type=7)),
    C("onnx-rank3-output", "quantize --int8 --onnx bad.onnx", "expected shape", graph(declared=(8, 8), reshape=(-1, 8, 8))),
    C("onnx-two-channels", "triton-repo --onnx bad.onnx --out repo", "expected shape", graph(declared=(2, 4, 8), reshape=(-1, 2, 4, 8))),
    C("onnx-rank4-latent", f"{GEN} --onnx bad.onnx", "expected shape", declared_only(["N", 8, 2, 2], ["N", 1, 8, 8]), OUT),
    C("onnx-symbolic-height", "bench --onnx bad.onnx", "expected shape", declared_only(["N", 8], ["N", 1, "H", 8])),
    C("onnx-zero-batch", f"{GEN} --onnx bad.onnx", "impossible batch size", declared_only([0, 8], [0, 1, 8, 8]), OUT),
    C("onnx-batch-axes-disagree", "bench --onnx bad.onnx", "batch axes disagree", graph(batch=1, out_batch=2, reshape=(1, 1, 8, 8))),
    C("onnx-huge-latent", f"{GEN} --onnx bad.onnx", "out of bounds", declared_only(["N", 10**6], ["N", 1, 8, 8]), OUT),
    C("onnx-gigapixel", "bench --onnx bad.onnx", "out of bounds", declared_only(["N", 8], ["N", 3, 16384, 16384])),
    C("onnx-declares-8x8-returns-4x16", f"{GEN} --onnx bad.onnx", "another shape than it declares", graph(reshape=(-1, 1, 4, 16)), OUT),
    C("onnx-liar-bench", "bench --onnx bad.onnx --batch-sizes 2", "another shape than it declares", graph(reshape=(-1, 1, 4, 16))),
    C("onnx-liar-eval", "eval --onnx bad.onnx -n 64", "another shape than it declares", graph(reshape=(-1, 1, 4, 16))),
    C("onnx-external-missing", f"{GEN} --onnx bad.onnx", "external data file is missing",
      then(graph(external="bad.onnx.data"), lambda d: (d / "bad.onnx.data").unlink()), OUT),
    C("onnx-external-truncated", "bench --onnx bad.onnx", "too short",
      then(graph(external="bad.onnx.data"), lambda d: (d / "bad.onnx.data").write_bytes(b"\0" * 8))),
    C("onnx-external-outside", "eval --onnx sub/bad.onnx -n 64", "outside the model's folder",
      then(mkdir("sub"), graph(name="sub/bad.onnx", external="bad.onnx.data"), relocate("sub/bad.onnx", "../bad.onnx.data"))),
    C("onnx-custom-op", f"{GEN} --onnx bad.onnx", "onnxruntime cannot load the model", graph(custom_op=True), OUT),
    C("onnx-future-opset", "bench --onnx bad.onnx", "onnxruntime cannot load the model", graph(opset=99)),
    C("onnx-fixed-batch-quantize", "quantize --int8 --onnx bad.onnx", "fixed batch", graph(batch=1, reshape=(1, 1, 8, 8))),
    C("onnx-fixed-batch-triton", "triton-repo --onnx bad.onnx --out repo", "fixed batch", graph(batch=1, reshape=(1, 1, 8, 8))),
    C("onnx-backend-eager", f"{GEN} --onnx tiny.onnx --backend eager", "cannot run an ONNX file", None, OUT),
    C("onnx-backend-compile-bench", "bench --onnx tiny.onnx --backends compile", "cannot be benchmarked"),
    C("onnx-serve-eager", "serve --onnx tiny.onnx --backend eager", "cannot run an ONNX file"),

    # --- 1. engine sidecars ---
    C("engine-missing", f"{GEN} --engine missing.engine", "engine file not found", None, OUT),
    C("engine-no-sidecar", "bench --engine bad.engine", "no sidecar", engine(write_sidecar=False)),
    C("engine-sidecar-not-json", "eval --engine bad.engine -n 64", "not valid JSON", engine(sidecar_text="{")),
    C("engine-sidecar-precision", f"{GEN} --engine bad.engine", "precision", engine(edit=lambda s: s.update(precision="int4")), OUT),
    C("engine-sidecar-version-string", "bench --engine bad.engine", "format_version", engine(edit=lambda s: s.update(format_version="1"))),
    C("engine-file-replaced", f"{GEN} --engine bad.engine", "does not match its sidecar",
      then(engine(), write("bad.engine", b"another plan")), OUT),
    C("engine-profile", "bench --engine bad.engine", "profile", engine(edit=lambda s: s.update(profile={"min": 8, "opt": 4, "max": 2}))),
    C("engine-spec-incomplete", "eval --engine bad.engine -n 64", "spec", engine(edit=lambda s: s["spec"].pop("latent_dim"))),
    C("engine-source-path-number", f"{GEN} --engine bad.engine", "source", engine(edit=lambda s: s["source"].update(path=5)),
      OUT),
    C("engine-source-sha-not-hex", "bench --engine bad.engine", "source.sha256", engine(edit=lambda s: s["source"].update(sha256="xyz"))),
    C("engine-source-kind", "eval --engine bad.engine -n 64", "source.kind", engine(edit=lambda s: s["source"].update(kind="pickle"))),
    C("engine-source-changed", "bench --engine bad.engine", "has changed",
      then(engine(), lambda d: shutil.copy(d / "tiny.json", d / "tiny.onnx"))),
    C("engine-on-cpu", f"{GEN} --engine bad.engine --backend tensorrt", "tensorrt", engine(), OUT, cpu_only=True),
    # --- messages that point at the right thing: an engine where no GPU is, what to run instead ---
    C("engine-auto-on-cpu", f"{GEN} --engine bad.engine", "runs only on an NVIDIA GPU with TensorRT", engine(), OUT, cpu_only=True),
    C("engine-auto-on-cpu-names-source", "eval --engine bad.engine -n 64", "with --onnx FILE or -c FILE", engine(), cpu_only=True),
    C("engine-bench-on-cpu", "bench --engine bad.engine", "runs only on an NVIDIA GPU with TensorRT", engine(), cpu_only=True),
    C("engine-given-an-onnx", "triton-repo --engine tiny.onnx --out repo", "not a TensorRT engine: it is an ONNX file"),
    C("engine-given-a-checkpoint", f"{GEN} --engine tiny.safetensors", "pass it with -c/--checkpoint", None, OUT),
    C("engine-and-onnx", "bench --engine bad.engine --onnx tiny.onnx", "more than one generator", engine()),

    # --- 6. contradictory options ---
    C("ck-and-onnx", f"{GEN} -c tiny.safetensors --onnx tiny.onnx", "more than one generator", None, OUT),
    C("ck-and-onnx-bench", "bench -c tiny.safetensors --onnx tiny.onnx", "more than one generator"),
    C("value-range-with-checkpoint", f"{GEN} -c tiny.safetensors --value-range 0,1", "value range was given for a checkpoint", None, OUT),
    C("value-range-with-checkpoint-bench", "bench -c tiny.safetensors --value-range -1,1", "value range was given for a checkpoint"),
    C("value-range-with-checkpoint-quantize", "quantize --int8 -c tiny.safetensors --value-range 0,1", "value range was given"),
    C("threads-negative", f"{GEN} --onnx tiny.onnx", "GAN_DEPLOY_THREADS", None, OUT, env={"GAN_DEPLOY_THREADS": "-3"}),
    C("threads-word", "bench --onnx tiny.onnx --batch-sizes 1", "GAN_DEPLOY_THREADS", env={"GAN_DEPLOY_THREADS": "abc"}),
    C("threads-float", "eval --onnx tiny.onnx -n 64", "GAN_DEPLOY_THREADS", env={"GAN_DEPLOY_THREADS": "1.5"}),
    C("device-unknown", f"{GEN} -c tiny.safetensors --device tpu", "unknown device", None, OUT),
    C("device-cuda-none", "bench -c tiny.safetensors --device cuda", "CUDA", cpu_only=True),
    C("precision-on-onnxruntime", "eval --onnx tiny.onnx --backend onnxruntime --precision fp16 -n 64", "PyTorch backends only"),

    # --- 3/4. export: inputs as outputs, output checked before the work ---
    C("export-onto-weights", "export -c tiny.safetensors -o tiny.safetensors", "would overwrite an input"),
    C("export-onto-sidecar", "export -c tiny.safetensors -o tiny.json", "would overwrite an input"),
    C("export-onto-symlinked-weights", "export -c tiny.safetensors -o w.onnx", "would overwrite an input", link("tiny.safetensors", "w.onnx")),
    C("export-onto-hardlinked-sidecar", "export -c tiny.safetensors -o s.onnx", "would overwrite an input",
      link("tiny.json", "s.onnx", hard=True)),
    C("export-into-folder", "export -c tiny.safetensors -o dir.onnx", "is a directory", mkdir("dir.onnx")),
    C("export-under-a-file", "export -c tiny.safetensors -o tiny.json/x.onnx", "cannot write"),
    C("export-unwritable", "export -c tiny.safetensors -o /proc/gan-deploy/x.onnx", "cannot write"),
    C("export-opset-99", "export -c tiny.safetensors -o x.onnx --opset 99", "unsupported ONNX opset"),
    C("export-opset-16", "export -c tiny.safetensors -o x.onnx --opset 16", "--opset"),
    C("export-factory-ref", "export --factory nowhere -o x.onnx", "bad --factory"),
    C("export-factory-file-missing", "export --factory missing.py:G -o x.onnx", "factory file not found"),
    C("export-factory-attr-missing", "export --factory gen.py:Missing -o x.onnx", "not found in module", write_factory),
    C("export-factory-syntax-error", "export --factory broken.py:G -o x.onnx", "could not import", write("broken.py", "def (:\n")),
    C("export-factory-exits", "export --factory quits.py:G -o x.onnx", "could not import", write("quits.py", "import sys\nsys.exit(3)\n")),
    C("export-factory-module-missing", "export --factory no_such_pkg.mod:G -o x.onnx", "could not find the factory module"),
    C("export-kwargs-not-json", "export --factory gen.py:G --kwargs {x -o x.onnx", "--kwargs is not valid JSON", write_factory),
    C("export-kwargs-list", "export --factory gen.py:G --kwargs [1] -o x.onnx", "--kwargs must be a JSON object", write_factory),
    C("export-kwargs-wrong-arg", 'export --factory gen.py:G --kwargs {"depth":3} -o x.onnx', "the factory raised", write_factory),
    C("export-factory-no-out", "export --factory gen.py:G", "--out is required", write_factory),
    C("export-factory-not-module", "export --factory gen.py:not_a_module -o x.onnx", "did not return a torch.nn.Module", write_factory),
    C("export-factory-no-latent", "export --factory gen.py:NoZ -o x.onnx", "cannot tell the latent size", write_factory),
    C("export-factory-flat-output", "export --factory gen.py:Flat -o x.onnx", "does not map a latent batch", write_factory),
    C("export-latent-dim-huge", "export --factory gen.py:NoZ --latent-dim 100000000 -o x.onnx", "latent size out of range", write_factory),
    C("export-weights-pickled", "export --factory gen.py:G --weights whole.pth -o x.onnx", "pickled Python objects",
      then(write_factory, pickled_module("whole.pth"))),
    C("export-weights-torchscript", "export --factory gen.py:G --weights ts.pth -o x.onnx", "TorchScript",
      then(write_factory, torchscript("ts.pth"))),
    C("export-weights-missing", "export --factory gen.py:G --weights none.pth -o x.onnx", "weights file not found", write_factory),
    C("export-weights-garbage", "export --factory gen.py:G --weights junk.pth -o x.onnx", "could not read weights",
      then(write_factory, write("junk.pth", b"\x80\x02junk"))),
    C("export-weights-wrong-shape", "export --factory gen.py:G --weights w.pth -o x.onnx", "weights do not fit",
      state_dict("w.pth", side=4)),
    C("export-weights-are-out", "export --factory gen.py:G --weights w.onnx -o w.onnx", "would overwrite an input",
      state_dict("w.onnx")),
    C("export-torch-artifact-onto-weights", "export --factory gen.py:G --weights w.safetensors -o w.onnx",
      "would overwrite an input", then(write_factory, lambda d: shutil.copy(d / "tiny.safetensors", d / "w.safetensors"))),
    C("export-out-python", "export --factory gen.py:G -o gen.py", "file extension", write_factory),

    # --- 5/6. bench ---
    C("bench-backends-comma", "bench -c tiny.safetensors --backends ,", "no backend named"),
    C("bench-backends-unknown", "bench -c tiny.safetensors --backends fast", "unknown backend"),
    C("bench-eager-on-onnx", "bench --onnx tiny.onnx --backends eager", "cannot be benchmarked"),
    C("bench-batch-50M", "bench -c tiny.safetensors --backends onnxruntime --batch-sizes 50000000", "needs more memory"),
    C("bench-batch-50M-onnx", "bench --onnx tiny.onnx --batch-sizes 1,50000000", "needs more memory"),
    C("bench-gate-samples-huge", "bench -c tiny.safetensors --backends onnxruntime --batch-sizes 1 --gate-samples 1000000000",
      "needs more memory"),
    C("bench-batch-zero", "bench -c tiny.safetensors --batch-sizes 0", "integers >= 1"),
    C("bench-batch-word", "bench -c tiny.safetensors --batch-sizes 1,x", "comma-separated integers"),
    C("bench-variant-missing", "bench -c tiny.safetensors --backends eager --variant models/digits_dcgan.int8.onnx", "quantize --int8"),
    C("bench-variant-fp16-missing", "bench -c tiny.safetensors --backends eager --variant x.fp16.onnx", "quantize --fp16"),
    C("bench-variant-other-generator", "bench -c tiny.safetensors --backends eager --variant other.onnx", "another generator",
      graph(name="other.onnx")),
    C("bench-variant-garbage", "bench -c tiny.safetensors --backends eager --variant bad.onnx", "corrupt", write("bad.onnx", b"x")),
    C("bench-precisions-unknown", "bench -c tiny.safetensors --precisions fp8", "bad --precisions"),
    C("bench-precisions-empty", "bench -c tiny.safetensors --precisions ,", "bad --precisions"),
    C("bench-json-onto-checkpoint", "bench -c tiny.safetensors --backends eager --json tiny.safetensors", "would overwrite an input"),
    C("bench-json-onto-sidecar", "bench -c tiny.safetensors --backends eager --json tiny.json", "would overwrite an input"),
    C("bench-json-plot-same", "bench -c tiny.safetensors --backends eager --json r.out --plot r.out", "name the same file"),
    C("bench-plot-folder", "bench -c tiny.safetensors --backends eager --plot dir", "is a directory", mkdir("dir")),
    C("bench-json-under-file", "bench -c tiny.safetensors --backends eager --json tiny.json/r.json", "cannot write"),
    C("bench-threads-zero", "bench -c tiny.safetensors --threads 0", "--threads"),
    C("bench-iters-one", "bench -c tiny.safetensors --iters 1", "--iters"),
    C("bench-compile-mode", "bench -c tiny.safetensors --compile-mode turbo", "--compile-mode"),

    # --- generate (options; the pipeline's own defects are the generate branch's) ---
    C("gen-n-zero", "generate -c tiny.safetensors -n 0 --out out", "-n"),
    C("gen-batch-zero", "generate -c tiny.safetensors -b 0 --out out", "--batch-size"),
    C("gen-backend-unknown", "generate -c tiny.safetensors --backend fast --out out", "--backend"),
    C("gen-format-unknown", "generate -c tiny.safetensors --format gif --out out", "--format"),
    C("gen-shard-out-of-range", f"{GEN} -c tiny.safetensors --shard 3/2", "bad --shard", None, OUT),
    C("gen-shard-word", f"{GEN} -c tiny.safetensors --shard half", "bad --shard", None, OUT),
    C("gen-shard-empty", f"{GEN} -c tiny.safetensors --shard ", "bad --shard", None, OUT),  # split(" "): the last argument is ""
    C("gen-seed-negative", "generate -c tiny.safetensors --seed -1 --out out", "--seed"),
    C("gen-out-is-file", "generate -c tiny.safetensors -n 4 --out tiny.json", "is a file"),
    C("gen-out-not-empty", "generate -c tiny.safetensors -n 4 --out full", "not empty", write("full/keep.txt", "keep")),
    C("gen-backend-tensorrt-checkpoint", f"{GEN} -c tiny.safetensors --backend tensorrt", "tensorrt", None, OUT),
    C("gen-batch-100M", "generate -c tiny.safetensors -n 100000000 -b 100000000 --out out", "memory", None, OUT, subprocess=True, timeout=12),
    C("gen-grid-onto-checkpoint", f"{GEN} -c tiny.safetensors --grid tiny.safetensors", "overwrite", None, OUT),
    C("gen-json-onto-onnx", f"{GEN} --onnx tiny.onnx --json tiny.onnx", "overwrite", None, OUT),
    C("gen-grid-under-file", f"{GEN} -c tiny.safetensors --grid tiny.json/g.png", "cannot write", None, OUT),
    # an existing file that is not this command's input is still not a grid or a report to replace
    C("gen-grid-onto-another-model", f"{GEN} -c tiny.safetensors --grid other/m.onnx", "not a PNG image",
      then(mkdir("other"), lambda d: shutil.copy(d / "tiny.onnx", d / "other/m.onnx")), OUT),
    C("gen-json-onto-another-sidecar", f"{GEN} -c tiny.safetensors --json other/tiny.json", "not a JSON report",
      then(mkdir("other"), lambda d: shutil.copy(d / "tiny.safetensors", d / "other/tiny.safetensors"),
           lambda d: shutil.copy(d / "tiny.json", d / "other/tiny.json")), OUT),
    C("gen-grid-onto-text", f"{GEN} -c tiny.safetensors --grid notes.txt", "not a PNG image", write("notes.txt", "mine"), OUT),
    C("bench-json-onto-another-sidecar", "bench -c tiny.safetensors --backends eager --json other/tiny.json", "not a JSON report",
      then(mkdir("other"), lambda d: shutil.copy(d / "tiny.safetensors", d / "other/tiny.safetensors"),
           lambda d: shutil.copy(d / "tiny.json", d / "other/tiny.json"))),
    # every resource option has a bound from the machine or the work (issue 17): one line naming it, nothing written
    C("gen-writers-threads-100000", f"{GEN} -c tiny.safetensors --writers 100000 --writer-kind thread", "writer threads per core",
      None, OUT),
    C("gen-writers-processes-100000", f"{GEN} -c tiny.safetensors --writers 100000 --writer-kind process", "writer processes per core",
      None, OUT, subprocess=True, timeout=20),
    C("gen-writers-auto-100000", f"{GEN} -c tiny.safetensors --writers 100000", "too many writers", None, OUT),
    C("gen-n-past-index-range", "generate -c tiny.safetensors -n 10000000000000000000 --out out", "64-bit", None, OUT),
    C("gen-ray-workers-100000", f"{GEN} -c tiny.safetensors --executor ray --ray-workers 100000", "Ray workers per core", None, OUT),
    C("gen-threads-env-huge", f"{GEN} -c tiny.safetensors --backend onnxruntime", "GAN_DEPLOY_THREADS 100,000", None, OUT,
      env={"GAN_DEPLOY_THREADS": "100000"}),
    C("bench-threads-huge", "bench -c tiny.safetensors --backends onnxruntime --threads 100000", "threads per core"),
    C("eval-batch-huge", "eval -c tiny.safetensors -n 200000000 --batch-size 200000000 --no-context --bootstrap 0",
      "--batch-size 200000000 needs more memory", subprocess=True, timeout=20),
    C("eval-n-huge", "eval -c tiny.safetensors -n 100000000000 --no-context --bootstrap 0", "-n 100000000000 needs more memory",
      subprocess=True, timeout=20),
    C("quantize-calib-huge", "quantize --int8 -c tiny.safetensors --calib-samples 2000000", "--calib-samples 2,000,000"),
    C("quantize-gate-huge", "quantize --int8 -c tiny.safetensors --gate-samples 2000000", "--gate-samples 2,000,000"),
    C("quantize-sensitivity-huge", "quantize --int8 -c tiny.safetensors --report --sensitivity-samples 2000000", "--sensitivity-samples"),
    C("gen-tar-shard-size-zero", f"{GEN} -c tiny.safetensors --sink tar --tar-shard-size 0", "--tar-shard-size", None, OUT),
    C("gen-unknown-option", f"{GEN} -c tiny.safetensors --bogus", "No such option", None, OUT),
    C("gen-resume-nothing", "generate --out empty --resume", "nothing to resume", mkdir("empty"), ("empty", "empty/*")),
    C("gen-out-dangling-symlink", "generate -n 4 -b 4 -c tiny.safetensors --out dang", "broken symlink", link("nowhere/x", "dang")),
    # --- 4. the run record (generate.json) read back by --resume: every field checked, one line naming it ---
    C("gen-record-n-string", "generate --out done --resume", "n='4'", record_field("n", "4")),
    C("gen-record-n-zero", "generate --out done --resume", "n=0", record_field("n", 0)),
    C("gen-record-seed-negative", "generate --out done --resume", "seed=-1", record_field("seed", -1)),
    C("gen-record-batch-float", "generate --out done --resume", "batch_size=4.0", record_field("batch_size", 4.0)),
    C("gen-record-fmt-unknown", "generate --out done --resume", "fmt='gif'", record_field("fmt", "gif")),
    C("gen-record-sink-number", "generate --out done --resume", "sink=3", record_field("sink", 3)),
    C("gen-record-sink-options-list", "generate --out done --resume", "sink_options=[]", record_field("sink_options", [])),
    C("gen-record-shard-string", "generate --out done --resume", "shard='0/1'", record_field("shard", "0/1")),
    C("gen-record-shard-out-of-range", "generate --out done --resume", "shard=[2, 1]", record_field("shard", [2, 1])),
    C("gen-record-stop-past-n", "generate --out done --resume", "stop=99", record_field("stop", 99)),
    C("gen-record-image-strings", "generate --out done --resume", "image=['16'", record_field("image", ["16", "16", "1"])),
    C("gen-record-range-reversed", "generate --out done --resume", "value_range=[1, -1]", record_field("value_range", [1, -1])),
    C("gen-record-backend-number", "generate --out done --resume", "backend=5", record_field("backend", 5)),
    C("gen-record-precision", "generate --out done --resume", "precision='fp8'", record_field("precision", "fp8")),
    C("gen-record-model-string", "generate --out done --resume", "model='tiny'", record_field("model", "tiny")),
    C("gen-record-model-sha-number", "generate --out done --resume", "sha256=12", run_record(lambda r: r["model"].update(sha256=12))),
    C("gen-record-model-path-list", "generate --out done --resume", "path=[", run_record(lambda r: r["model"].update(path=["x"]))),
    C("gen-record-n-missing", "generate --out done --resume", "'n'", run_record(lambda r: r.pop("n"))),
    C("gen-record-not-object", "generate --out done --resume", "not a gan-deploy generate run record",
      then(lambda d: _generate_into(d, "done"), write("done/generate.json", "[1]"))),
    # --- 4. manifest rows: an index that is not one of the run's is one line naming it ---
    C("gen-manifest-index-word", "generate --out done --resume", "row 'x,0,x.png'", manifest_row("x,0,x.png")),
    C("gen-manifest-index-negative", "generate --out done --resume", "index -1", manifest_row("-1,0,x.png")),
    C("gen-manifest-index-past-n", "generate --out done --resume", "index 4", manifest_row("4,0,000004.png")),
    C("gen-manifest-index-overflow", "generate --out done --resume", "row '99999999999999999999", manifest_row("99999999999999999999,0,x")),
    C("gen-resume-manifest-folder", "generate -n 4 -b 4 -c tiny.safetensors --out done --resume", "manifest",
      then(lambda d: _generate_into(d, "done"), lambda d: (d / "done/manifest.csv").unlink(), mkdir("done/manifest.csv")),
      ("done", "done/*")),

    # --- 6. eval --images: the manifest stays inside its folder; data sources ---
    C("eval-manifest-dotdot", "eval --images imgs --no-context --bootstrap 0", "outside its folder",
      generated(rows=[(0, 0, "../outside.png"), (1, 0, "000001.png")])),
    C("eval-manifest-absolute", "eval --images imgs --no-context --bootstrap 0", "outside its folder",
      lambda d: generated(rows=[(0, 0, str(d / "outside.png"))])(d)),
    C("eval-manifest-symlink-out", "eval --images imgs --no-context --bootstrap 0", "outside its folder",
      then(generated(rows=[(0, 0, "esc.png")]), lambda d: os.symlink(d / "outside.png", d / "imgs/esc.png"))),
    C("eval-manifest-empty-name", "eval --images imgs --no-context --bootstrap 0", "outside its folder", generated(rows=[(0, 0, "")])),
    C("eval-manifest-no-rows", "eval --images imgs --no-context --bootstrap 0", "lists no images", generated(manifest=b"index,seed,file\n")),
    C("eval-manifest-no-file-column", "eval --images imgs --no-context --bootstrap 0", "unreadable generate manifest",
      generated(manifest=b"a,b\n1,2\n")),
    C("eval-manifest-binary", "eval --images imgs --no-context --bootstrap 0", "unreadable generate manifest",
      generated(manifest=b"\xff\xfe\x00\x00garbage")),
    C("eval-manifest-missing-file", "eval --images imgs --no-context --bootstrap 0", "unreadable", generated(rows=[(0, 0, "999999.png")])),
    C("eval-images-and-checkpoint", "eval --images imgs -c tiny.safetensors", "--images and a generator", generated()),
    C("eval-images-against-backend", "eval --images imgs --against-backend eager", "needs a generator", generated()),
    C("eval-too-few", "eval -c tiny.safetensors -n 5", "too few images"),
    C("eval-json-onto-manifest", "eval --images imgs --json imgs/manifest.csv", "not a JSON report", generated()),
    C("eval-json-into-images", "eval --images imgs --json imgs/report.json", "into the scored --images folder", generated()),
    C("eval-json-onto-checkpoint", "eval -c tiny.safetensors -n 64 --json tiny.safetensors", "would overwrite an input"),
    C("eval-against-other-checkpoint", "eval --onnx other.onnx -c tiny.safetensors --against-backend eager -n 64 --no-context",
      "do not match", graph(name="other.onnx")),
    C("eval-reference-missing", "eval -c tiny.safetensors -n 64 --no-context --bootstrap 0 --reference nowhere", "data not found"),
    C("eval-reference-idx-zero", "eval -c tiny.safetensors -n 64 --no-context --bootstrap 0 --reference z-images-idx3-ubyte",
      "holds no items", idx("z-images-idx3-ubyte", [0, 28, 28])),
    C("eval-reference-idx-overflow", "eval -c tiny.safetensors -n 64 --no-context --bootstrap 0 --reference o-images-idx3-ubyte",
      "does not match its header", idx("o-images-idx3-ubyte", [1 << 21, 1 << 21, 1 << 22])),
    C("eval-reference-idx-overflow-gz", "eval -c tiny.safetensors -n 64 --no-context --bootstrap 0 --reference o-images-idx3-ubyte.gz",
      "declares more data", idx("o-images-idx3-ubyte.gz", [1 << 21, 1 << 21, 1 << 22], gz=True)),
    C("eval-reference-idx-max-dims", "eval -c tiny.safetensors -n 64 --no-context --bootstrap 0 --reference m-images-idx3-ubyte",
      "does not match its header", idx("m-images-idx3-ubyte", [0xFFFFFFFF] * 3)),
    C("eval-reference-idx-empty-dim", "eval -c tiny.safetensors -n 64 --no-context --bootstrap 0 --reference e-images-idx3-ubyte",
      "empty dimension", idx("e-images-idx3-ubyte", [5, 0, 28])),
    C("eval-reference-idx-magic", "eval -c tiny.safetensors -n 64 --no-context --bootstrap 0 --reference b-images-idx3-ubyte",
      "bad IDX magic", idx("b-images-idx3-ubyte", [1, 2, 2], bytes(4), magic=bytes([1, 0, 8]))),
    C("eval-reference-idx-short", "eval -c tiny.safetensors -n 64 --no-context --bootstrap 0 --reference s-images-idx3-ubyte",
      "truncated", write("s-images-idx3-ubyte", bytes([0, 0, 8, 3, 0]))),
    C("eval-reference-idx-labels", "eval -c tiny.safetensors -n 64 --no-context --bootstrap 0 --reference l-labels-idx1-ubyte",
      "does not hold images", idx("l-labels-idx1-ubyte", [3], bytes(3))),
    C("eval-reference-gz-corrupt", "eval -c tiny.safetensors -n 64 --no-context --bootstrap 0 --reference c-images-idx3-ubyte.gz",
      "unreadable or corrupt IDX", write("c-images-idx3-ubyte.gz", b"\x1f\x8bnot gzip at all")),
    C("eval-reference-npy-object", "eval -c tiny.safetensors -n 64 --no-context --bootstrap 0 --reference o.npy", "pickle",
      npy("o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)),
    C("eval-reference-npy-nan", "eval -c tiny.safetensors -n 64 --no-context --bootstrap 0 --reference n.npy", "NaN",
      npy("n.npy", np.full((4, 8, 8), np.nan, dtype=np.float32))),
    C("eval-reference-npy-shape", "eval -c tiny.safetensors -n 64 --no-context --bootstrap 0 --reference s.npy", "wrong shape",
      npy("s.npy", np.zeros((4, 5, 6, 7, 8), dtype=np.uint8))),
    C("eval-reference-npy-empty", "eval -c tiny.safetensors -n 64 --no-context --bootstrap 0 --reference e.npy", "no images",
      npy("e.npy", np.zeros((0, 8, 8), dtype=np.uint8))),
    C("eval-reference-npy-truncated", "eval -c tiny.safetensors -n 64 --no-context --bootstrap 0 --reference t.npy", "unreadable",
      lambda d: (np.save(d / "t.npy", np.zeros((64, 8, 8), dtype=np.uint8)), (d / "t.npy").write_bytes((d / "t.npy").read_bytes()[:200]))),
    C("eval-reference-folder-empty", "eval -c tiny.safetensors -n 64 --no-context --bootstrap 0 --reference empty", "empty data folder",
      mkdir("empty")),
    C("eval-reference-corrupt-image", "eval -c tiny.safetensors -n 64 --no-context --bootstrap 0 --reference pics", "corrupt image",
      write("pics/a.png", b"not a png")),

    # --- 3. quantize / build-engine (the precision branch owns their outputs) ---
    C("quantize-no-precision", "quantize -c tiny.safetensors", "choose exactly one precision"),
    C("quantize-two-precisions", "quantize --int8 --fp16 -c tiny.safetensors", "choose exactly one precision"),
    C("quantize-onto-input-onnx", "quantize --int8 --onnx tiny.onnx -o tiny.onnx", "would overwrite an input"),
    C("quantize-onto-sidecar", "quantize --int8 -c tiny.safetensors -o tiny.json --gate-samples 64 --calib-samples 16", "overwrite"),
    C("quantize-fp16-onto-sidecar", "quantize --fp16 -c tiny.safetensors -o tiny.json", "overwrite"),
    C("quantize-into-folder", "quantize --int8 -c tiny.safetensors -o dir", "is a directory", mkdir("dir")),
    C("quantize-calib-tiny", "quantize --int8 -c tiny.safetensors --calib-samples 1", "--calib-samples"),
    # --- 4. --policy files: each field checked (type, choice), one line naming the file and field ---
    C("quantize-policy-exclude-string", "quantize --int8 --onnx tiny.onnx --policy p.json", "exclude='conv'", policy({"exclude": "conv"})),
    C("quantize-policy-exclude-numbers", "quantize --int8 --onnx tiny.onnx --policy p.json", "exclude=[1, 2]", policy({"exclude": [1, 2]})),
    C("quantize-policy-reasons-number", "quantize --int8 --onnx tiny.onnx --policy p.json", "reasons=5", policy({"reasons": 5})),
    C("quantize-policy-method-list", "quantize --int8 --onnx tiny.onnx --policy p.json", "calib_method=['minmax']",
      policy({"calib_method": ["minmax"]})),
    C("quantize-policy-keep-number", "quantize --int8 --onnx tiny.onnx --policy p.json", "keep=16", policy({"keep": 16})),
    C("quantize-policy-source-object", "quantize --int8 --onnx tiny.onnx --policy p.json", "source={}", policy({"source": {}})),
    C("quantize-policy-report-recipe", "quantize --int8 --onnx tiny.onnx --policy p.json", "exclude=7",
      policy({"recipe": {"policy": {"exclude": 7}}})),
    # quantizing an INT8 model under the name quantize gives its output: the input is the culprit, not -o
    C("quantize-int8-of-int8-default-name", "quantize --int8 --onnx m.int8.onnx", "already reduced precision: m.int8.onnx (int8)",
      then(onnx_meta(precision="int8"), lambda d: (d / "bad.onnx").rename(d / "m.int8.onnx"))),
    C("quantize-fp16-of-int8", "quantize --fp16 --onnx m.int8.onnx", "already reduced precision: m.int8.onnx (int8)",
      then(onnx_meta(precision="int8"), lambda d: (d / "bad.onnx").rename(d / "m.int8.onnx"))),
    C("quantize-default-out-is-input", "quantize --fp16 --onnx f.fp16.onnx", "-o/--out (not given: its default) would overwrite",
      lambda d: shutil.copy(d / "tiny.onnx", d / "f.fp16.onnx")),
    C("quantize-garbage-onnx", "quantize --fp16 --onnx bad.onnx", "corrupt or unreadable ONNX", write("bad.onnx", b"\x00\x01")),
    C("build-engine-no-precision", "build-engine -c tiny.safetensors", "choose exactly one precision"),
    C("build-engine-on-cpu", "build-engine --fp16 -c tiny.safetensors", "cannot build a TensorRT engine here", cpu_only=True),

    # --- 3. triton-repo: replacement is atomic, inputs are never inside what it replaces ---
    C("triton-overwrite-own-input", "triton-repo --onnx repo/gan_generator/1/model.onnx --out repo --overwrite", "would overwrite an input",
      then(mkdir("repo/gan_generator/1"), lambda d: shutil.copy(d / "tiny.onnx", d / "repo/gan_generator/1/model.onnx"))),
    C("triton-overwrite-own-checkpoint", "triton-repo -c repo/m/ck.safetensors --name m --out repo --overwrite", "would overwrite an input",
      then(mkdir("repo/m"), lambda d: shutil.copy(d / "tiny.safetensors", d / "repo/m/ck.safetensors"),
           lambda d: shutil.copy(d / "tiny.json", d / "repo/m/ck.json"))),
    C("triton-exists", "triton-repo --onnx tiny.onnx --out repo", "already exists", write("repo/gan_generator/config.pbtxt", "old")),
    C("triton-out-is-file", "triton-repo --onnx tiny.onnx --out tiny.json", "is a file"),
    C("triton-out-under-file", "triton-repo --onnx tiny.onnx --out tiny.json/repo", "cannot write"),
    C("triton-name", "triton-repo --onnx tiny.onnx --out repo --name ../up", "bad model name"),
    C("triton-preferred", "triton-repo --onnx tiny.onnx --out repo --max-batch-size 8 --preferred-batch-sizes 16", "out of range"),
    C("triton-engine-missing", "triton-repo --engine none.engine --out repo", "engine file not found"),
    C("triton-model-path-is-file", "triton-repo --onnx tiny.onnx --out repo", "is a file", write("repo/gan_generator", "x")),
    C("triton-max-batch-zero", "triton-repo --onnx tiny.onnx --out repo --max-batch-size 0", "--max-batch-size"),
    C("triton-engine-profile", "triton-repo --engine bad.engine --out repo", "batch 1",
      engine(edit=lambda s: s.update(profile={"min": 2, "opt": 4, "max": 8}))),

    # --- the train branch's own (left to its owner) ---
    C("train-out-under-file", "train --out tiny.json/run --steps 1 --eval-every 0 --sample-every 0 --no-progress", "--out"),
    C("train-world-size-word", "train --out run --steps 1 --eval-every 0 --sample-every 0 --no-progress", "WORLD_SIZE", None,
      ("run", "run/*", "run/*/*"), env={"WORLD_SIZE": "abc"}),
]

IDS = [c.id for c in CASES]
assert len(IDS) == len(set(IDS)), "case ids must be unique"


# -- running a case ---------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root (files by size and content hash, folders and links by kind): what a command touched."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _allowed(rel: str, writes: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(rel, pat) for pat in writes)


@pytest.fixture
def case_dir(tmp_path, tiny_checkpoint, tiny_onnx, monkeypatch):
    d = tmp_path / "case"
    d.mkdir()
    shutil.copy(tiny_checkpoint, d / "tiny.safetensors")
    shutil.copy(tiny_checkpoint.with_suffix(".json"), d / "tiny.json")
    shutil.copy(tiny_onnx, d / "tiny.onnx")
    monkeypatch.chdir(d)
    return d


def _run(case: Case, d: Path) -> tuple[int, str]:
    args = case.args.split(" ")
    if case.subprocess:
        env = {**os.environ, **case.env, "PYTHONPATH": str(ROOT)}
        code = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
                "sys.argv = ['gan-deploy'] + sys.argv[1:]; runpy.run_module('gan_deploy', run_name='__main__')")
        try:
            r = subprocess.run([sys.executable, "-c", code, *args], cwd=d, env=env, capture_output=True, text=True,
                               timeout=case.timeout)
        except subprocess.TimeoutExpired:
            return -9, f"timed out after {case.timeout:g} s"
        return r.returncode, r.stdout + r.stderr
    from click.testing import CliRunner

    from gan_deploy.cli.main import main

    r = CliRunner().invoke(main, args, catch_exceptions=False, env=case.env)
    return r.exit_code, r.output


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.owner, strict=False)] if c.owner else [])
                                  for c in CASES])
def test_bad_input(case: Case, case_dir: Path):
    if case.cpu_only:
        import torch
        if torch.cuda.is_available():
            pytest.skip("the error is that no GPU is visible; this machine has one")
    if case.setup:
        case.setup(case_dir)
    before = snapshot(case_dir)
    code, output = _run(case, case_dir)
    after = snapshot(case_dir)
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert "Traceback" not in output, output
    assert code == 2, f"exit code {code}:\n{output}"
    assert len(errors) == 1, output
    assert case.message in errors[0], f"expected {case.message!r} in: {errors[0]}"
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k) and not _allowed(k, case.writes))
    assert not changed, f"changed outside what the command may write: {changed}"
    assert not [k for k in after if ".gan-deploy-tmp-" in k or ".gan-deploy-probe-" in k], "temporary files left"


def test_the_table_is_large_and_covers_every_command():
    from gan_deploy.cli.main import main

    assert len(CASES) >= 150
    covered = {c.args.split(" ")[0] for c in CASES}
    assert set(main.commands) <= covered, set(main.commands) - covered
