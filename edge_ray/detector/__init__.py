"""A trained detector others can use: ``Detector.load(folder)`` then ``predict(images)``.

``runtime.py`` runs it, ``folder.py`` reads and writes the exported folder, ``export.py``
makes one from a training checkpoint (with ``card.py``'s model card), ``ray_predict.py``
runs it over many images with Ray Data; ``cli.py`` holds the export and predict commands.
The names below load lazily, so that importing a submodule (the CLI) does not import torch.
"""

_RUNTIME = ("Detector", "Predictions", "FORMAT_VERSION", "read_manifest", "to_pixels", "decode_error")


def __getattr__(name):
    if name in _RUNTIME:
        from edge_ray.detector import runtime
        return getattr(runtime, name)
    raise AttributeError(f"module 'edge_ray.detector' has no attribute {name!r}")


__all__ = list(_RUNTIME)
