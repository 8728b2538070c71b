"""EDGE on Ray. ``edge_ray.Detector`` (``edge_ray.detector``) loads an exported detector;
the rest lives in the submodules (imported lazily, so ``import edge_ray`` stays cheap)."""


def __getattr__(name):
    if name in ("Detector", "Predictions"):
        from edge_ray import detector
        return getattr(detector, name)
    raise AttributeError(f"module 'edge_ray' has no attribute {name!r}")
