"""The package's dependencies point one way: from the CLI and serving at the top down to core at the bottom.

Every way a module can load another gan_deploy module is checked against LAYERS: import statements (at module
level or inside a function), importlib.import_module / __import__ with a literal name (or an f-string whose
literal start names the subpackage), "package.module:attr" strings naming a real module (the registries and
Ray's import paths load these), and the lazy package API (`from gan_deploy import bench`, `gan_deploy.make_runner`)
mapped through `_API` in gan_deploy/__init__.py to the module it loads. A module may import its own subpackage
and any subpackage of a lower layer, never one of its own layer or above.

Each subpackage's `__init__.py` docstring says what it may import in one sentence, "May import: core, nets,
artifacts (why)." ("nothing from gan_deploy" for none, "everything below it" for the top); that line is checked
against the layers and against what the subpackage really imports. This is the map docs/architecture.md draws;
change both together. The self-tests at the end run the same functions on a package written to break each rule."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "gan_deploy"
ROOT = "gan_deploy"
LAYERS = {
    "core": 0,
    "nets": 1, "data": 1,
    "artifacts": 2,
    "export": 3,
    "backends": 4,
    "quality": 5,
    "precision": 6,
    "engine": 7,
    "generate": 8, "bench": 8, "train": 8,
    "serve": 9,
    "cli": 10,
}
_MODULE_STRING = re.compile(rf"^{ROOT}(\.\w+)+(:\w+)?$")
_LOADERS = {"import_module", "__import__"}


def lazy_api(pkg: Path = PKG) -> dict[str, str]:
    """`_API` of the package's __init__.py, read without importing it: public name -> module it loads."""
    tree = ast.parse((pkg / "__init__.py").read_text())
    for n in tree.body:
        if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_API" for t in n.targets):
            api = ast.literal_eval(n.value)
            return {name: ref.split(":")[0] for name, ref in api.items()}
    return {}


def _is_module(dotted: str, pkg: Path) -> bool:
    """True if `gan_deploy.a.b` is a module or package file under `pkg` (the package directory)."""
    rel = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    return (pkg / rel).with_suffix(".py").is_file() or (pkg / rel / "__init__.py").is_file()


