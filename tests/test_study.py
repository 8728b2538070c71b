"""edge_ray.compare.stats against independent references: the statistics module, scipy's
ttest_rel and its confidence interval, brute-force enumeration for Wilcoxon's exact p and
the step-down definition of Holm's procedure; and study_report's tables against the rows."""
import csv
from pathlib import Path
import itertools
import statistics

import numpy as np
import pytest
from scipy import stats

from edge_ray.compare import report as study_report
from edge_ray.compare import stats as study

SETS = ("ood_a", "ood_b")


def fake_runs(rng, methods=("bce", "oe", "edge"), seeds=(0, 1, 2, 3, 4), shift=None):
    """Per-run results in evaluate()'s layout with random metrics; ``shift`` adds a constant
    to EDGE's fpr95 (a real effect the tests must find)."""
    runs = []
    for method in methods:
        for seed in seeds:
            scores = {}
            for score in ("jointenergy", "maxlogit"):
                scores[score] = {}
                for s in SETS:
                    m = {k: float(rng.uniform(0.2, 0.8)) for k in study.METRICS}
                    if shift is not None and method == "edge":
                        m["fpr95"] = float(np.clip(m["fpr95"] * 0.02 + 0.5 + shift, 0, 1))
                    elif shift is not None:
                        m["fpr95"] = float(0.5 + m["fpr95"] * 0.02)
                    m["tail"] = None if (s == "ood_b" and seed == 0) else {k: float(rng.uniform(0, 1)) for k in study.METRICS}
                    scores[score][s] = m
            runs.append({"method": method, "seed": seed,
                         "result": {"map": float(rng.uniform(0.9, 1)), "ood_sets": {s: 10 for s in SETS}, "scores": scores}})
    return runs


def test_mean_std_matches_statistics_module():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 11):
        v = rng.normal(0.3, 0.1, n).tolist()
        mean, std = study.mean_std(v)
        assert mean == pytest.approx(statistics.fmean(v), rel=1e-14)
        assert std == pytest.approx(statistics.stdev(v), rel=1e-12)
    assert study.mean_std([0.25]) == (0.25, None)
    with pytest.raises(ValueError):
        study.mean_std([])


@pytest.mark.parametrize("n", [2, 3, 5, 8, 20])
def test_paired_t_matches_scipy(n):
    rng = np.random.default_rng(n)
    a, b = rng.normal(0.5, 0.1, n), rng.normal(0.48, 0.1, n)
    got, ref = study.paired_t(a - b), stats.ttest_rel(a, b)
    assert got["t"] == pytest.approx(ref.statistic, rel=1e-10)
    assert got["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    lo, hi = ref.confidence_interval(0.95)
    assert got["ci95"] == pytest.approx([lo, hi], rel=1e-9)
    assert got["mean"] == pytest.approx(float(np.mean(a - b)), rel=1e-12)


def test_paired_t_degenerate_cases():
    assert study.paired_t([0.1])["p"] is None
    assert study.paired_t([0.0, 0.0, 0.0])["p"] == 1.0
    assert study.paired_t([0.2, 0.2, 0.2])["p"] == 0.0


def wilcoxon_brute(d):
    """Exact two-sided p by enumerating all 2^n sign patterns of the ranks."""
    ranks = stats.rankdata(np.abs(d))
    observed = ranks[np.asarray(d) > 0].sum()
    mid = ranks.sum() / 2
    total = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=len(d))]
    return np.mean([abs(t - mid) >= abs(observed - mid) - 1e-12 for t in total])


@pytest.mark.parametrize("seed", range(6))
def test_wilcoxon_matches_enumeration(seed):
    rng = np.random.default_rng(seed)
    d = rng.normal(0.02, 0.05, 4 + seed)
    assert study.wilcoxon_p(d) == pytest.approx(wilcoxon_brute(d), rel=1e-9)
    assert study.wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)   # the floor at 5 seeds
    assert study.wilcoxon_p([0.0, 0.0]) == 1.0


def holm_stepdown_rejects(p, alpha):
    """Holm (1979) as a procedure: walk the sorted p's, reject while p_(k) <= alpha/(m-k+1)."""
    order = np.argsort(p, kind="stable")
    rejected = set()
    for k, i in enumerate(order):
        if p[i] > alpha / (len(p) - k):
            break
        rejected.add(int(i))
    return rejected


def test_holm_adjusted_p_matches_the_stepdown_procedure():
    rng = np.random.default_rng(1)
    for _ in range(200):
        p = rng.uniform(0, 0.2, rng.integers(1, 12)).tolist()
        adj = study.holm(p)
        assert all(a >= q for a, q in zip(adj, p)) and max(adj) <= 1
        for alpha in (0.01, 0.05, 0.1):
            assert {i for i, a in enumerate(adj) if a <= alpha} == holm_stepdown_rejects(p, alpha)
    assert study.holm([None, 0.01, 0.04]) == [None, 0.02, 0.04]


