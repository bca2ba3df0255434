"""precision/ reads as its concepts: the order its __init__ lists its modules in is an import order (no cycle)."""
import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "gan_deploy" / "precision"


def _listed(pkg: Path) -> list[str]:
    doc = ast.get_docstring(ast.parse((pkg / "__init__.py").read_text()))
    return list(dict.fromkeys(re.findall(r"`(\w+)\.py`", doc.split("May import")[0])))


def _precision_imports(pkg: Path, name: str) -> set[str]:
    """Modules of precision/ that `name`.py imports, at module level or inside functions."""
    out = set()
    for n in ast.walk(ast.parse((pkg / f"{name}.py").read_text())):
        if isinstance(n, ast.ImportFrom) and n.module == "gan_deploy.precision":
            out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("gan_deploy.precision."):
            out.add(n.module.split(".")[2])
        elif isinstance(n, ast.Import):
            out |= {a.name.split(".")[2] for a in n.names if a.name.startswith("gan_deploy.precision.")}
    return out


def _violations(pkg: Path) -> list[str]:
    order = _listed(pkg)
    return [f"{name}.py imports {m}.py, listed before it" for i, name in enumerate(order)
            for m in sorted(_precision_imports(pkg, name)) if m in order[:i + 1]]


def test_every_module_is_listed_once():
    assert sorted(_listed(PKG)) == sorted(p.stem for p in PKG.glob("*.py") if p.stem != "__init__")


def test_each_module_imports_only_modules_listed_after_it():
    assert _violations(PKG) == []


def test_the_rule_catches_a_cycle(tmp_path):
    (tmp_path / "__init__.py").write_text('"""Owns: `a.py` (x), `b.py`.\nMay import: core.\n"""\n')
    (tmp_path / "a.py").write_text("def f():\n    from gan_deploy.precision.b import y\n")
    (tmp_path / "b.py").write_text("import gan_deploy.precision.gate\n")
    assert _listed(tmp_path) == ["a", "b"] and _violations(tmp_path) == []
    (tmp_path / "b.py").write_text("from gan_deploy.precision import a\n")  # b -> a -> b: a cycle
    assert _violations(tmp_path) == ["b.py imports a.py, listed before it"]
