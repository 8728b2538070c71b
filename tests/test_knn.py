"""The KNN score (Sun et al. 2022) against a brute-force float64 numpy reference, its kept
share of the ID set, its float32 state through npz and the detector folder, and its refusals."""
import numpy as np
import pytest

from edge_ray.scores import SCORES, FitData, build_scorer
from edge_ray.scores.knn import EPS


def random_fit(n, d, c=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (5, d))
    feats = np.maximum(centres[rng.integers(0, 5, n)] + rng.normal(0, 0.7, (n, d)), 0).astype(np.float32)
    weight, bias = rng.normal(0, 0.3, (c, d)), rng.normal(0, 0.3, c)
    return FitData(feats, feats @ weight.T + bias, (rng.random((n, c)) < 0.4).astype(np.float32), weight, bias)


def reference(train: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    """-(distance to the k-th nearest normalised training row), float64, every pair."""
    a = train.astype(np.float64)
    a = a / (np.linalg.norm(a, axis=1, keepdims=True) + EPS)
    b = test.astype(np.float64)
    b = b / (np.linalg.norm(b, axis=1, keepdims=True) + EPS)
    dist = np.sqrt(((b[:, None, :] - a[None, :, :]) ** 2).sum(-1))
    return -np.sort(dist, axis=1)[:, k - 1]


@pytest.mark.parametrize("n,d,k", [(300, 16, 1), (300, 16, 50), (500, 64, 7), (120, 8, 120)])
def test_knn_equals_brute_force_float64(n, d, k):
    train, test = random_fit(n, d, seed=1), random_fit(80, d, seed=2)
    got = build_scorer("knn", k=k).fit(train).score(features=test.features)
    want = reference(train.features, test.features, k)
    assert got.dtype == np.float64 and got.shape == (80,)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    # higher = more ID: the ID training rows themselves score higher than far-away points
    far = -np.abs(test.features) - 5.0  # every coordinate negative: the opposite orthant
    assert build_scorer("knn", k=k).fit(train).score(features=far).max() < got.min()


def test_kept_share_is_a_seeded_random_subset():
    train, test = random_fit(400, 16, seed=3), random_fit(50, 16, seed=4)
    scorer = build_scorer("knn", k=10, keep=0.25, seed=7).fit(train)
    bank = scorer.state_dict()["bank"]
    assert bank.shape == (100, 16) and bank.dtype == np.float32
    rows = np.sort(np.random.default_rng(7).choice(400, 100, replace=False))
    np.testing.assert_allclose(scorer.score(features=test.features),
                               reference(train.features[rows], test.features, 10), atol=2e-6)
    again = build_scorer("knn", k=10, keep=0.25, seed=7).fit(train).state_dict()["bank"]
    assert np.array_equal(bank, again)
    assert not np.array_equal(bank, build_scorer("knn", k=10, keep=0.25, seed=8).fit(train).state_dict()["bank"])


def test_state_roundtrip_keeps_float32(tmp_path):
    from safetensors.numpy import load_file, save_file

    from edge_ray.detector.folder import _stored

    train, test = random_fit(200, 12, seed=5), random_fit(30, 12, seed=6)
    scorer = build_scorer("knn", k=5).fit(train)
    state = {k: _stored(v) for k, v in scorer.state_dict().items()}  # as the detector folder writes it
    assert state["bank"].dtype == np.float32
    save_file(state, str(tmp_path / "s.safetensors"))
    loaded = build_scorer("knn", **scorer.params).load_state_dict(load_file(str(tmp_path / "s.safetensors")))
    assert np.array_equal(loaded.score(features=test.features), scorer.score(features=test.features))


def test_defaults_and_refusals():
    scorer = build_scorer("knn")
    assert scorer.params == {"k": 50, "keep": 1.0, "seed": 0}   # the paper's CIFAR-10 setting
    assert SCORES["knn"].needs_fit and SCORES["knn"].requires == ("features",)
    for bad in ({"k": 0}, {"k": 2.5}, {"keep": 0}, {"keep": 1.5}):
        with pytest.raises(ValueError):
            build_scorer("knn", **bad)
    with pytest.raises(ValueError, match="k=50 neighbours but only 40 ID training features kept"):
        build_scorer("knn").fit(random_fit(40, 8))
    with pytest.raises(ValueError, match="only 10 ID training features kept"):
        build_scorer("knn", k=20, keep=0.1).fit(random_fit(100, 8))
    with pytest.raises(ValueError, match=r"need bank \[M, D\] with M >= k=50"):
        build_scorer("knn").load_state_dict({"bank": np.zeros((10, 4), np.float32)})
    with pytest.raises(ValueError, match="NaN or inf"):
        build_scorer("knn", k=1).load_state_dict({"bank": np.full((3, 4), np.nan, np.float32)})


def test_benchmark_smoke(tmp_path):
    """benchmarks/knn.py --smoke: both libraries run and agree with float64 numpy."""
    import json

    from benchmarks import knn as bench

    assert bench.main(["--smoke", "--json", str(tmp_path / "knn.json")]) == 0
    rows = json.loads((tmp_path / "knn.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"faiss", "sklearn"}
    assert all(r["max_abs_error_vs_float64"] < 1e-5 for r in rows)
