"""The exported detector folder: what ``Detector.save`` writes and ``Detector.load`` reads.

The folder (``FORMAT_VERSION`` 1; ``launch.py export`` writes it, ``edge_ray.detector.export``):

  model.safetensors        the network's weights (safetensors: data only, never pickle)
  score_state.safetensors  the fitted state of the OOD score (Mahalanobis means and precision,
                           ReAct's clip and head, ViM's subspace, ASH's head, KNN's bank of
                           normalised ID features, float32); absent for scores without one
                           (JointEnergy, MaxLogit, ...)
  config.json              the training run's resolved config
  model_card.md / .json    what the model is, how it was trained and how it scored (export)
  detector.json            format and version, backbone (for a timm model also the timm model
                           name, the image size it was built at and timm's version), classes,
                           preprocessing, the score
                           and its parameters, the OOD threshold with the TPR it keeps on ID
                           validation data and the ID score quantiles, the per-class label
                           thresholds, and the sha256 of every other file. Written last: a
                           half-written folder does not load.

A folder is a location of ``edge_ray.storage``: a local path or s3://, gs://, file://.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from edge_ray import storage
from edge_ray.scores import build_scorer

FORMAT = "edge-ray-detector"
FORMAT_VERSION = 1
MANIFEST = "detector.json"
WEIGHTS = "model.safetensors"
SCORE_STATE = "score_state.safetensors"
CONFIG = "config.json"


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("edge-ray")
    except Exception:  # noqa: BLE001 - a source checkout that was never installed
        return "unknown"


def build_manifest(detector) -> dict:
    """``detector.json`` of ``detector``, without the ``files`` checksums (``write_folder``)."""
    m, transform, scorer = detector.model, detector.transform, detector.scorer
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "written_by": f"edge-ray {_version()}",
            "model": {**detector.arch, "num_classes": m.num_classes, "feature_dim": m.feature_dim},
            "classes": list(detector.classes),
            "preprocess": {"image_size": transform.image_size, "mean": list(transform.mean),
                           "std": list(transform.std),
                           "steps": "decode (JPEG/PNG/WebP) -> RGB -> resize to image_size x image_size "
                                    "(antialiased bilinear) -> /255 -> (x - mean) / std"},
            "score": {"name": scorer.name, "params": scorer.params,
                      "state": SCORE_STATE if scorer.needs_fit else None,
                      "convention": "higher = more in-distribution"},
            "threshold": {"value": detector.threshold, "rule": "is_unknown = score < value",
                          **detector.threshold_info},
            "label_thresholds": detector.label_thresholds.tolist()}


def write_folder(detector, location: str, *, extra_files: dict | None = None, overwrite: bool = False) -> str:
    """Write ``detector``'s folder to ``location`` (``edge_ray.storage``); ``extra_files``
    (name -> bytes, e.g. the model card) go in too and are listed with their checksums.
    An existing detector there is refused unless ``overwrite``; its files are then deleted,
    ``detector.json`` first."""
    from safetensors.numpy import save as save_arrays
    from safetensors.torch import save as save_tensors

    location = storage.normalize(location)
    manifest_at = storage.join(location, MANIFEST)
    if storage.exists(manifest_at):
        if not overwrite:
            raise FileExistsError(f"{location} already holds a detector; pass --overwrite to replace it")
        try:
            old_files = list(json.loads(storage.read_bytes(manifest_at)).get("files", {}))
        except (ValueError, AttributeError):
            old_files = []
        storage.delete(manifest_at)  # first: a folder being replaced never loads half-old
        for name in old_files:  # a stale score state must not outlive its detector
            if "/" not in name and name != MANIFEST:
                storage.delete(storage.join(location, name))
    state = {k: v.detach().cpu().contiguous() for k, v in detector.model.state_dict().items()}
    files = {WEIGHTS: save_tensors(state), CONFIG: (json.dumps(detector.config, indent=1) + "\n").encode()}
    if detector.scorer.needs_fit:
        files[SCORE_STATE] = save_arrays({k: _stored(v) for k, v in detector.scorer.state_dict().items()})
    files.update(extra_files or {})
    for name, data in files.items():
        storage.write_bytes(storage.join(location, name), data)
    written = detector.manifest()
    written["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
    storage.write_json(manifest_at, written, indent=1)
    return location


def _stored(value) -> np.ndarray:
    """A score state array as saved: float32 stays float32 (KNN's feature bank), the rest
    float64."""
    arr = np.asarray(value)
    return arr if arr.dtype == np.float32 else np.asarray(arr, dtype=np.float64)


def read_folder(location: str, *, device: str = "cpu", cls=None):
    """A detector (an instance of ``cls``, by default ``Detector``) from the folder at
    ``location``; a folder of another format version, a missing or altered file is refused
    with a message that says what to do."""
    if cls is None:
        from edge_ray.detector.runtime import Detector as cls
    location = storage.normalize(location)
    manifest = read_manifest(location)
    data = {name: storage.read_bytes(storage.join(location, name)) for name in manifest["files"]}
    for name, digest in manifest["files"].items():
        if hashlib.sha256(data[name]).hexdigest() != digest:
            raise ValueError(f"{storage.join(location, name)} differs from the file the export wrote "
                             "(its checksum in detector.json does not match); export the detector again")
    model = _build_model(manifest, data[WEIGHTS], location)
    score = manifest["score"]
    scorer = build_scorer(score["name"], **score.get("params", {}))
    if scorer.needs_fit:
        from safetensors.numpy import load as load_arrays
        scorer.load_state_dict(load_arrays(data[score["state"]]))
    pre, threshold = manifest["preprocess"], manifest["threshold"]
    info = {k: v for k, v in threshold.items() if k not in ("value", "rule")}
    return cls(model, arch=manifest["model"], classes=manifest["classes"], image_size=pre["image_size"], mean=pre["mean"],
               std=pre["std"], scorer=scorer, threshold=threshold["value"],
               label_thresholds=manifest.get("label_thresholds"), threshold_info=info,
               config=json.loads(data[CONFIG]) if CONFIG in data else {}, device=device)


def read_manifest(location: str) -> dict:
    """``detector.json`` of a folder, checked for its format and version."""
    at = storage.join(location, MANIFEST)
    if not storage.is_file(at):
        raise FileNotFoundError(f"{location} is not a detector folder (no {MANIFEST}); export one with "
                                "`python launch.py export --checkpoint runs/<run> --out <folder>`")
    try:
        manifest = json.loads(storage.read_bytes(at))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{at} is not valid JSON ({err}); export the detector again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{at} is not an edge-ray detector (format {manifest.get('format') if isinstance(manifest, dict) else None!r}, "
                         f"expected {FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{location} is a detector of format version {version} (written by "
                         f"{manifest.get('written_by', 'an unknown version')}); this edge-ray reads version "
                         f"{FORMAT_VERSION} only: export the checkpoint again with this version, or load the "
                         "folder with the edge-ray that wrote it")
    missing = [k for k in ("model", "classes", "preprocess", "score", "threshold", "files") if k not in manifest]
    if missing or WEIGHTS not in manifest.get("files", {}):
        raise ValueError(f"{at} lacks {missing or [WEIGHTS]}; export the detector again")
    return manifest


def _build_model(manifest: dict, weights: bytes, location: str):
    from safetensors.torch import load as load_tensors

    from edge_ray.models.networks import build_model

    spec = manifest["model"]
    _check_timm_version(spec, location)
    image_size = spec.get("image_size") or manifest["preprocess"].get("image_size")
    model = build_model(spec["name"], int(spec["num_classes"]), width=int(spec.get("width", 32)),
                        image_size=int(image_size) if image_size else None)
    try:
        model.load_state_dict(load_tensors(weights))
    except RuntimeError as err:
        raise ValueError(f"{storage.join(location, WEIGHTS)} does not fit a {spec['name']} with "
                         f"{spec['num_classes']} classes ({str(err).splitlines()[0]})") from None
    return model


def _check_timm_version(spec: dict, location: str) -> None:
    """A timm backbone needs timm (the message names the version that exported it); another
    timm version than the exporter's loads the weights by name, with a warning."""
    recorded = (spec.get("timm") or {}).get("version")
    if not recorded:
        return
    from edge_ray.models import import_timm

    timm = import_timm(f"the detector in {location} ({spec['name']}, exported with timm {recorded})")
    if timm.__version__ != recorded:
        import warnings

        warnings.warn(f"{location}: exported with timm {recorded}, loading with timm {timm.__version__}; the "
                      f"weights load by name, and a change in timm's {spec['name']} code could change its "
                      f"features (pip install timm=={recorded} to match)", stacklevel=3)


__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "WEIGHTS", "SCORE_STATE", "CONFIG", "build_manifest",
           "write_folder", "read_folder", "read_manifest"]
