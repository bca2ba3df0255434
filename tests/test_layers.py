"""The package's dependencies point one way: from the CLI and serving at the top down to core at the bottom.

Every import of a gan_deploy module (at module level or inside a function) is checked against LAYERS: a module
may import its own subpackage and any subpackage of a lower layer, never one of its own layer or above.
This is the map docs/architecture.md draws; change both together."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "gan_deploy"
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


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module and n.module.startswith("gan_deploy"):
            out.append((n.lineno, n.module))
            if n.module == "gan_deploy":  # from gan_deploy import serve
                out += [(n.lineno, f"gan_deploy.{a.name}") for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.level > 0:
            out.append((n.lineno, "." * n.level + (n.module or "")))
        elif isinstance(n, ast.Import):
            out += [(n.lineno, a.name) for a in n.names if a.name.startswith("gan_deploy")]
    return out


def _modules():
    return sorted(p for p in PKG.rglob("*.py") if p.parent != PKG)


def test_every_subpackage_has_a_rank_and_a_docstring():
    subs = sorted(p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert set(subs) - {"assets"} == set(LAYERS), "add the new subpackage to LAYERS and docs/architecture.md"
    for name in LAYERS:
        doc = ast.get_docstring(ast.parse((PKG / name / "__init__.py").read_text()))
        assert doc and "May import" in doc, f"gan_deploy/{name}/__init__.py must say what it owns and what it may import"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_no_upward_or_sideways_import(path):
    own = path.relative_to(PKG).parts[0]
    bad = []
    for line, mod in _imports(path):
        assert not mod.startswith("."), f"{path.name}:{line}: use absolute imports (from gan_deploy.x import ...)"
        parts = mod.split(".")
        if len(parts) < 2 or parts[1] == "__version__" or parts[1] == own:
            continue
        target = parts[1]
        if target not in LAYERS:
            continue
        if LAYERS[target] >= LAYERS[own]:
            bad.append(f"line {line}: {own} (layer {LAYERS[own]}) imports {mod} (layer {LAYERS[target]})")
    assert not bad, f"{path.relative_to(PKG)}: " + "; ".join(bad)


def test_the_check_catches_an_upward_import(tmp_path):
    """The rule itself, on a module written to break it: an artifact module importing the CLI."""
    p = tmp_path / "bad.py"
    p.write_text("def f():\n    from gan_deploy.cli.options import artifact_options\n")
    assert _imports(p) == [(2, "gan_deploy.cli.options")]


def test_public_api_resolves_and_import_stays_light():
    import subprocess
    import sys

    import gan_deploy

    for name in gan_deploy.__all__:
        assert getattr(gan_deploy, name) is not None, name
    code = "import sys, gan_deploy; sys.exit(any(m in sys.modules for m in ('torch', 'onnxruntime', 'onnx', 'tensorrt')))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
