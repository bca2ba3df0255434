"""The TensorRT backend's runtime calls, checked against NVIDIA's real runtime classes, and the choice between
the full `tensorrt` module and the lean runtime (`tensorrt_lean`).

NVIDIA's lean-runtime wheel (`pip install tensorrt-lean-cu13==11.4.0.106`) imports without a GPU: its
classes (Runtime, ICudaEngine, IExecutionContext, ILogger, the enums) are real, only constructing a Runtime
needs a CUDA driver. So TensorRTRunner runs here against a fake `trt` module whose every attribute must
exist in the real module and whose objects stand for instances of the real classes: each attribute the
runner touches must exist on the real class, as the same kind (method or property), and each call must fit
one of the real pybind11 overloads (argument count and types), read from the real docstrings and from
../shared/trt-api/trt11.4_lean_runtime_signatures.txt. A misspelt or misused call fails here, not on a GPU.
"""
from __future__ import annotations

import collections.abc
import inspect
import json
import re
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import gan_deploy.backends.tensorrt as trt_backend
from gan_deploy.artifacts.engine import RuntimeInfo, artifact_from_engine, make_sidecar, sidecar_path
from gan_deploy.artifacts.spec import GeneratorSpec
from gan_deploy.core.errors import BackendUnavailable, GanDeployError, StaleArtifact
from gan_deploy.core.fileio import sha256_file


def _real_lean() -> tuple[Any, str | None]:
    try:
        import tensorrt_lean_bindings
    except Exception as e:  # not installed, or its libraries do not load
        return None, f"tensorrt_lean_bindings is not importable ({type(e).__name__}: {e}); pip install tensorrt-lean-cu13==11.4.0.106"
    return tensorrt_lean_bindings, None


REAL, LEAN_MISSING = _real_lean()
needs_lean = pytest.mark.skipif(REAL is None, reason=str(LEAN_MISSING))

SIGNATURES = Path(__file__).resolve().parents[1].parent / "shared" / "trt-api" / "trt11.4_lean_runtime_signatures.txt"
SPEC = GeneratorSpec(8, 1, 4, 4, (-1.0, 1.0), 2, "z", "image")
H100 = ("NVIDIA H100 80GB HBM3", "9.0")
PROFILE = (1, 4, 16)

# Everything TensorRTRunner (and the logger/runtime helpers) use on TensorRT's classes, by how they use it.
# test_the_runner_uses_exactly_these keeps this table equal to what the code really does.
USED = {
    ("Runtime", "__init__"): "method",
    ("Runtime", "engine_host_code_allowed"): "property",
    ("Runtime", "deserialize_cuda_engine"): "method",
    ("ICudaEngine", "create_execution_context"): "method",
    ("ICudaEngine", "num_io_tensors"): "property",
    ("ICudaEngine", "get_tensor_name"): "method",
    ("ICudaEngine", "get_tensor_mode"): "method",
    ("ICudaEngine", "get_tensor_dtype"): "method",
    ("ICudaEngine", "get_tensor_profile_shape"): "method",
    ("IExecutionContext", "set_input_shape"): "method",
    ("IExecutionContext", "set_tensor_address"): "method",
    ("IExecutionContext", "execute_async_v3"): "method",
    ("ILogger", "__init__"): "method",
    ("ILogger", "log"): "method",
    ("ILogger", "WARNING"): "member",
    ("ILogger", "ERROR"): "member",
    ("TensorIOMode", "INPUT"): "member",
    ("DataType", "FLOAT"): "member",
}


# -- pybind11 signatures -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    has_default: bool


_SIG = re.compile(r"^(?:\d+\.\s+)?(\w*)\((.*)\)\s*->\s*(.+)$")


