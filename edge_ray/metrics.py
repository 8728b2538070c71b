"""OOD and multi-label metrics (ARCHITECTURE.md, "Conventions").

Convention: higher score = more in-distribution, and ID is the positive class.
All metrics are fractions in [0, 1], computed in float64 with exact tie handling.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from edge_ray.validation import as_float64_matrix, as_float64_vector, check_binary

TPR_LEVEL = (19, 20)  # 95% as an exact fraction, so ``0.95 * n`` never rounds the wrong way


def fpr_at_95_tpr(id_scores, ood_scores) -> float:
    """FPR95: the threshold is the largest ``t`` such that at least 95% of ID scores are >= t;
    the result is the fraction of OOD scores >= t.

    With the ID scores sorted high to low and ``k = ceil(0.95 n)``, every ``t`` in
    ``(s_(k+1), s_k]`` keeps the same ID images; FPR95 is the OOD fraction at the top of that
    interval, ``s_k`` (the smallest any such threshold gives). A deployed threshold is the
    interval's midpoint instead (``separating_threshold``). (The released code picks the
    threshold whose ID recall is *nearest* 0.95; this never reports a recall below 95%.)
    """
    ood_s = as_float64_vector(ood_scores, "OOD scores")
    threshold = tpr_threshold(id_scores, Fraction(*TPR_LEVEL))
    return float(np.mean(ood_s >= threshold))


def tpr_threshold(id_scores, tpr=Fraction(*TPR_LEVEL)) -> float:
    """The largest ``t`` such that at least a fraction ``tpr`` of the ID scores are >= t (the
    FPR95 rule above at any level): ``S(x) >= t`` keeps ``ceil(tpr * n)`` ID samples or more.

    ``tpr`` is taken as the decimal it is written as (0.95 -> 19/20 exactly), so ``tpr * n``
    never rounds the wrong way; it must lie in (0, 1].
    """
    id_s = np.sort(as_float64_vector(id_scores, "ID scores"))[::-1]  # refuses an empty set
    level = tpr if isinstance(tpr, Fraction) else Fraction(str(float(tpr)))
    if not 0 < level <= 1:
        raise ValueError(f"tpr must lie in (0, 1], got {float(level)}")
    needed = -(-level.numerator * id_s.size // level.denominator)  # ceil(tpr * n)
    return float(id_s[needed - 1])


def separating_threshold(id_scores, tpr=Fraction(*TPR_LEVEL)) -> float:
    """A threshold to deploy at ID recall ``tpr``: the midpoint between ``s_k =
    tpr_threshold(...)`` and the next lower distinct ID score, so ``S(x) >= t`` keeps exactly
    the ID samples ``tpr_threshold`` keeps, and recomputing a score with float noise (another
    batch size or kernel order moves it by ~1e-7 relative) cannot move a kept sample below it.
    Without a lower distinct score it lies ``1e-6 * max(1, |s_k|)`` below ``s_k``.
    """
    id_s = as_float64_vector(id_scores, "ID scores")
    top = tpr_threshold(id_s, tpr)
    below = id_s[id_s < top]
    if below.size:
        return float(top + (below.max() - top) / 2)
    return float(top - 1e-6 * max(1.0, abs(top)))


def best_f1_thresholds(probabilities, targets, *, default: float = 0.5) -> np.ndarray:
    """Per class, the probability threshold ``t`` (predict the class when ``p >= t``) with the
    highest F1 on the given (validation) set; the highest such ``t`` on ties. Candidates are
    the probabilities of the class's positives; a class without positives keeps ``default``."""
    p = as_float64_matrix(probabilities, "probabilities")
    t = np.asarray(targets)
    if t.shape != p.shape:
        raise ValueError(f"targets shape {t.shape} does not match probabilities shape {p.shape}")
    check_binary(t, "targets")
    out = np.full(p.shape[1], float(default))
    for c in range(p.shape[1]):
        positives = int(t[:, c].sum())
        if positives == 0:
            continue
        tps, fps = _binary_curve(p[:, c], t[:, c].astype(np.float64))
        thresholds = np.sort(np.unique(p[:, c]))[::-1]  # the distinct scores, as _binary_curve groups them
        f1 = 2 * tps / (tps + fps + positives)
        best = np.flatnonzero(f1 == f1.max())[0]       # the first = the highest threshold
        out[c] = thresholds[best]
    return out


