"""ARCHITECTURE.md, the layer rule: Ray is imported only in modules whose name says so
(`ray_*.py`), anywhere in the package, at module level or inside a function."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports_ray(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        if any(n == "ray" or n.startswith("ray.") for n in names):
            return True
    return False


def test_only_ray_modules_import_ray():
    offenders = [str(p.relative_to(ROOT)) for folder in ("edge_ray", "shards") for p in (ROOT / folder).rglob("*.py")
                 if not p.name.startswith("ray_") and _imports_ray(p)]
    assert not offenders, f"Ray imported outside a ray_*.py module: {offenders}"


def test_the_rule_sees_a_lazy_import(tmp_path):
    module = tmp_path / "plain.py"
    module.write_text("def f():\n    import ray.train\n    return ray\n")
    assert _imports_ray(module)
    module.write_text("from .ray_pool import run\nimport rayon\n")
    assert not _imports_ray(module)


def _uses_ray_module(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] + [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else [])
        if any(n.rsplit(".", 1)[-1].startswith("ray_") for n in names):
            return True
    return False


def test_every_ray_module_is_named_for_it():
    """The name says so only where it is true: a ray_*.py module imports Ray, or runs its
    work through another ray_*.py module (the demo's stages)."""
    named = [p for folder in ("edge_ray", "shards") for p in (ROOT / folder).rglob("ray_*.py")]
    wrong = [str(p) for p in named if not (_imports_ray(p) or _uses_ray_module(p))]
    assert named and not wrong, wrong


def test_the_tree_keeps_its_shape():
    """ARCHITECTURE.md: no module of the package over 400 lines, at most 8 modules loose at
    edge_ray/'s root (the rest live in one folder per capability)."""
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "edge_ray").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these by responsibility: {long}"
    loose = sorted(p.name for p in (ROOT / "edge_ray").glob("*.py"))
    assert len(loose) <= 8, f"{len(loose)} modules at edge_ray/'s root, move some into a folder: {loose}"