def _split(params: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in params:
        if ch in "[(<":
            depth += 1
        elif ch in "])>":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def parse_signature(line: str) -> tuple[list[Param], str] | None:
    """"name(self: T, a: int, b: str = 'x') -> R" -> (params after self, return type); None for *args headers."""
    m = _SIG.match(line.strip())
    if not m or "*args" in m.group(2):
        return None
    params = []
    for p in _split(m.group(2))[1:]:  # the first is self (arg0 for property accessors)
        if p in ("/", "*"):
            continue
        name, _, rest = p.partition(":")
        typ, eq, _ = rest.partition("=")
        params.append(Param(name.strip(), typ.strip(), bool(eq)))
    return params, m.group(3).strip()


def overloads_from_doc(obj) -> list[tuple[list[Param], str]]:
    """The overloads pybind11 wrote into a function's docstring (first line, or the numbered ones)."""
    doc = getattr(obj, "__doc__", None) or ""
    sigs = [s for s in (parse_signature(line) for line in doc.splitlines() if _SIG.match(line.strip())) if s]
    return sigs


def signatures_file() -> dict[str, dict[str, tuple[str, list[tuple[list[Param], str]]]]]:
    """class -> member -> (kind, overloads) from the shared signatures file."""
    classes: dict[str, dict] = {}
    cls = member = None
    for line in SIGNATURES.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("class "):
            cls = line.split()[1]
            classes[cls] = {}
        elif line.startswith("      "):
            sig = parse_signature(line)
            if sig and cls and member:
                classes[cls][member][1].append(sig)
        elif line.startswith("  "):
            m = re.match(r"^\s+(\S+)\s+\[(\w+)\]", line)
            if m and cls:
                member = m.group(1)
                classes[cls][member] = (m.group(2), [])
    return classes


def _resolve(typ: str):
    """A type named in a signature -> the real class, or None when it is not one of the module's classes."""
    for prefix in ("tensorrt_lean_bindings.tensorrt_lean.", "trt."):
        if typ.startswith(prefix):
            obj = REAL
            for part in typ[len(prefix):].split("."):
                obj = getattr(obj, part, None)
            return obj if isinstance(obj, type) else None
    return None


def type_ok(typ: str, value) -> bool:
    typ = typ.strip()
    if typ == "str":
        return isinstance(value, str)
    if typ == "bool":
        return isinstance(value, bool)
    if typ in ("int", "typing.SupportsInt"):  # pybind11 would take anything with __index__; the runner passes ints
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if typ == "tuple":
        return isinstance(value, tuple)
    if typ == "list" or typ.startswith("list["):
        return isinstance(value, list)
    if typ.startswith("collections.abc.Sequence"):
        return isinstance(value, collections.abc.Sequence)
    if typ == "typing_extensions.Buffer":
        try:
            memoryview(value)
        except TypeError:
            return False
        return True
    if typ == "None":
        return value is None
    cls = _resolve(typ)
    if cls is not None:
        return isinstance(value, cls) or isinstance(value, Stub) and issubclass(value._cls, cls)
    return True  # a type this check does not model (nvinfer1::..., object, capsules)


def fits(overload: tuple[list[Param], str], args: tuple, kwargs: dict) -> bool:
    params, _ = overload
    if len(args) > len(params) or set(kwargs) - {p.name for p in params}:
        return False
    for p, a in zip(params, args):
        if not type_ok(p.type, a):
            return False
    for p in params[len(args):]:
        if p.name in kwargs:
            if not type_ok(p.type, kwargs[p.name]):
                return False
        elif not p.has_default:
            return False
    return True


# -- a fake `trt` module made of checked stand-ins for the real classes ------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, tuple]] = []  # (class, member, "call"|"get"|"set", args)
        self.errors: list[str] = []

    def fail(self, msg: str) -> None:
        self.errors.append(msg)
        raise AssertionError(msg)

    def used(self) -> set[tuple[str, str]]:
        return {(c, m) for c, m, _, _ in self.calls}


class Stub:
    """Stands for an instance of a real TensorRT class. Touching an attribute the real class lacks, calling a
    property, reading a method as a value, or calling with arguments no real overload takes: recorded and failed.
    Behaviour: `answers[name]` is the value of a property or a function giving a method's result."""

    def __init__(self, rec: Recorder, cls: type, answers: dict):
        object.__setattr__(self, "_rec", rec)
        object.__setattr__(self, "_cls", cls)
        object.__setattr__(self, "_answers", answers)
        object.__setattr__(self, "_set", {})

    def __getattr__(self, name: str):
        rec, cls = self._rec, self._cls
        real = getattr(cls, name, None)
        if real is None:
            rec.fail(f"{cls.__name__}.{name} does not exist in TensorRT")
        if name in self._set:
            return self._set[name]
        if isinstance(real, property):
            rec.calls.append((cls.__name__, name, "get", ()))
            value = self._answers[name]
            (_, ret), = overloads_from_doc(real.fget)
            assert type_ok(ret, value), f"the fake's {cls.__name__}.{name} is not a {ret}"
            return value
        if not callable(real):
            rec.fail(f"{cls.__name__}.{name} is neither a property nor a method")

        def method(*args, **kwargs):
            rec.calls.append((cls.__name__, name, "call", args))
            sigs = overloads_from_doc(real)
            if not any(fits(s, args, kwargs) for s in sigs):
                rec.fail(f"{cls.__name__}.{name}{args!r} fits none of {[[(p.name, p.type) for p in s[0]] for s in sigs]}")
            result = self._answers[name](*args, **kwargs)
            if result is not None:
                assert any(type_ok(ret, result) for _, ret in sigs), f"the fake's {cls.__name__}.{name} returns a {type(result)}"
            return result
        return method

    def __setattr__(self, name: str, value) -> None:
        rec, cls = self._rec, self._cls
        real = getattr(cls, name, None)
        if not isinstance(real, property) or real.fset is None:
            rec.fail(f"{cls.__name__}.{name} is not a settable property in TensorRT")
        rec.calls.append((cls.__name__, name, "set", (value,)))
        if not any(fits(s, (value,), {}) for s in overloads_from_doc(real.fset)):
            rec.fail(f"{cls.__name__}.{name} = {value!r}: wrong type")
        self._set[name] = value


class FakeTrt(types.ModuleType):
    """A `trt` module: names must exist in the real one; Runtime(...) makes a checked stand-in, everything else
    (ILogger to subclass, the enums) is the real object, which works without a GPU."""

    def __init__(self, rec: Recorder, name: str, version: str, engine_answers: dict, corrupt: bool = False):
        super().__init__(name)
        self.__version__ = version
        self._rec, self._engine_answers, self._corrupt = rec, engine_answers, corrupt

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if not hasattr(REAL, name):
            self._rec.fail(f"trt.{name} does not exist in TensorRT")
        if name != "Runtime":
            return getattr(REAL, name)
        rec = self._rec

        def runtime(*args, **kwargs):
            rec.calls.append(("Runtime", "__init__", "call", args))
            if not any(fits(s, args, kwargs) for s in overloads_from_doc(REAL.Runtime.__init__)):
                rec.fail(f"Runtime{args!r} fits no constructor")
            logger = args[0]

            def deserialize(data):
                if self._corrupt:  # what TensorRT does with a damaged plan: log why, return None
                    logger.log(REAL.ILogger.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                                                   "(Serialization assertion magicTagRead == kMAGIC_TAG failed.\nMagic tag does not match)")
                    return None
                return Stub(rec, REAL.ICudaEngine, self._engine_answers)
            return Stub(rec, REAL.Runtime, {"deserialize_cuda_engine": deserialize})
        return runtime


def engine_answers(rec: Recorder, names=("z", "image"), dtype=None) -> dict:
    dims = [REAL.Dims((PROFILE[0], 8)), REAL.Dims((PROFILE[1], 8)), REAL.Dims((PROFILE[2], 8))]
    context = {"set_input_shape": lambda name, shape: PROFILE[0] <= shape[0] <= PROFILE[2],
               "set_tensor_address": lambda name, ptr: True, "execute_async_v3": lambda handle: True}
    return {
        "num_io_tensors": len(names),
        "get_tensor_name": lambda i: names[i],
        "get_tensor_mode": lambda n: REAL.TensorIOMode.INPUT if n == names[0] else REAL.TensorIOMode.OUTPUT,
        "get_tensor_dtype": lambda n: dtype if dtype is not None else REAL.DataType.FLOAT,
        "get_tensor_profile_shape": lambda n, i: dims,
        "create_execution_context": lambda: Stub(rec, REAL.IExecutionContext, context),
    }


@pytest.fixture
def fresh_modules():
    trt_backend.clear_caches()
    yield
    trt_backend.clear_caches()


@pytest.fixture
def fake_trt(fresh_modules, monkeypatch):
    """Install a fake module (lean by default) as the one the backend found, and a CPU stand-in for the GPU."""
    def install(name="tensorrt_lean", version=None, corrupt=False, names=("z", "image"), dtype=None):
        rec = Recorder()
        fake = FakeTrt(rec, name, version or REAL.__version__, engine_answers(rec, names, dtype), corrupt)
        monkeypatch.setattr(trt_backend, "_probe", lambda: (fake, ()))
        monkeypatch.setattr(trt_backend, "gpu_info", lambda device="cuda": H100)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device", lambda dev: _Null())
        monkeypatch.setattr(torch.cuda, "current_stream", lambda dev=None: types.SimpleNamespace(cuda_stream=7))
        return rec
    return install


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def write_engine(folder: Path, *, version: str, version_compatible: bool | None, module="tensorrt") -> Path:
    src = folder / "g.onnx"
    src.write_bytes(b"the onnx the engine was built from")
    eng = folder / "g.fp16.engine"
    eng.write_bytes(b"serialized engine bytes")
    side = make_sidecar(engine_sha256=sha256_file(eng), precision="fp16", runtime=RuntimeInfo(version, *H100, module),
                        profile=PROFILE, onnx_sha256="a" * 64, source={"kind": "onnx", "path": str(src), "sha256": sha256_file(src)},
                        spec=SPEC, generator=None, workspace_mib=1024, rebuild=f"gan-deploy build-engine --fp16 --onnx {src} --out {eng}",
                        version_compatible=bool(version_compatible))
    if version_compatible is None:  # a sidecar written before the field existed
        del side["version_compatible"]
    sidecar_path(eng).write_text(json.dumps(side))
    return eng


def run_on_cpu(runner, z: np.ndarray) -> np.ndarray:
    """The runner's own code path, with its device tensors on the CPU (torch has no CUDA here)."""
    runner.activate()
    runner._dev = torch.device("cpu")
    return runner.infer(z)


# -- the runner against the real classes -------------------------------------------------------------------


@needs_lean
def test_each_used_member_exists_on_the_real_class_as_used():
    for (cls, member), kind in USED.items():
        real_cls = getattr(REAL, cls)
        assert hasattr(real_cls, member), f"{cls}.{member}"
        real = getattr(real_cls, member)
        if kind == "property":
            assert isinstance(real, property), f"{cls}.{member} is not a property"
        elif kind == "member":  # an enum value (ILogger's are its Severity's)
            assert type(real).__name__ in (cls, "Severity") and isinstance(int(real), int), f"{cls}.{member}"
        else:
            assert callable(real) and overloads_from_doc(real), f"{cls}.{member} has no pybind11 signature"
    assert REAL.Runtime.engine_host_code_allowed.fset is not None  # settable: the runner sets it
    assert REAL.Logger.WARNING is REAL.ILogger.Severity.WARNING


@pytest.mark.skipif(not SIGNATURES.is_file(), reason=f"{SIGNATURES} is not here (the shared folder beside the project)")
def test_each_used_member_is_in_the_signatures_file_with_its_kind():
    classes = signatures_file()
    for (cls, member), kind in USED.items():
        if member == "__init__":
            continue  # constructors are not listed there; checked from the real docstring
        assert member in classes.get(cls, {}), f"{cls}.{member} is not in {SIGNATURES.name}"
        assert classes[cls][member][0] == kind, f"{cls}.{member}: {classes[cls][member][0]}, used as a {kind}"
    # the file and the installed bindings agree on the overloads the runner calls
    if REAL is not None:
        for (cls, member), kind in USED.items():
            if kind == "method" and member != "__init__" and classes[cls][member][1]:
                n_file = sorted(len(p) for p, _ in classes[cls][member][1])
                n_real = sorted(len(p) for p, _ in overloads_from_doc(getattr(getattr(REAL, cls), member)))
                assert n_file == n_real, f"{cls}.{member}: {n_file} vs {n_real}"


@needs_lean
def test_the_runner_runs_against_the_real_classes(fake_trt):
    rec = fake_trt()
    from gan_deploy.artifacts.artifact import Artifact
    from gan_deploy.backends.tensorrt import TensorRTRunner

    art = Artifact("engine", Path("candidate.engine"), SPEC, "0" * 64, None, {"gan_deploy.precision": "fp16"})
    runner = TensorRTRunner(art, "cuda", engine_bytes=b"plan", cuda_graphs=False, version_compatible=True)
    z = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    y = run_on_cpu(runner, z)  # 20 > max batch 16: two enqueues
    assert y.shape == (20, 1, 4, 4)
    assert not rec.errors
    calls = [(c, m, k) for c, m, k, _ in rec.calls]
    # the plan's host code is allowed before it is deserialized (version-compatible), never after
    assert calls.index(("Runtime", "engine_host_code_allowed", "set")) < calls.index(("Runtime", "deserialize_cuda_engine", "call"))
    shapes = [a for c, m, k, a in rec.calls if m == "set_input_shape"]
    assert shapes == [("z", (16, 8)), ("z", (4, 8))]
    addresses = [a for c, m, k, a in rec.calls if m == "set_tensor_address"]
    assert {a[0] for a in addresses} == {"z", "image"} and all(isinstance(a[1], int) and a[1] for a in addresses)
    assert [a for c, m, k, a in rec.calls if m == "execute_async_v3"] == [(7,), (7,)]
    assert runner.min_batch == 1 and runner.max_batch == 16
    assert "tensorrt_lean" in runner.describe()
    runner.close()


@needs_lean
def test_the_runner_uses_exactly_these(fake_trt):
    """USED lists every TensorRT member the code touches: no more (stale entries), no fewer (unchecked calls)."""
    rec = fake_trt()
    from gan_deploy.artifacts.artifact import Artifact
    from gan_deploy.backends.tensorrt import TensorRTRunner

    art = Artifact("engine", Path("candidate.engine"), SPEC, "0" * 64, None, {"gan_deploy.precision": "fp16"})
    with TensorRTRunner(art, "cuda", engine_bytes=b"plan", cuda_graphs=False, version_compatible=True) as runner:
        run_on_cpu(runner, np.zeros((3, 8), np.float32))
    logger = trt_backend.trt_logger()
    assert isinstance(logger, REAL.ILogger)  # a real ILogger subclass: TensorRT calls its log()
    (params, _), = overloads_from_doc(REAL.ILogger.log)
    assert len(inspect.signature(type(logger).log).parameters) == 1 + len(params)  # self, severity, msg
    runtime_used = {k for k, kind in USED.items() if k[0] not in ("ILogger", "TensorIOMode", "DataType")}
    assert rec.used() == runtime_used
    # the ILogger/enum members are used as real objects (not stubs): check the source for them instead
    src = Path(trt_backend.__file__).read_text()
    for (cls, member) in USED:
        if cls in ("ILogger", "TensorIOMode", "DataType") and member != "__init__" and member != "log":
            assert f"trt.{cls}.{member}" in src, f"trt.{cls}.{member} is listed in USED but not used"


@needs_lean
def test_a_misspelt_call_fails_against_the_real_class(fake_trt):
    """The check itself: a name TensorRT lacks, or a call no overload takes, is caught."""
    rec = fake_trt()
    runtime = trt_backend.trt_runtime_module().Runtime(trt_backend.trt_logger())
    with pytest.raises(AssertionError, match="Runtime.deserialize_engine does not exist"):
        runtime.deserialize_engine(b"plan")
    engine = runtime.deserialize_cuda_engine(b"plan")
    with pytest.raises(AssertionError, match="fits none"):
        engine.get_tensor_profile_shape("z")  # the profile index is required
    context = engine.create_execution_context()
    with pytest.raises(AssertionError, match="fits none"):
        context.execute_async_v3("stream")  # a handle is an int
    with pytest.raises(AssertionError, match="not a settable property"):
        engine.num_io_tensors = 3
    with pytest.raises(AssertionError, match="does not exist in TensorRT"):
        trt_backend.trt_runtime_module().NetworkDefinitionCreationFlag  # builder-only: not in the runtime module
    assert len(rec.errors) == 5


@needs_lean
def test_engine_from_file_with_the_lean_runtime(fake_trt, tmp_path):
    rec = fake_trt()
    from gan_deploy.backends import make_runner

    # built by an earlier 11.x with --version-compatible: the lean 11.4 runtime runs it, host code allowed
    eng = write_engine(tmp_path, version="11.1.0.5", version_compatible=True)
    with make_runner("tensorrt", artifact_from_engine(eng), "cuda", cuda_graphs=False) as runner:
        assert run_on_cpu(runner, np.zeros((2, 8), np.float32)).shape == (2, 1, 4, 4)
    assert ("Runtime", "engine_host_code_allowed", "set", (True,)) in rec.calls
    assert not rec.errors


@needs_lean
@pytest.mark.parametrize("version_compatible", [False, None])
def test_the_lean_runtime_refuses_an_engine_that_is_not_version_compatible(fake_trt, tmp_path, version_compatible):
    rec = fake_trt()
    from gan_deploy.backends import make_runner

    eng = write_engine(tmp_path, version=REAL.__version__, version_compatible=version_compatible)
    runner = make_runner("tensorrt", artifact_from_engine(eng), "cuda")
    with pytest.raises(StaleArtifact, match=r"no --version-compatible \(this machine has only TensorRT's lean runtime, tensorrt_lean.*"
                                            r"where the full TensorRT is installed: gan-deploy build-engine --fp16 .* --version-compatible"):
        runner.activate()
    assert rec.calls == []  # refused from the sidecar, before TensorRT was asked anything


@needs_lean
def test_full_tensorrt_runs_an_exact_version_engine_without_allowing_host_code(fake_trt, tmp_path):
    rec = fake_trt(name="tensorrt", version="10.13.0.35")
    from gan_deploy.backends import make_runner

    eng = write_engine(tmp_path, version="10.13.0.35", version_compatible=False)
    with make_runner("tensorrt", artifact_from_engine(eng), "cuda", cuda_graphs=False) as runner:
        run_on_cpu(runner, np.zeros((1, 8), np.float32))
    assert not any(m == "engine_host_code_allowed" for _, m, _, _ in rec.calls)
    # a version-compatible engine from a newer 10.x, or from TensorRT 11, is refused by 10.13
    for built in ("10.14.1.48", "11.4.0.106"):
        eng = write_engine(tmp_path, version=built, version_compatible=True)
        with pytest.raises(StaleArtifact, match=rf"TensorRT {re.escape(built)} with --version-compatible \(this machine has 10\.13\.0\.35; "):
            make_runner("tensorrt", artifact_from_engine(eng), "cuda").activate()


@needs_lean
def test_a_corrupt_engine_is_refused_with_tensorrts_own_words_on_one_line(fake_trt, tmp_path, capsys):
    fake_trt(corrupt=True)
    from gan_deploy.backends import make_runner

    eng = write_engine(tmp_path, version="11.4.0.106", version_compatible=True)
    with pytest.raises(StaleArtifact) as e:
        make_runner("tensorrt", artifact_from_engine(eng), "cuda").activate()
    msg = str(e.value)
    assert msg.startswith("TensorRT could not deserialize the engine: ") and "\n" not in msg
    assert "Magic tag does not match" in msg and str(eng) in msg
    assert "[TensorRT] ERROR: IRuntime::deserializeCudaEngine" in capsys.readouterr().err  # still logged as before


@needs_lean
def test_engine_io_that_is_not_float32_is_refused(fake_trt):
    fake_trt(dtype=REAL.DataType.HALF)
    from gan_deploy.artifacts.artifact import Artifact
    from gan_deploy.backends.tensorrt import TensorRTRunner

    art = Artifact("engine", Path("candidate.engine"), SPEC, "0" * 64, None, {"gan_deploy.precision": "fp16"})
    with pytest.raises(GanDeployError, match="engine I/O must be float32: z: DataType.HALF"):
        TensorRTRunner(art, "cuda", engine_bytes=b"plan").activate()


@needs_lean
def test_a_real_runtime_without_a_usable_driver_is_a_one_line_error_not_a_crash():
    """TensorRT hands back a null runtime when CUDA cannot start, and destroying it segfaults; new_runtime()
    must turn TensorRT's logged reason into an error and keep the process alive (here: no CUDA driver; on a
    GPU machine the runtime is simply created)."""
    code = ("from gan_deploy.backends.tensorrt import new_runtime\n"
            "from gan_deploy.core.errors import BackendUnavailable\n"
            "try:\n    new_runtime()\n    print('created')\n"
            "except BackendUnavailable as e:\n    print('refused', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.strip()
    assert out == "created" or (out.startswith("refused TensorRT could not create its runtime: ") and "Error Code" in out and "\n" not in out), out


# -- which module runs engines -----------------------------------------------------------------------------


def _module(name: str, version: str) -> types.ModuleType:
    m = types.ModuleType(name)
    setattr(m, "__version__", version)
    return m


def test_full_tensorrt_is_preferred_when_both_import(fresh_modules, monkeypatch):
    full, lean = _module("tensorrt", "10.13.0.35"), _module("tensorrt_lean", "10.13.0.35")
    monkeypatch.setitem(sys.modules, "tensorrt", full)
    monkeypatch.setitem(sys.modules, "tensorrt_lean", lean)
    assert trt_backend.trt_runtime_module() is full
    assert not trt_backend.is_lean(full) and "the full TensorRT" in trt_backend.module_description(full)


@pytest.mark.parametrize("lean_name", ["tensorrt_lean", "tensorrt_lean_bindings"])
def test_the_lean_runtime_is_used_when_full_tensorrt_is_missing(fresh_modules, monkeypatch, lean_name):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    if lean_name == "tensorrt_lean_bindings":
        monkeypatch.setitem(sys.modules, "tensorrt_lean", None)
    lean = _module(lean_name, "11.4.0.106")
    monkeypatch.setitem(sys.modules, lean_name, lean)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trt_backend.trt_runtime_module() is lean and trt_backend.is_lean(lean)
    reason = trt_backend.unavailable_reason()
    assert f"TensorRT found: {lean_name} 11.4.0.106 (NVIDIA's lean runtime" in reason
    assert "no CUDA GPU is visible" in reason and "pip install -e '.[gpu]'" in reason
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    trt_backend.unavailable_reason.cache_clear()
    assert trt_backend.unavailable_reason() is None  # the lean runtime and a GPU: engines can run


def test_no_module_at_all(fresh_modules, monkeypatch):
    for name in trt_backend.RUNTIME_MODULES:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BackendUnavailable, match=r"TensorRT is not importable: tensorrt: ModuleNotFoundError.*; tensorrt_lean: ModuleNotFoundError.*"
                                                 r"tensorrt_lean_bindings: ModuleNotFoundError.*pip install -e '\.\[gpu\]'"):
        trt_backend.trt_runtime_module()
    assert trt_backend.unavailable_reason().startswith("TensorRT is not importable (tensorrt: ModuleNotFoundError")


def test_building_needs_full_tensorrt_and_says_so(fresh_modules, monkeypatch, tiny_checkpoint, tmp_path, cli):
    from gan_deploy.artifacts.load import load_artifact
    from gan_deploy.engine.build import EngineOptions, builder_unavailable_reason, engine_from_artifact, engine_from_onnx

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_lean", _module("tensorrt_lean", "11.4.0.106"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    reason = builder_unavailable_reason()
    assert reason.startswith("building engines needs the full TensorRT (`import tensorrt`: Builder, OnnxParser), and only "
                             "tensorrt_lean 11.4.0.106 (NVIDIA's lean runtime")
    with pytest.raises(BackendUnavailable, match="cannot build a TensorRT engine here: building engines needs the full TensorRT"):
        engine_from_artifact(load_artifact(tiny_checkpoint), EngineOptions("fp16", tmp_path / "x.engine", version_compatible=True))
    with pytest.raises(BackendUnavailable, match=r"cannot build a TensorRT engine here: only tensorrt_lean 11\.4\.0\.106"):
        engine_from_onnx(b"onnx", "z", (8,))
    r = cli("build-engine", "--fp16", "--version-compatible", "-c", tiny_checkpoint, "--out", tmp_path / "x.engine")
    assert r.exit_code == 2 and "building engines needs the full TensorRT" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "x.engine").exists()