def _binary_curve(scores: np.ndarray, labels: np.ndarray):
    """Cumulative true/false positives at each distinct threshold, scores descending."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_group = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tps = np.cumsum(y)[last_of_group]
    fps = (last_of_group + 1) - tps
    return tps, fps


def auroc(scores, labels) -> float:
    """Area under the ROC curve by the trapezoid rule over distinct thresholds (ties count 1/2)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    tps, fps = _binary_curve(scores, labels)
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def average_precision(scores, labels) -> float:
    """Average precision ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds
    (the step-wise definition scikit-learn uses; no interpolation)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    tps, fps = _binary_curve(scores, labels)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def ood_metrics(id_scores, ood_scores) -> dict:
    """FPR95, AUROC (ID = 1), AUPR-In (ID positive; the paper's AUPR) and AUPR-Out
    (OOD positive, scores negated)."""
    id_s = as_float64_vector(id_scores, "ID scores")
    ood_s = as_float64_vector(ood_scores, "OOD scores")
    scores = np.r_[id_s, ood_s]
    is_id = np.r_[np.ones(id_s.size), np.zeros(ood_s.size)]
    return {
        "fpr95": fpr_at_95_tpr(id_s, ood_s),
        "auroc": auroc(scores, is_id),
        "aupr_in": average_precision(scores, is_id),
        "aupr_out": average_precision(-scores, 1 - is_id),
    }


def mean_average_precision(scores, targets) -> float:
    """Mean over classes with at least one positive of the per-class average precision."""
    s = as_float64_matrix(scores, "scores")
    t = np.asarray(targets)
    if t.shape != s.shape:
        raise ValueError(f"targets shape {t.shape} does not match scores shape {s.shape}")
    check_binary(t, "targets")
    aps = [average_precision(s[:, c], t[:, c]) for c in range(s.shape[1]) if t[:, c].any()]
    if not aps:
        raise ValueError("no class has a positive sample; mAP is undefined")
    return float(np.mean(aps))


def classes_by_frequency(class_counts) -> np.ndarray:
    """Class indices from most to least frequent (stable for ties: lower index first)."""
    counts = np.asarray(class_counts)
    return np.argsort(-counts, kind="stable")


def head_classes(class_counts, head_fraction: float = 1 / 3) -> np.ndarray:
    """The ``ceil(C * head_fraction)`` most frequent classes (the paper's majority classes)."""
    order = classes_by_frequency(class_counts)
    return order[: int(np.ceil(len(order) * head_fraction))]


def tail_only_mask(targets, class_counts, head_fraction: float = 1 / 3) -> np.ndarray:
    """True for *tail* samples: every class they have is a minority class (paper §1)."""
    t = np.asarray(targets).astype(bool)
    return t.any(axis=1) & ~t[:, head_classes(class_counts, head_fraction)].any(axis=1)


def head_tail_curve(id_scores, id_targets, ood_scores, class_counts, *,
                    min_remaining: int = 20) -> list[dict]:
    """Paper Fig. 1(c,d) / Fig. 5: rank classes by training frequency; for j = 0, 1, 2, ...
    remove every ID test image that has any of the j most frequent classes, and recompute
    the OOD metrics on what remains. Stops before fewer than ``min_remaining`` ID images
    would remain. Each row: ``removed`` (j), ``removed_class`` (index of the j-th class),
    ``remaining`` (ID images kept) and the four metrics.
    """
    id_s = as_float64_vector(id_scores, "ID scores")
    t = np.asarray(id_targets).astype(bool)
    if t.ndim != 2 or t.shape[0] != id_s.size:
        raise ValueError(f"ID targets shape {t.shape} does not match {id_s.size} ID scores")
    if len(class_counts) != t.shape[1]:
        raise ValueError(f"{len(class_counts)} class counts for {t.shape[1]} classes")
    order = classes_by_frequency(class_counts)
    keep = np.ones(id_s.size, dtype=bool)
    rows = []
    for j in range(len(order) + 1):
        if j > 0:
            keep &= ~t[:, order[j - 1]]
        if keep.sum() < max(min_remaining, 1):
            break
        row = {"removed": j, "removed_class": int(order[j - 1]) if j else None,
               "remaining": int(keep.sum())}
        row.update(ood_metrics(id_s[keep], ood_scores))
        rows.append(row)
    return rows
