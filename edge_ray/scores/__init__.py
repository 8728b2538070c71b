"""Post-hoc OOD scores: a registry of name -> scorer class (ARCHITECTURE.md, "Scores").

Every scorer returns float64 ``[N]`` with HIGHER = MORE IN-DISTRIBUTION. Usage::

    scorer = build_scorer("react", percentile=90)
    if scorer.needs_fit:
        scorer.fit(FitData(features, logits, targets, weight, bias))   # ID training set
    s = scorer.score(features=feats, logits=logits)     # scorer.requires says which it reads
    s = scorer.score_inputs(model, x, input_std=std)    # only when scorer.needs_inputs (odin)

Fitted state round-trips through ``state_dict()`` / ``load_state_dict()`` (np.savez-able).
"""
from __future__ import annotations

import inspect

from edge_ray.scores.ash import ASH
from edge_ray.scores.base import FitData, Scorer
from edge_ray.scores.knn import KNN
from edge_ray.scores.logit import MSP, Energy, JointEnergy, MaxEnergy, MaxLogit
from edge_ray.scores.mahalanobis import Mahalanobis
from edge_ray.scores.odin import ODIN
from edge_ray.scores.react import ReAct
from edge_ray.scores.vim import ViM

SCORES: dict[str, type[Scorer]] = {cls.name: cls for cls in (
    MaxLogit, MSP, ODIN, Energy, Mahalanobis, ReAct, ViM, ASH, MaxEnergy, JointEnergy, KNN)}


def build_scorer(name: str, **params) -> Scorer:
    """A new scorer ``SCORES[name](**params)``; ValueError on an unknown name or parameter."""
    if name not in SCORES:
        raise ValueError(f"unknown score {name!r}; valid names: {', '.join(SCORES)}")
    cls = SCORES[name]
    valid = [p.name for p in inspect.signature(cls.__init__).parameters.values()
             if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for score {name!r}; valid: {valid or 'none'}")
    return cls(**params)


__all__ = ["SCORES", "FitData", "Scorer", "build_scorer", "MaxLogit", "MSP", "ODIN", "Energy",
           "Mahalanobis", "ReAct", "ViM", "ASH", "MaxEnergy", "JointEnergy", "KNN"]