def test_build_engine_help_and_options_carry_version_compatible(cli):
    from gan_deploy.engine.build import EngineOptions

    assert EngineOptions().version_compatible is False
    r = cli("build-engine", "--help")
    assert r.exit_code == 0 and "--version-compatible" in r.output


def test_importing_the_backend_imports_no_tensorrt_module():
    code = ("import sys, gan_deploy.backends.tensorrt, gan_deploy.engine.build, gan_deploy.cli.precision; "
            "sys.exit(sorted(m for m in ('tensorrt', 'tensorrt_lean', 'tensorrt_lean_bindings') if m in sys.modules) or 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# -- a real Runtime (GPU machines) -------------------------------------------------------------------------


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_runtime_refuses_a_corrupt_engine_with_tensorrts_error(tmp_path, fresh_modules):
    reason = trt_backend.unavailable_reason()
    if reason:
        pytest.skip(f"TensorRT/GPU unavailable: {reason}")
    from gan_deploy.backends import make_runner

    trt = trt_backend.trt_runtime_module()
    rt = trt_backend.runtime_info("cuda")
    # the lean runtime refuses other engines from the sidecar already: claim version-compatible there
    eng = write_engine(tmp_path, version=rt.tensorrt_version, version_compatible=trt_backend.is_lean(trt), module=rt.module)
    side = json.loads(sidecar_path(eng).read_text())
    side["gpu_name"], side["compute_capability"] = rt.gpu_name, rt.compute_capability
    sidecar_path(eng).write_text(json.dumps(side))
    with pytest.raises(StaleArtifact) as e:
        make_runner("tensorrt", artifact_from_engine(eng), "cuda").activate()
    msg = str(e.value)
    assert msg.startswith(f"TensorRT could not deserialize the engine: {eng}: ") and "\n" not in msg
    assert "TensorRT logged no reason" not in msg  # TensorRT's own error is in the message


@pytest.mark.parametrize("kw, what", [
    ({"precision": "int4"}, "unknown engine precision"),
    ({"profile": (8, 4, 2)}, "bad optimization profile"),
    ({"profile": (0, 1, 1)}, "bad optimization profile"),
    ({"profile": (1, 2)}, "bad optimization profile"),
    ({"workspace_mib": 1}, "bad workspace limit"),
    ({"gate_samples": 0}, "bad number of gate samples"),
    ({"calib_samples": 1}, "too few calibration samples"),
    ({"device": "cpu"}, "built on a CUDA device"),
])
def test_engine_options_check_themselves(kw, what):
    from gan_deploy.engine.build import EngineOptions

    with pytest.raises(GanDeployError, match=what):
        EngineOptions(**kw)
    assert EngineOptions(profile=[1, 8, 32], device="cuda:1").profile == (1, 8, 32)