def _literal_start(node: ast.expr, own: str) -> str | None:
    """The module name a call's argument names: a literal string, or an f-string's literal start
    (f"gan_deploy.backends.{name}" -> gan_deploy.backends; f"{__name__}.x" -> this module)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        first = node.values[0]
        if isinstance(first, ast.FormattedValue) and isinstance(first.value, ast.Name) and first.value.id == "__name__":
            return own
        if isinstance(first, ast.Constant) and isinstance(first.value, str) and "." in first.value.rstrip("."):
            return first.value.rpartition(".")[0] if not first.value.endswith(".") else first.value.rstrip(".")
    return None


def imports_of(path: Path, pkg: Path = PKG, api: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """Every gan_deploy module `path` loads, as (line, dotted name); relative imports as ".x" (refused)."""
    api = lazy_api(pkg) if api is None else api
    own = ".".join((ROOT, *path.relative_to(pkg).with_suffix("").parts))
    tree = ast.parse(path.read_text())
    roots = {ROOT}  # names bound to the package itself: `import gan_deploy [as gd]`
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            roots |= {a.asname for a in n.names if a.name == ROOT and a.asname}
    out: set[tuple[int, str]] = set()

    def package_attr(line: int, name: str) -> None:  # gan_deploy.<name>, by import or attribute
        if name in api:
            out.add((line, api[name]))
        elif name in LAYERS or _is_module(f"{ROOT}.{name}", pkg):
            out.add((line, f"{ROOT}.{name}"))

    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.level > 0:
            out.add((n.lineno, "." * n.level + (n.module or "")))
        elif isinstance(n, ast.ImportFrom) and n.module == ROOT:
            for a in n.names:
                package_attr(n.lineno, a.name)
        elif isinstance(n, ast.ImportFrom) and n.module and n.module.startswith(ROOT + "."):
            out.add((n.lineno, n.module))
        elif isinstance(n, ast.Import):
            out |= {(n.lineno, a.name) for a in n.names if a.name.startswith(ROOT + ".")}
        elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in roots:
            package_attr(n.lineno, n.attr)
        elif isinstance(n, ast.Call) and n.args:
            f = n.func
            called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            name = _literal_start(n.args[0], own) if called in _LOADERS else None
            if name is not None and (name == ROOT or name.startswith((ROOT + ".", "."))):
                out.add((n.lineno, name))
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and _MODULE_STRING.match(n.value):
            module = n.value.split(":")[0]
            if _is_module(module, pkg):  # "gan_deploy.backends.eager:EagerRunner", not a metadata key
                out.add((n.lineno, module))
    return sorted(out)


def subpackage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == ROOT else None


def violations(path: Path, pkg: Path = PKG, layers: dict[str, int] = LAYERS, api: dict[str, str] | None = None) -> list[str]:
    """What in `path` breaks the layer rule: relative imports, and imports of a subpackage of its own layer or above."""
    own = path.relative_to(pkg).parts[0]
    bad = []
    for line, mod in imports_of(path, pkg, api):
        if mod.startswith("."):
            bad.append(f"line {line}: relative import {mod} (use from gan_deploy.x import ...)")
            continue
        target = subpackage_of(mod)
        if target is None or target == own or target not in layers:
            continue
        if layers[target] >= layers[own]:
            bad.append(f"line {line}: {own} (layer {layers[own]}) imports {mod} (layer {layers[target]})")
    return bad


def declared_imports(init: Path, own: str, layers: dict[str, int] = LAYERS) -> set[str]:
    """The subpackages the "May import: ..." sentence of a subpackage's docstring lists."""
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    m = re.search(r"May import:\s*(.*?)\.(?:\s|$)", doc, re.S)
    assert m, f"{init}: no 'May import: ...' sentence"
    text = re.sub(r"\([^)]*\)", "", " ".join(m.group(1).split())).strip()  # reasons in parentheses do not count
    if text.startswith("nothing from gan_deploy"):
        return set()
    if text.startswith("everything below it"):
        return {s for s, rank in layers.items() if rank < layers[own]}
    names = {w.strip().removeprefix(ROOT + ".").removeprefix(".") for w in re.split(r",|\band\b", text) if w.strip()}
    unknown = names - set(layers)
    assert not unknown, f"{init}: 'May import' names {sorted(unknown)}, not subpackages; write e.g. 'May import: core, nets.'"
    return names


def imported_subpackages(sub: Path, pkg: Path = PKG, api: dict[str, str] | None = None) -> dict[str, str]:
    """Subpackage -> first place (file:line) subpackage `sub` imports it from, its own excluded."""
    found: dict[str, str] = {}
    for path in sorted(sub.rglob("*.py")):
        for line, mod in imports_of(path, pkg, api):
            target = subpackage_of(mod)
            if target and target != sub.name and _is_module(f"{ROOT}.{target}", pkg):
                found.setdefault(target, f"{path.relative_to(pkg)}:{line}")
    return found


def may_import_mismatch(sub: Path, pkg: Path = PKG, layers: dict[str, int] = LAYERS, api: dict[str, str] | None = None) -> list[str]:
    """Where the docstring's "May import" and the code disagree: an import it does not list, a listed subpackage at
    its own layer or above, or (for an explicit list) a listed subpackage it no longer imports."""
    own = sub.name
    doc = sub / "__init__.py"
    declared = declared_imports(doc, own, layers)
    real = imported_subpackages(sub, pkg, api)
    bad = [f"imports {t} ({where}), which 'May import' does not list" for t, where in sorted(real.items()) if t not in declared]
    bad += [f"'May import' lists {t} (layer {layers[t]}), not below {own} (layer {layers[own]})"
            for t in sorted(declared) if layers[t] >= layers[own]]
    if "everything below it" not in (ast.get_docstring(ast.parse(doc.read_text())) or ""):
        bad += [f"'May import' lists {t}, which it does not import" for t in sorted(declared - set(real))]
    return bad


