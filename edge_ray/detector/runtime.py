"""A trained detector others can use: an exported folder, loaded and run on new images.

    det = edge_ray.Detector.load("models/tiny-edge")            # a local path or s3://, gs://, file://
    out = det.predict(["a.jpg", pil_image, png_bytes, uint8_array])
    out.labels[0], out.probabilities[0], out.scores[0], out.is_unknown[0]

The folder (``FORMAT_VERSION`` 1; ``launch.py export`` writes it, ``edge_ray.detector.export``):

  model.safetensors        the network's weights (safetensors: data only, never pickle)
  score_state.safetensors  the fitted state of the OOD score (Mahalanobis means and precision,
                           ReAct's clip and head, ViM's subspace, ASH's head); absent for
                           scores without one (JointEnergy, MaxLogit, ...)
  config.json              the training run's resolved config
  model_card.md / .json    what the model is, how it was trained and how it scored (export)
  detector.json            format and version, backbone, classes, preprocessing, the score
                           and its parameters, the OOD threshold with the TPR it keeps on ID
                           validation data and the ID score quantiles, the per-class label
                           thresholds, and the sha256 of every other file. Written last: a
                           half-written folder does not load.

Decision rule (DESIGN.md §3): the score is higher for more in-distribution images, and
``is_unknown = score < threshold``. Labels are the classes whose sigmoid probability is >=
their label threshold (0.5 unless exported otherwise); they are given for unknown images too.

Images go through exactly the evaluation pipeline: ``edge_ray.data.transforms.decode_image``
(JPEG, PNG or WebP bytes to RGB), the run's eval transform (resize to image_size x image_size,
antialiased) and the batched ToTensor + Normalize, so a score here equals ``eval``'s.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from edge_ray import storage
from edge_ray.data import transforms
from edge_ray.scores import build_scorer
from edge_ray.scores.base import sigmoid

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


@dataclass
class Predictions:
    """What ``Detector.predict`` returns, one row per input image (failed images: NaN
    probabilities and score, no labels, ``is_unknown`` False and the reason in ``errors``)."""

    classes: tuple
    probabilities: np.ndarray  # float64 [N, C], sigmoid of each class logit
    predicted: np.ndarray      # bool [N, C], probability >= the class's label threshold
    scores: np.ndarray         # float64 [N], higher = more in-distribution
    is_unknown: np.ndarray     # bool [N], score < the detector's threshold
    errors: list               # [N] None, or why the image could not be read

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def labels(self) -> list[list[str]]:
        return [[self.classes[c] for c in np.flatnonzero(row)] for row in self.predicted]

    def rows(self) -> list[dict]:
        """One dict per image: labels, probabilities, score, is_unknown, error."""
        return [{"labels": None if err else labels, "probabilities": None if err else p.tolist(),
                 "score": None if err else float(s), "is_unknown": None if err else bool(u), "error": err}
                for labels, p, s, u, err in zip(self.labels, self.probabilities, self.scores,
                                                self.is_unknown, self.errors)]


def decode_error(data: bytes, err: BaseException) -> str:
    """One line saying why encoded bytes did not give an image."""
    if not data:
        return "empty file (0 bytes)"
    if isinstance(err, Image.UnidentifiedImageError):
        return "not a JPEG, PNG or WebP image"
    text = (str(err).strip().splitlines() or [""])[0][:200]
    return f"corrupt or truncated image ({type(err).__name__}: {text})"


def to_pixels(image, transform) -> np.ndarray:
    """uint8 [S, S, 3]: one image after decoding and the eval transform's resize, the same
    pixels as the evaluation loader's (`reader.decode_batch`: the same decode and uint8 resize).

    ``image``: encoded bytes (JPEG, PNG, WebP), a PIL image, a uint8 array or tensor
    ([H, W], [H, W, C] or [C, H, W] with C in 1, 3, 4), or a location (path or URI) of a file.
    Raises ValueError with one line on anything else or on bytes that do not decode."""
    if isinstance(image, (str, os.PathLike)):
        image = storage.read_bytes(storage.normalize(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        try:
            img = transforms.decode_image(data, min_size=transform.min_decode_size)
            return _resized(img, transform)
        except Exception as err:  # PIL raises many types for corrupt or hostile bytes
            raise ValueError(decode_error(data, err)) from err
    if isinstance(image, Image.Image):
        return _resized(image, transform)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        return _resized(Image.fromarray(_hwc(image)), transform)
    raise ValueError(f"cannot read an image from {type(image).__name__}; pass encoded bytes, a PIL "
                     "image, a uint8 array or tensor, or a file location")


def _resized(img: Image.Image, transform) -> np.ndarray:
    """RGB uint8 [S, S, 3] as the evaluation loader resizes it (torch's uint8 antialiased
    resize; PIL's own differs by up to one level when shrinking)."""
    return np.ascontiguousarray(transform.geometric_uint8(img).permute(1, 2, 0).numpy())


def _hwc(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8 (0..255), got {a.dtype}")
    if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # [C, H, W] -> [H, W, C]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ValueError(f"image array of shape {a.shape}: expected [H, W], [H, W, C] or [C, H, W]")
    return np.ascontiguousarray(a)


class Detector:
    """A multi-label classifier with an OOD score and a threshold on it (module docstring)."""

    def __init__(self, model, *, arch: dict, classes, image_size: int, mean, std, scorer, threshold: float,
                 label_thresholds=None, threshold_info: dict | None = None, config: dict | None = None,
                 device: str = "cpu"):
        if len(classes) != model.num_classes:
            raise ValueError(f"{len(classes)} class names for a model with {model.num_classes} classes")
        if not scorer.fitted:
            raise ValueError(f"score {scorer.name} is not fitted; fit it on the ID training set first")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.arch = {"name": str(arch["name"]), "width": int(arch.get("width", 32))}  # what build_model needs
        self.classes = tuple(str(c) for c in classes)
        self.transform = transforms.eval_transform(image_size, mean=mean, std=std)
        self.scorer, self.threshold = scorer, float(threshold)
        lt = np.full(len(classes), 0.5) if label_thresholds is None else np.asarray(label_thresholds, float)
        if lt.shape != (len(classes),) or not ((lt >= 0) & (lt <= 1)).all():
            raise ValueError(f"label thresholds must be {len(classes)} values in [0, 1], got {lt.tolist()}")
        self.label_thresholds = lt
        self.threshold_info = dict(threshold_info or {})
        self.config = dict(config or {})

    # ---- running --------------------------------------------------------------------------
    def pixels(self, image) -> np.ndarray:
        """uint8 [S, S, 3] of one image (``to_pixels`` with this detector's transform)."""
        return to_pixels(image, self.transform)

    def predict_pixels(self, pixels: np.ndarray, *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities float64 [N, C], scores float64 [N]) of uint8 [N, S, S, 3] pixels."""
        probs, scores = [], []
        for start in range(0, len(pixels), batch_size):
            x = transforms.to_normalized_batch(pixels[start:start + batch_size], self.transform.mean,
                                               self.transform.std).to(self.device)
            with torch.no_grad():
                feats = self.model.forward_features(x)
                logits = self.model.forward_head(feats)
            feats, logits = feats.float().cpu().numpy(), logits.float().cpu().numpy()
            probs.append(sigmoid(logits.astype(np.float64)))
            if self.scorer.needs_inputs:  # ODIN: a gradient step on the input, another forward
                std = torch.tensor(self.transform.std, dtype=torch.float32, device=self.device)
                scores.append(self.scorer.score_inputs(self.model, x, input_std=std))
            else:
                scores.append(self.scorer.score(features=feats, logits=logits))
        if not probs:
            return np.zeros((0, len(self.classes))), np.zeros(0)
        return np.concatenate(probs), np.concatenate(scores)

    def predict(self, images, *, batch_size: int = 64, on_error: str = "raise") -> Predictions:
        """Labels, probabilities, OOD score and is_unknown for each image (see ``to_pixels``
        for what an image may be). ``on_error="record"`` gives an image that cannot be read a
        row with its reason in ``errors`` instead of raising."""
        if on_error not in ("raise", "record"):
            raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}")
        images = list(images)
        size = self.transform.image_size
        pixels, errors = np.zeros((len(images), size, size, 3), np.uint8), [None] * len(images)
        for i, image in enumerate(images):
            try:
                pixels[i] = self.pixels(image)
            except (ValueError, OSError) as err:
                if on_error == "raise":
                    raise ValueError(f"image {i}: {err}") from err
                errors[i] = str(err)
        ok = np.array([e is None for e in errors], dtype=bool)
        probs = np.full((len(images), len(self.classes)), np.nan)
        scores = np.full(len(images), np.nan)
        probs[ok], scores[ok] = self.predict_pixels(pixels[ok], batch_size=batch_size)
        return self.decide(probs, scores, errors)

    def decide(self, probabilities: np.ndarray, scores: np.ndarray, errors=None) -> Predictions:
        """Apply the label thresholds and the OOD threshold."""
        errors = list(errors) if errors is not None else [None] * len(scores)
        ok = np.array([e is None for e in errors], dtype=bool)
        predicted = (probabilities >= self.label_thresholds) & ok[:, None]
        return Predictions(self.classes, probabilities, predicted, scores, (scores < self.threshold) & ok, errors)

    # ---- the folder -----------------------------------------------------------------------
    def manifest(self) -> dict:
        m = self.model
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "written_by": f"edge-ray {_version()}",
                "model": {**self.arch, "num_classes": m.num_classes, "feature_dim": m.feature_dim},
                "classes": list(self.classes),
                "preprocess": {"image_size": self.transform.image_size, "mean": list(self.transform.mean),
                               "std": list(self.transform.std),
                               "steps": "decode (JPEG/PNG/WebP) -> RGB -> resize to image_size x image_size "
                                        "(antialiased bilinear) -> /255 -> (x - mean) / std"},
                "score": {"name": self.scorer.name, "params": self.scorer.params,
                          "state": SCORE_STATE if self.scorer.needs_fit else None,
                          "convention": "higher = more in-distribution"},
                "threshold": {"value": self.threshold, "rule": "is_unknown = score < value", **self.threshold_info},
                "label_thresholds": self.label_thresholds.tolist()}

    def save(self, location: str, *, extra_files: dict | None = None, overwrite: bool = False) -> str:
        """Write the folder to ``location`` (``edge_ray.storage``); ``extra_files`` (name ->
        bytes, e.g. the model card) go in too and are listed with their checksums."""
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
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        files = {WEIGHTS: save_tensors(state), CONFIG: (json.dumps(self.config, indent=1) + "\n").encode()}
        if self.scorer.needs_fit:
            files[SCORE_STATE] = save_arrays({k: np.asarray(v, dtype=np.float64)
                                              for k, v in self.scorer.state_dict().items()})
        files.update(extra_files or {})
        for name, data in files.items():
            storage.write_bytes(storage.join(location, name), data)
        manifest = self.manifest()
        manifest["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
        storage.write_json(manifest_at, manifest, indent=1)
        return location

    @classmethod
    def load(cls, location: str, *, device: str = "cpu") -> "Detector":
        """A detector from an exported folder; a folder of another format version, a missing
        or altered file is refused with a message that says what to do."""
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
    model = build_model(spec["name"], int(spec["num_classes"]), width=int(spec.get("width", 32)))
    try:
        model.load_state_dict(load_tensors(weights))
    except RuntimeError as err:
        raise ValueError(f"{storage.join(location, WEIGHTS)} does not fit a {spec['name']} with "
                         f"{spec['num_classes']} classes ({str(err).splitlines()[0]})") from None
    return model


__all__ = ["Detector", "Predictions", "FORMAT_VERSION", "read_manifest", "to_pixels", "decode_error"]