def test_cells_and_map_rows_are_per_seed_statistics():
    runs = fake_runs(np.random.default_rng(2))
    cells = study.cells(runs)
    assert len(cells) == 3 * 2 * 2 * 2 * 3          # methods x scores x sets x parts x metrics
    for c in cells:
        mine = [r for r in runs if r["method"] == c["method"]]
        vals = []
        for r in mine:
            m = r["result"]["scores"][c["score"]][c["ood_set"]]
            m = m if c["part"] == "all" else m["tail"]
            if m is not None:
                vals.append(m[c["metric"]])
        assert c["values"] == vals and c["n"] == len(vals)
        assert c["mean"] == pytest.approx(statistics.fmean(vals)) and c["std"] == pytest.approx(statistics.stdev(vals))
    tail_b = [c for c in cells if c["part"] == "tail" and c["ood_set"] == "ood_b"]
    assert all(c["n"] == 4 and c["seeds"] == [1, 2, 3, 4] for c in tail_b)   # seed 0 had no tail images
    maps = study.map_rows(runs)
    assert [m["method"] for m in maps] == ["bce", "oe", "edge"]
    assert maps[2]["mean"] == pytest.approx(statistics.fmean(r["result"]["map"] for r in runs if r["method"] == "edge"))


def test_paired_tests_find_a_real_effect_and_not_a_null_one():
    rng = np.random.default_rng(3)
    tests = study.paired_tests(fake_runs(rng, shift=-0.1))          # EDGE's FPR95 10 points lower
    fpr = [t for t in tests if t["metric"] == "fpr95"]
    assert {t["baseline"] for t in tests} == {"bce", "oe"} and len(tests) == 2 * 2 * 2 * 2
    assert all(t["verdict"] == "better" and t["mean_diff"] == pytest.approx(-0.1, abs=0.02) for t in fpr)
    null = study.paired_tests(fake_runs(np.random.default_rng(4)))
    assert sum(t["verdict"] != "noise" for t in null) <= 1            # random metrics: no effect
    worse = study.paired_tests(fake_runs(rng, shift=+0.1))
    assert all(t["verdict"] == "worse" for t in worse if t["metric"] == "fpr95")
    for t in tests:
        ref = stats.ttest_rel(*zip(*[(d, 0.0) for d in t["diffs"]]))
        assert t["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    family = [t for t in tests if t["score"] == "maxlogit"]
    assert [t["p_holm"] for t in family] == pytest.approx(study.holm([t["p"] for t in family]))
    assert study.paired_tests(fake_runs(rng, methods=("bce", "oe"))) == []   # no EDGE, nothing to test


def test_report_tables_show_the_rows(tmp_path):
    runs = fake_runs(np.random.default_rng(5), shift=-0.1)
    payload = {"methods": ["bce", "oe", "edge"], "seeds": [0, 1, 2, 3, 4], "runs": runs,
               "summary": study.cells(runs), "map": study.map_rows(runs), "tests": study.paired_tests(runs),
               "map_tests": study.paired_map_tests(runs)}
    paths = study_report.write_study(tmp_path, payload)
    md = Path(paths["markdown"]).read_text()
    edge = next(c for c in payload["summary"] if c["method"] == "edge" and c["score"] == "jointenergy"
                and c["ood_set"] == "ood_a" and c["part"] == "all" and c["metric"] == "fpr95")
    row = next(line for line in md.splitlines() if line.startswith("| EDGE |"))
    assert f"{100 * edge['mean']:.1f} ± {100 * edge['std']:.1f}" in row
    assert "| OE | a | 5 |" in md and "better / " in md
    assert "ID test mAP" in md and "| BCE | 5 | " in md and " of 5 seeds |" in md
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(payload["summary"]) + 3
    for r in rows[:-3]:
        vals = [float(v) for v in r["values"].split(";")]
        assert float(r["mean"]) == pytest.approx(statistics.fmean(vals), rel=1e-12)
    from PIL import Image
    with Image.open(paths["plots"][0]) as im:
        im.verify()


def test_paired_map_tests_match_scipy_and_holm():
    runs = fake_runs(np.random.default_rng(6))
    rows = study.paired_map_tests(runs)
    assert [r["baseline"] for r in rows] == ["bce", "oe"]
    maps = {(r["method"], r["seed"]): r["result"]["map"] for r in runs}
    for row in rows:
        a = [maps[("edge", s)] for s in row["seeds"]]
        b = [maps[(row["baseline"], s)] for s in row["seeds"]]
        assert row["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)
        assert row["mean_diff"] == pytest.approx(statistics.fmean(x - y for x, y in zip(a, b)))
    assert [r["p_holm"] for r in rows] == pytest.approx(study.holm([r["p"] for r in rows]))
    assert study.paired_map_tests(fake_runs(np.random.default_rng(7), methods=("bce", "oe"))) == []
