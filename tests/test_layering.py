"""DESIGN.md §1: only edge_ray/distributed/ may import ray inside the package."""
import ast
from pathlib import Path


def test_pure_core_never_imports_ray():
    root = Path(__file__).resolve().parents[1] / "edge_ray"
    offenders = []
    for path in root.rglob("*.py"):
        if "distributed" in path.relative_to(root).parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "ray" or n.startswith("ray.") for n in names):
                offenders.append(str(path))
    assert not offenders, f"the pure core imports ray: {offenders}"
