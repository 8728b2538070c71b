"""A trained detector others can use: an exported folder, loaded and run on new images.

    det = edge_ray.Detector.load("models/tiny-edge")            # a local path or s3://, gs://, file://
    out = det.predict(["a.jpg", pil_image, png_bytes, uint8_array])
    out.labels[0], out.probabilities[0], out.scores[0], out.is_unknown[0]

``save`` writes the folder ``load`` reads; its layout and format version: ``folder.py``.

Decision rule (ARCHITECTURE.md, "Scores"): the score is higher for more in-distribution images, and
``is_unknown = score < threshold``. Labels are the classes whose sigmoid probability is >=
their label threshold (0.5 unless exported otherwise); they are given for unknown images too.

Images go through exactly the evaluation pipeline: ``edge_ray.data.transforms.decode_image``
(JPEG, PNG or WebP bytes to RGB), the run's eval transform (resize to image_size x image_size,
antialiased) and the batched ToTensor + Normalize, so a score here equals ``eval``'s.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edge_ray.data import transforms
from edge_ray.detector import folder
from edge_ray.scores.base import sigmoid


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
        # what build_model needs: name and width; for a timm model (model.arch, set by build_model)
        # also the image size it was built at and timm's model name and version
        arch = {**getattr(model, "arch", {}), **arch}
        self.arch = {"name": str(arch["name"]), "width": int(arch.get("width", 32)),
                     **{k: arch[k] for k in ("image_size", "timm") if arch.get(k)}}
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
        """uint8 [S, S, 3] of one image (``transforms.to_pixels`` with this detector's transform)."""
        return transforms.to_pixels(image, self.transform)

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
        """Labels, probabilities, OOD score and is_unknown for each image (see
        ``transforms.to_pixels`` for what an image may be). ``on_error="record"`` gives an image
        that cannot be read a row with its reason in ``errors`` instead of raising."""
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

    # ---- the folder (folder.py) -----------------------------------------------------------
    def manifest(self) -> dict:
        return folder.build_manifest(self)

    def save(self, location: str, *, extra_files: dict | None = None, overwrite: bool = False) -> str:
        """Write the folder to ``location`` (``edge_ray.storage``); ``extra_files`` (name ->
        bytes, e.g. the model card) go in too and are listed with their checksums."""
        return folder.write_folder(self, location, extra_files=extra_files, overwrite=overwrite)

    @classmethod
    def load(cls, location: str, *, device: str = "cpu") -> "Detector":
        """A detector from an exported folder; a folder of another format version, a missing
        or altered file is refused with a message that says what to do."""
        return folder.read_folder(location, device=device, cls=cls)


__all__ = ["Detector", "Predictions"]
