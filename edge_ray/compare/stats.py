"""Methods x seeds: whether a difference between trainings is larger than seed noise.

Input: one record per finished run, ``{"method", "seed", "result"}``, where ``result`` is
``evaluation.evaluate``'s public dict (``scores -> OOD set -> {fpr95, auroc, aupr_in, tail}``
and ``map``). Output: mean and standard deviation over seeds of every metric per method x
score x OOD set (all ID test images and tail-only ones), of ID mAP per method, and a paired
test of EDGE against each baseline per score x OOD set x metric. Pure numpy / scipy.

The statistics, and why:
- ``std`` is the sample standard deviation (ddof = 1): the seeds are a sample of the seeds
  one could have run. It is None for a single seed.
- Runs are paired by seed: the same seed gives every method the same initial weights and
  the same ID data order, so the per-seed difference EDGE - baseline removes that share of
  the noise. The test is Student's paired t-test, two-sided. Not Wilcoxon's signed-rank
  test: every exact distribution-free paired test on n seeds has a smallest two-sided p of
  2 / 2^n, 0.0625 at 5 seeds, so it could never call a difference at 5 seeds. The t-test
  assumes roughly normal differences; Wilcoxon's p is kept beside it as a check.
- Holm's step-down correction within each score's family of tests (baselines x OOD sets x
  metrics): 3 baselines x 6 sets x 2 metrics are 36 tests, and about two of them would pass
  p < 0.05 by chance alone.
- A test's verdict: EDGE ``better`` or ``worse`` when the Holm-adjusted p < 0.05, in the
  direction of the mean difference; ``noise`` (within seed noise) otherwise.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

METRICS = ("fpr95", "auroc", "aupr_in")
TESTED = ("fpr95", "auroc")
LOWER_IS_BETTER = ("fpr95",)
PARTS = ("all", "tail")
ALPHA = 0.05


def mean_std(values) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof = 1; None for one value)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_std needs at least one value")
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def _by_method(runs: list[dict]) -> dict:
    """``{method: [run, ...]}`` in the order methods first appear, each list by seed."""
    out: dict = {}
    for run in runs:
        out.setdefault(run["method"], []).append(run)
    return {m: sorted(rs, key=lambda r: r["seed"]) for m, rs in out.items()}


def _common_scores(runs: list[dict]) -> list[str]:
    first = list(runs[0]["result"]["scores"])
    return [s for s in first if all(s in r["result"]["scores"] for r in runs)]


def _metric(run: dict, score: str, ood_set: str, part: str, metric: str):
    m = run["result"]["scores"][score][ood_set]
    m = m if part == "all" else m.get("tail")
    return None if m is None else m[metric]


def cells(runs: list[dict]) -> list[dict]:
    """One row per method x score x OOD set x part x metric: ``n``, ``mean``, ``std`` and the
    per-seed ``values`` (fractions, as the metrics), ``seeds`` in the same order."""
    rows = []
    for method, rs in _by_method(runs).items():
        sets = list(rs[0]["result"]["ood_sets"])
        for score in _common_scores(rs):
            for ood_set in sets:
                for part in PARTS:
                    for metric in METRICS:
                        pairs = [(r["seed"], _metric(r, score, ood_set, part, metric)) for r in rs]
                        pairs = [(s, v) for s, v in pairs if v is not None]
                        if not pairs:
                            continue
                        mean, std = mean_std([v for _, v in pairs])
                        rows.append({"method": method, "score": score, "ood_set": ood_set, "part": part,
                                     "metric": metric, "n": len(pairs), "mean": mean, "std": std,
                                     "seeds": [s for s, _ in pairs], "values": [v for _, v in pairs]})
    return rows


def map_rows(runs: list[dict]) -> list[dict]:
    """ID test mAP per method: ``n``, ``mean``, ``std``, ``seeds``, ``values``."""
    rows = []
    for method, rs in _by_method(runs).items():
        mean, std = mean_std([r["result"]["map"] for r in rs])
        rows.append({"method": method, "n": len(rs), "mean": mean, "std": std,
                     "seeds": [r["seed"] for r in rs], "values": [r["result"]["map"] for r in rs]})
    return rows


def paired_t(diffs) -> dict:
    """Two-sided paired t-test on per-seed differences, with the 95% confidence interval of
    the mean difference. ``p`` is None below two pairs; with zero spread it is 1 when every
    difference is 0 and 0 otherwise (the t statistic is then infinite)."""
    d = np.asarray(diffs, dtype=np.float64)
    n = int(d.size)
    mean = float(d.mean()) if n else float("nan")
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "t": None, "p": None, "ci95": None}
    sd = float(d.std(ddof=1))
    if np.ptp(d) == 0.0:  # all equal: sd is 0 up to rounding, t is undefined or infinite
        return {"n": n, "mean": mean, "sd": 0.0, "t": None, "p": 1.0 if mean == 0 else 0.0,
                "ci95": [mean, mean]}
    se = sd / math.sqrt(n)
    t = mean / se
    half = float(stats.t.ppf(0.975, n - 1)) * se
    return {"n": n, "mean": mean, "sd": sd, "t": t, "p": float(2 * stats.t.sf(abs(t), n - 1)),
            "ci95": [mean - half, mean + half]}


def wilcoxon_p(diffs) -> float | None:
    """Two-sided Wilcoxon signed-rank p (zero differences dropped; scipy's exact
    distribution, or an exact permutation when |differences| tie, up to 50 seeds)."""
    d = np.asarray(diffs, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return 1.0 if len(diffs) else None
    return float(stats.wilcoxon(d, alternative="two-sided").pvalue)


def holm(pvalues: list) -> list:
    """Holm's step-down adjusted p-values (None stays None and is not counted)."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    m, out, running = len(idx), list(pvalues), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def _verdict(metric: str, mean_diff: float, p_adj) -> str:
    if p_adj is None or p_adj >= ALPHA:
        return "noise"
    better = mean_diff < 0 if metric in LOWER_IS_BETTER else mean_diff > 0
    return "better" if better else "worse"


