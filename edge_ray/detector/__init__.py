"""A trained detector others can use: ``Detector.load(folder)`` then ``predict(images)``.

``runtime.py`` runs it, ``folder.py`` reads and writes the exported folder, ``export.py``
makes one from a training checkpoint (with ``card.py``'s model card), ``ray_predict.py``
runs it over many images with Ray Data; ``cli.py`` holds the export and predict commands.
The names below load lazily, so that importing a submodule (the CLI) does not import torch.
"""

# name -> the module that defines it
_EXPORTS = {"Detector": "edge_ray.detector.runtime", "Predictions": "edge_ray.detector.runtime",
            "FORMAT_VERSION": "edge_ray.detector.folder", "read_manifest": "edge_ray.detector.folder",
            "to_pixels": "edge_ray.data.transforms", "decode_error": "edge_ray.data.decode"}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'edge_ray.detector' has no attribute {name!r}")


__all__ = list(_EXPORTS)
