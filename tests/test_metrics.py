"""Metrics against scikit-learn and brute-force references, ties included."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from edge_ray import metrics


def brute_fpr95(id_s, ood_s):
    # Largest t among all candidate values with >= 95% of ID scores >= t (loop over candidates).
    best = None
    for t in sorted(set(id_s) | set(ood_s)):
        if np.sum(id_s >= t) * 20 >= 19 * len(id_s):
            best = t
    return np.mean(ood_s >= best)


def cases():
    rng = np.random.default_rng(0)
    out = []
    for n_id, n_ood in [(1, 1), (7, 3), (100, 250), (1000, 40)]:
        out.append((rng.normal(1, 1, n_id), rng.normal(0, 1, n_ood)))
        # heavy ties: integer scores
        out.append((rng.integers(0, 4, n_id).astype(float), rng.integers(0, 4, n_ood).astype(float)))
    out.append((np.array([100.0, -100.0, 5.0]), np.array([-100.0, 100.0])))
    return out


@pytest.mark.parametrize("id_s,ood_s", cases())
def test_ood_metrics_vs_sklearn(id_s, ood_s):
    m = metrics.ood_metrics(id_s, ood_s)
    s = np.r_[id_s, ood_s]
    y = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    assert m["fpr95"] == pytest.approx(brute_fpr95(id_s, ood_s), abs=1e-12)
    assert all(0 <= v <= 1 for v in m.values())


def test_fpr95_known_answer():
    id_s = np.arange(1, 101, dtype=float)  # 95% of ID >= 6
    ood_s = np.array([5.0, 6.0, 7.0, 100.0])
    assert metrics.fpr_at_95_tpr(id_s, ood_s) == 0.75


def test_map_vs_sklearn():
    rng = np.random.default_rng(1)
    for n, c in [(5, 3), (50, 20), (200, 80)]:
        s = rng.normal(size=(n, c))
        s[:, 0] = np.round(s[:, 0])  # ties
        t = (rng.random((n, c)) < 0.2).astype(int)
        t[:, -1] = 0  # a class without positives is skipped
        ref = np.mean([average_precision_score(t[:, j], s[:, j]) for j in range(c) if t[:, j].any()])
        assert metrics.mean_average_precision(s, t) == pytest.approx(ref, abs=1e-12)


def test_head_tail_curve_brute_force():
    rng = np.random.default_rng(2)
    n, c = 300, 6
    counts = np.array([10, 500, 40, 200, 3, 70])
    t = (rng.random((n, c)) < np.array([0.05, 0.6, 0.1, 0.4, 0.02, 0.15])).astype(int)
    id_s = rng.normal(size=n) + t.sum(1)
    ood_s = rng.normal(size=80)
    rows = metrics.head_tail_curve(id_s, t, ood_s, counts, min_remaining=10)
    order = [1, 3, 5, 2, 0, 4]
    for row in rows:
        j = row["removed"]
        keep = np.array([not any(t[i, order[q]] for q in range(j)) for i in range(n)])
        assert row["remaining"] == keep.sum() >= 10
        assert row["fpr95"] == pytest.approx(brute_fpr95(id_s[keep], ood_s))
        assert row["auroc"] == pytest.approx(
            roc_auc_score(np.r_[np.ones(keep.sum()), np.zeros(80)], np.r_[id_s[keep], ood_s]))
    assert rows[0]["remaining"] == n and rows[1]["removed_class"] == 1
    # it stopped because the next removal would leave fewer than 10 (or all classes removed)
    last = rows[-1]["removed"]
    if last < c:
        nxt = np.array([not any(t[i, order[q]] for q in range(last + 1)) for i in range(n)])
        assert nxt.sum() < 10


def test_tail_only_mask():
    counts = [100, 50, 10, 5, 1, 1]  # head = 2 most frequent of 6
    t = np.array([[1, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]])
    assert metrics.tail_only_mask(t, counts).tolist() == [False, True, False, False]


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.ood_metrics([1.0, np.nan], [0.0])
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.ood_metrics([1.0], [np.inf])
    with pytest.raises(ValueError, match="empty"):
        metrics.ood_metrics([], [1.0])
    with pytest.raises(ValueError, match="empty"):
        metrics.ood_metrics([1.0], [])
    with pytest.raises(ValueError, match=r"shape \(3, 2\).*\(3, 3\)"):
        metrics.mean_average_precision(np.zeros((3, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="0/1"):
        metrics.mean_average_precision(np.zeros((3, 2)), np.full((3, 2), 2))
    with pytest.raises(ValueError, match="1-D"):
        metrics.ood_metrics(np.zeros((2, 2)), [1.0])


@pytest.mark.parametrize("tpr", [0.95, 0.9, 0.5, 1.0, 0.01, 0.999])
@pytest.mark.parametrize("id_s,_", cases())
def test_tpr_threshold_vs_brute_force(id_s, _, tpr):
    # The largest candidate t with at least tpr of the ID scores >= t, counted exactly.
    from fractions import Fraction

    level = Fraction(str(tpr))
    best = max(t for t in set(id_s) if np.sum(id_s >= t) * level.denominator >= level.numerator * len(id_s))
    t = metrics.tpr_threshold(id_s, tpr)
    assert t == best
    kept = np.mean(id_s >= t)
    assert kept >= tpr - 1e-12
    if len(set(id_s)) == len(id_s):  # without ties it keeps less than one sample more than asked
        assert kept < tpr + 1 / len(id_s) + 1e-12


@pytest.mark.parametrize("tpr", [0.95, 0.5, 1.0, 0.01])
@pytest.mark.parametrize("id_s,_", cases())
def test_separating_threshold_keeps_the_same_samples_with_a_margin(id_s, _, tpr):
    """Midway between the FPR95 rule's threshold and the next lower distinct score (brute
    force): the same samples kept, none of them within float noise of it."""
    top = metrics.tpr_threshold(id_s, tpr)
    t = metrics.separating_threshold(id_s, tpr)
    assert np.array_equal(id_s >= t, id_s >= top)
    lower = [s for s in set(id_s) if s < top]
    if lower:
        assert t == pytest.approx((top + max(lower)) / 2, rel=1e-12, abs=1e-12)
    else:
        assert top - 2e-6 * max(1, abs(top)) < t < top


def test_tpr_threshold_bad_input():
    with pytest.raises(ValueError, match="tpr must lie in"):
        metrics.tpr_threshold([1.0, 2.0], 1.5)
    with pytest.raises(ValueError, match="tpr must lie in"):
        metrics.tpr_threshold([1.0, 2.0], 0)
    with pytest.raises(ValueError, match="ID scores is empty"):
        metrics.tpr_threshold([], 0.95)


def test_best_f1_thresholds_vs_brute_force():
    rng = np.random.default_rng(4)
    n, c = 60, 5
    p = np.round(rng.random((n, c)), 2)  # ties
    t = (rng.random((n, c)) < 0.3).astype(int)
    t[:, -1] = 0  # no positive: keeps the default
    got = metrics.best_f1_thresholds(p, t, default=0.4)
    for j in range(c):
        if not t[:, j].any():
            assert got[j] == 0.4
            continue
        def f1(th):
            pred = p[:, j] >= th
            tp = np.sum(pred & (t[:, j] == 1))
            return 2 * tp / (pred.sum() + t[:, j].sum())
        scores = {th: f1(th) for th in np.unique(p[:, j])}
        best = max(scores.values())
        assert f1(got[j]) == pytest.approx(best, abs=1e-12)
        assert got[j] == max(th for th, v in scores.items() if v == best)