def paired_tests(runs: list[dict], reference: str = "edge", metrics=TESTED) -> list[dict]:
    """``reference`` against every other method, per score x OOD set x metric (all ID test
    images), on the seeds both ran; differences are reference - baseline."""
    groups = _by_method(runs)
    if reference not in groups:
        return []
    ref = {r["seed"]: r for r in groups[reference]}
    rows = []
    for baseline, rs in groups.items():
        if baseline == reference:
            continue
        base = {r["seed"]: r for r in rs}
        seeds = sorted(set(ref) & set(base))
        if not seeds:
            continue
        both = [ref[s] for s in seeds] + [base[s] for s in seeds]
        for score in _common_scores(both):
            for ood_set in ref[seeds[0]]["result"]["ood_sets"]:
                for metric in metrics:
                    d = [_metric(ref[s], score, ood_set, "all", metric) - _metric(base[s], score, ood_set, "all", metric)
                         for s in seeds]
                    t = paired_t(d)
                    rows.append({"reference": reference, "baseline": baseline, "score": score,
                                 "ood_set": ood_set, "metric": metric, "seeds": seeds, "diffs": d,
                                 "n": t["n"], "mean_diff": t["mean"], "sd_diff": t["sd"], "t": t["t"],
                                 "ci95": t["ci95"], "p": t["p"], "p_wilcoxon": wilcoxon_p(d)})
    for score in {r["score"] for r in rows}:
        family = [r for r in rows if r["score"] == score]
        for r, p_adj in zip(family, holm([r["p"] for r in family])):
            r["p_holm"] = p_adj
            r["verdict"] = _verdict(r["metric"], r["mean_diff"], p_adj)
    return rows


def paired_map_tests(runs: list[dict], reference: str = "edge") -> list[dict]:
    """ID test mAP, ``reference`` - each baseline, paired by seed (one test per baseline; a
    family of its own, so Holm over the baselines)."""
    groups = _by_method(runs)
    if reference not in groups:
        return []
    ref = {r["seed"]: r["result"]["map"] for r in groups[reference]}
    rows = []
    for baseline, rs in groups.items():
        base = {r["seed"]: r["result"]["map"] for r in rs}
        seeds = sorted(set(ref) & set(base))
        if baseline == reference or not seeds:
            continue
        d = [ref[s] - base[s] for s in seeds]
        t = paired_t(d)
        rows.append({"reference": reference, "baseline": baseline, "metric": "map", "seeds": seeds, "diffs": d,
                     "n": t["n"], "mean_diff": t["mean"], "sd_diff": t["sd"], "t": t["t"], "ci95": t["ci95"],
                     "p": t["p"], "p_wilcoxon": wilcoxon_p(d)})
    for r, p_adj in zip(rows, holm([r["p"] for r in rows])):
        r["p_holm"] = p_adj
        r["verdict"] = _verdict("map", r["mean_diff"], p_adj)
    return rows


def verdict_counts(tests: list[dict], score: str) -> dict:
    """``{baseline: {"better": n, "worse": n, "noise": n}}`` for one score's tests."""
    out: dict = {}
    for r in tests:
        if r["score"] == score:
            counts = out.setdefault(r["baseline"], {"better": 0, "worse": 0, "noise": 0})
            counts[r["verdict"]] += 1
    return out