def _modules():
    return sorted(p for p in PKG.rglob("*.py") if p.parent != PKG)


def _subpackages(pkg: Path = PKG) -> list[Path]:
    return sorted(p for p in pkg.iterdir() if p.is_dir() and (p / "__init__.py").exists() and p.name in LAYERS)


def test_every_subpackage_has_a_rank_and_a_docstring():
    subs = sorted(p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert set(subs) - {"assets"} == set(LAYERS), "add the new subpackage to LAYERS and docs/architecture.md"
    for name in LAYERS:
        doc = ast.get_docstring(ast.parse((PKG / name / "__init__.py").read_text()))
        assert doc and "May import" in doc, f"gan_deploy/{name}/__init__.py must say what it owns and what it may import"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_no_upward_or_sideways_import(path):
    bad = violations(path)
    assert not bad, f"{path.relative_to(PKG)}: " + "; ".join(bad)


@pytest.mark.parametrize("sub", _subpackages(), ids=lambda p: p.name)
def test_may_import_line_matches_the_code(sub):
    bad = may_import_mismatch(sub)
    assert not bad, f"gan_deploy/{sub.name}/__init__.py: " + "; ".join(bad)


def test_core_docstring_names_its_modules():
    """core is the index every stage reads first: its docstring names each of its modules, and only those."""
    doc = ast.get_docstring(ast.parse((PKG / "core" / "__init__.py").read_text())) or ""
    named = set(re.findall(r"\(`(\w+)`", doc))
    assert named == {p.stem for p in (PKG / "core").glob("*.py") if p.stem != "__init__"}


def test_the_lazy_api_is_read():
    api = lazy_api()
    assert api["make_runner"] == "gan_deploy.backends" and api["bench"] == "gan_deploy.bench.run"


# --- self-tests: the same functions on a package written to break each rule ---------------------------------

API_INIT = '''"""A package."""
_API = {"bench": "gan_deploy.bench.run:bench", "make_runner": "gan_deploy.backends:make_runner"}
'''


def _package(tmp_path: Path, modules: dict[str, str], docs: dict[str, str] | None = None) -> Path:
    """gan_deploy/ under tmp_path with every subpackage of LAYERS (docstring from `docs`) and `modules` (path: source)."""
    pkg = tmp_path / ROOT
    pkg.mkdir()
    (pkg / "__init__.py").write_text(API_INIT)
    for sub in LAYERS:
        (pkg / sub).mkdir()
        (pkg / sub / "__init__.py").write_text(f'"""{sub}.\n\n{(docs or {}).get(sub, "May import: nothing from gan_deploy.")}\n"""\n')
    (pkg / "bench" / "run.py").write_text("def bench(): ...\n")
    for rel, source in modules.items():
        (pkg / rel).write_text(source)
    return pkg


def test_self_test_upward_import_is_a_violation(tmp_path):
    """An artifacts module importing the CLI inside a function: the real check reports it; a downward one passes."""
    pkg = _package(tmp_path, {"artifacts/bad.py": "def f():\n    from gan_deploy.cli.options import artifact_options\n",
                              "artifacts/good.py": "from gan_deploy.core import errors\nimport gan_deploy.nets\n",
                              "core/rel.py": "from .errors import x\n"})
    bad = violations(pkg / "artifacts" / "bad.py", pkg)
    assert bad == ["line 2: artifacts (layer 2) imports gan_deploy.cli.options (layer 10)"]
    assert violations(pkg / "artifacts" / "good.py", pkg) == []
    assert violations(pkg / "core" / "rel.py", pkg) == ["line 1: relative import .errors (use from gan_deploy.x import ...)"]


def test_self_test_importlib_and_dunder_import_are_imports(tmp_path):
    src = ("import importlib\nfrom importlib import import_module\n"
           "def f(name):\n"
           "    importlib.import_module('gan_deploy.serve.api')\n"
           "    import_module(f'gan_deploy.generate.sinks.{name}')\n"
           "    __import__('gan_deploy.bench.run')\n"
           "    importlib.import_module(name)\n"  # not resolvable: not an import the check can see
           "    importlib.import_module('numpy')\n"
           "REGISTRY = {'x': 'gan_deploy.engine.build:build_engine', 'meta': 'gan_deploy.factory'}\n")
    pkg = _package(tmp_path, {"quality/dyn.py": src, "engine/build.py": ""})
    assert [m for _, m in imports_of(pkg / "quality" / "dyn.py", pkg)] == [
        "gan_deploy.serve.api", "gan_deploy.generate.sinks", "gan_deploy.bench.run", "gan_deploy.engine.build"]
    assert len(violations(pkg / "quality" / "dyn.py", pkg)) == 4


def test_self_test_lazy_package_api_is_mapped(tmp_path):
    """`from gan_deploy import make_runner` loads gan_deploy.backends; `gd.bench` loads gan_deploy.bench.run."""
    src = ("import gan_deploy as gd\n"
           "from gan_deploy import make_runner, __version__\n"
           "def f():\n"
           "    import gan_deploy\n"
           "    return gd.bench, gan_deploy.serve, gan_deploy.__file__\n")
    pkg = _package(tmp_path, {"nets/lazy.py": src})
    assert imports_of(pkg / "nets" / "lazy.py", pkg) == [
        (2, "gan_deploy.backends"), (5, "gan_deploy.bench.run"), (5, "gan_deploy.serve")]
    bad = violations(pkg / "nets" / "lazy.py", pkg)
    assert [b.split(" imports ")[1] for b in bad] == ["gan_deploy.backends (layer 4)", "gan_deploy.bench.run (layer 8)",
                                                      "gan_deploy.serve (layer 9)"]


def test_self_test_may_import_line_is_compared_with_the_code(tmp_path):
    pkg = _package(tmp_path, {"export/a.py": "from gan_deploy.core import errors\nfrom gan_deploy import make_runner\n"},
                   docs={"export": "May import: core, nets (why), artifacts and engine. More prose.",
                         "data": "May import: gan_deploy.core, .nets.", "cli": "May import: everything below it."})
    assert declared_imports(pkg / "export" / "__init__.py", "export") == {"core", "nets", "artifacts", "engine"}
    assert declared_imports(pkg / "data" / "__init__.py", "data") == {"core", "nets"}
    assert declared_imports(pkg / "cli" / "__init__.py", "cli") == set(LAYERS) - {"cli"}
    assert declared_imports(pkg / "core" / "__init__.py", "core") == set()
    assert may_import_mismatch(pkg / "export", pkg) == [
        "imports backends (export/a.py:2), which 'May import' does not list",
        "'May import' lists engine (layer 7), not below export (layer 3)",
        "'May import' lists artifacts, which it does not import",
        "'May import' lists engine, which it does not import",
        "'May import' lists nets, which it does not import"]
    assert may_import_mismatch(pkg / "cli", pkg) == []
    (pkg / "nets" / "__init__.py").write_text('"""May import: core, quantum."""\n')
    with pytest.raises(AssertionError, match="quantum"):
        declared_imports(pkg / "nets" / "__init__.py", "nets")


def test_public_api_resolves_and_import_stays_light():
    import subprocess
    import sys

    import gan_deploy

    for name in gan_deploy.__all__:
        assert getattr(gan_deploy, name) is not None, name
    code = "import sys, gan_deploy; sys.exit(any(m in sys.modules for m in ('torch', 'onnxruntime', 'onnx', 'tensorrt')))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
