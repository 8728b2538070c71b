"""Every score against an independent float64 reference (numpy / scipy / scikit-learn),
plus a known-answer check on synthetic Gaussian features where ID and OOD are separable."""
import functools

import numpy as np
import pytest
import torch
from scipy.special import expit, logsumexp, softmax
from sklearn.covariance import EmpiricalCovariance
from sklearn.metrics import roc_auc_score

from edge_ray.scores import SCORES, FitData, build_scorer
from edge_ray.scores.vim import default_dim

SHAPES = [(1, 1), (7, 3), (60, 20), (200, 80)]                 # (N, C) for logit scores
HEADS = [(300, 8, 4), (400, 32, 10), (250, 48, 6)]               # (N, D, C) for feature scores


def softplus_ref(z):
    return torch.nn.functional.softplus(torch.as_tensor(z, dtype=torch.float64)).numpy()


def random_head(n, d, c, seed):
    """ReLU features, a random linear head, and multi-hot targets; the last class has no
    positive sample (Mahalanobis must skip it)."""
    rng = np.random.default_rng(seed)
    feats = np.maximum(rng.normal(0.5, 1.0, (n, d)), 0) + rng.uniform(0, 1e-3, (n, d))
    weight, bias = rng.normal(0, 1 / np.sqrt(d), (c, d)), rng.normal(0, 0.5, c)
    targets = (rng.random((n, c)) < 0.3).astype(np.float32)
    targets[:, -1] = 0
    targets[np.arange(n), rng.integers(0, max(c - 1, 1), n)] = 1
    return FitData(feats, feats @ weight.T + bias, targets, weight, bias)


def fitted(name, data, **params):
    return build_scorer(name, **params).fit(data)


# ---- logit scores ------------------------------------------------------------------------
@pytest.mark.parametrize("n,c", SHAPES)
def test_logit_scores_match_reference(n, c):
    f = np.random.default_rng(n * 100 + c).normal(0, 4, (n, c))
    assert np.allclose(build_scorer("maxlogit").score(logits=f), f.max(axis=1), rtol=0, atol=0)
    assert np.allclose(build_scorer("msp").score(logits=f), softmax(f, axis=1).max(axis=1), rtol=1e-12)
    assert np.allclose(build_scorer("energy").score(logits=f), logsumexp(f, axis=1), rtol=1e-12)
    assert np.allclose(build_scorer("energy", temperature=2.5).score(logits=f),
                       2.5 * logsumexp(f / 2.5, axis=1), rtol=1e-12)
    assert np.allclose(build_scorer("maxenergy").score(logits=f), softplus_ref(f).max(axis=1), rtol=1e-12)
    assert np.allclose(build_scorer("jointenergy").score(logits=f), softplus_ref(f).sum(axis=1), rtol=1e-12)
    for name in SCORES:
        if not build_scorer(name).needs_fit and name != "odin":
            out = build_scorer(name).score(logits=f.astype(np.float32))
            assert out.dtype == np.float64 and out.shape == (n,)


def test_logit_scores_extreme_logits_stay_finite():
    f = np.array([[100.0, -100.0, 0.0], [-100.0, -100.0, -100.0], [100.0, 100.0, 100.0],
                  [1000.0, -1000.0, 5.0]])
    for name in ("maxlogit", "msp", "energy", "maxenergy", "jointenergy"):
        assert np.isfinite(build_scorer(name).score(logits=f)).all(), name
    joint = build_scorer("jointenergy").score(logits=f)
    assert joint[2] == pytest.approx(300.0) and joint[1] == pytest.approx(3 * np.exp(-100.0), rel=1e-12)
    assert build_scorer("msp").score(logits=f)[1] == pytest.approx(1 / 3, rel=1e-12)
    assert build_scorer("energy").score(logits=f)[2] == pytest.approx(100 + np.log(3))
    assert build_scorer("odin", eps=0.0).score(logits=f)[3] == pytest.approx(expit(1.0))


def msp_ref(f):
    """max_c exp(f_c) / sum_c' exp(f_c') with 50-digit arithmetic (mpmath, a torch
    dependency) and no shift: exp(1e4) is an ordinary number there, so this shares nothing
    with the float64 implementation."""
    import mpmath

    with mpmath.workdps(50):
        return np.array([float(max(mpmath.exp(v) for v in row) / mpmath.fsum(mpmath.exp(v) for v in row))
                         for row in np.asarray(f, dtype=np.float64).tolist()])


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_msp_is_the_max_softmax_on_random_logits(scale):
    rng = np.random.default_rng(int(scale))
    f = rng.normal(0, scale, (200, 12))
    got = build_scorer("msp").score(logits=f)
    assert np.allclose(got, msp_ref(f), rtol=1e-12, atol=0)
    assert np.allclose(got, softmax(f, axis=1).max(axis=1), rtol=1e-12, atol=0)
    assert ((got >= 1 / 12 - 1e-15) & (got <= 1.0)).all()
    # softmax ignores a shift shared by every class; MaxLogit does not
    assert np.allclose(build_scorer("msp").score(logits=f + 5e3), got, rtol=1e-9)


def test_msp_at_plus_minus_1e4_is_finite_and_exact():
    f = np.array([[1e4, -1e4, 0.0],        # one class dominates: 1
                  [1e4, 1e4, -1e4],        # two tie: 1/2
                  [-1e4, -1e4, -1e4],      # all equal, however small: 1/3
                  [1e4, 1e4 - 1.0, -1e4],  # a difference of 1 survives the shift: 1 / (1 + e^-1)
                  [-1e4, -1e4 + 2.0, -1e4]])
    got = build_scorer("msp").score(logits=f)
    want = [1.0, 0.5, 1 / 3, 1 / (1 + np.exp(-1.0)), 1 / (1 + 2 * np.exp(-2.0))]
    assert np.isfinite(got).all()
    assert got == pytest.approx(want, rel=1e-12)


def test_msp_differs_from_maxlogit_in_ranking():
    """Why MSP is not sigmoid(MaxLogit): with one large logit it is near 1; with many
    equally large logits it is near 1/C even though MaxLogit is higher."""
    f = np.array([[3.0, -5.0, -5.0, -5.0], [6.0, 6.0, 6.0, 6.0]])
    assert build_scorer("maxlogit").score(logits=f)[1] > build_scorer("maxlogit").score(logits=f)[0]
    assert build_scorer("msp").score(logits=f)[1] < build_scorer("msp").score(logits=f)[0]


# ---- feature scores ----------------------------------------------------------------------
def mahalanobis_ref(data, x):
    pos = data.targets.astype(bool)
    classes = [c for c in range(pos.shape[1]) if pos[:, c].any()]
    means = {c: data.features[pos[:, c]].mean(axis=0) for c in classes}
    rows = np.concatenate([data.features[pos[:, c]] - means[c] for c in classes])
    prec = EmpiricalCovariance().fit(rows).precision_
    dist = np.stack([np.einsum("nd,de,ne->n", x - means[c], prec, x - means[c]) for c in classes], 1)
    return -dist.min(axis=1)


@pytest.mark.parametrize("n,d,c", HEADS)
def test_mahalanobis_matches_sklearn(n, d, c):
    data = random_head(n, d, c, seed=d)
    x = random_head(50, d, c, seed=d + 1).features
    got, want = fitted("mahalanobis", data).score(features=x), mahalanobis_ref(data, x)
    assert np.allclose(got, want, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("n,d,c", HEADS)
@pytest.mark.parametrize("then", ["energy", "jointenergy"])
def test_react_matches_reference(n, d, c, then):
    data = random_head(n, d, c, seed=d)
    x = random_head(40, d, c, seed=d + 2).features
    threshold = np.percentile(data.features.ravel(), 90)
    logits = np.clip(x, None, threshold) @ data.weight.T + data.bias
    want = logsumexp(logits, axis=1) if then == "energy" else softplus_ref(logits).sum(axis=1)
    assert np.allclose(fitted("react", data, then=then).score(features=x), want, rtol=1e-12)
    lower = fitted("react", data, percentile=50).state_dict()["threshold"]
    assert lower == pytest.approx(np.percentile(data.features, 50))


def vim_ref(data, x, logits, dim, joint=False):
    """The ViM reference recipe: EmpiricalCovariance about u, SVD for the subspace."""
    u = -np.linalg.pinv(data.weight) @ data.bias
    cov = EmpiricalCovariance(assume_centered=True).fit(data.features - u).covariance_
    _, _, vt = np.linalg.svd(cov)
    null = vt[dim:].T
    train_res = np.linalg.norm((data.features - u) @ null, axis=1)
    alpha = data.logits.max(axis=1).mean() / train_res.mean()
    energy = softplus_ref(logits).sum(axis=1) if joint else logsumexp(logits, axis=1)
    return energy - alpha * np.linalg.norm((x - u) @ null, axis=1)


@pytest.mark.parametrize("n,d,c", HEADS)
@pytest.mark.parametrize("dim", [None, 3])
def test_vim_matches_reference(n, d, c, dim):
    data, test = random_head(n, d, c, seed=d), random_head(40, d, c, seed=d + 3)
    ref_dim = d // 2 if dim is None else dim
    got = fitted("vim", data, dim=dim).score(features=test.features, logits=test.logits)
    assert np.allclose(got, vim_ref(data, test.features, test.logits, ref_dim), rtol=1e-7, atol=1e-8)
    got = fitted("vim", data, dim=dim, then="jointenergy").score(features=test.features, logits=test.logits)
    want = vim_ref(data, test.features, test.logits, ref_dim, joint=True)
    assert np.allclose(got, want, rtol=1e-7, atol=1e-8)


def test_vim_default_dim_rule():
    assert [default_dim(d) for d in (2048, 1500, 1024, 768, 512, 10)] == [1000, 1000, 512, 512, 256, 5]


def ash_ref(h, p, variant):
    out = np.zeros_like(h)
    keep = h.shape[1] - int(round(h.shape[1] * p / 100))
    for i, row in enumerate(h):
        cut = np.sort(row)[::-1][keep - 1]
        mask = row >= cut
        if variant == "p":
            out[i] = np.where(mask, row, 0)
        elif variant == "b":
            out[i] = np.where(mask, row.sum() / mask.sum(), 0)
        else:
            out[i] = np.where(mask, row, 0) * np.exp(row.sum() / row[mask].sum())
    return out


@pytest.mark.parametrize("n,d,c", HEADS)
@pytest.mark.parametrize("variant", ["p", "b", "s"])
@pytest.mark.parametrize("p", [90.0, 65.0])
def test_ash_matches_reference(n, d, c, variant, p):
    data = random_head(n, d, c, seed=d)
    x = np.abs(np.random.default_rng(d).normal(0, 1, (30, d)))   # continuous: no ties at the cut
    logits = ash_ref(x, p, variant) @ data.weight.T + data.bias
    got = fitted("ash", data, variant=variant, percentile=p).score(features=x)
    assert np.allclose(got, logsumexp(logits, axis=1), rtol=1e-12)
    got = fitted("ash", data, variant=variant, percentile=p, then="jointenergy").score(features=x)
    assert np.allclose(got, softplus_ref(logits).sum(axis=1), rtol=1e-12)


def test_ash_edge_cases_are_finite():
    data = random_head(50, 16, 3, seed=0)
    x = np.zeros((3, 16))
    x[1, :4] = 1.0                                   # ties at the cut
    for variant in "pbs":
        for p in (0.0, 90.0, 99.9):                  # 99.9 -> still keeps one activation
            assert np.isfinite(fitted("ash", data, variant=variant, percentile=p).score(features=x)).all()


# ---- known answer: separable synthetic ID / OOD --------------------------------------------
@functools.lru_cache(maxsize=None)
def synthetic(seed=0, n_id=600, n_ood=300, d=64, c=5, signal=10):
    """ID: ReLU Gaussians around the sum of the class means of each sample's labels; class c
    owns a block of the first ``signal`` dims. OOD: a Gaussian shifted far away, into the
    dims ID barely uses."""
    rng = np.random.default_rng(seed)
    means = np.zeros((c, d))
    for k, block in enumerate(np.array_split(np.arange(signal), c)):
        means[k, block] = 4.0
    targets = (rng.random((n_id, c)) < 0.25).astype(float)
    targets[np.arange(n_id), rng.integers(0, c, n_id)] = 1

    def id_like(m):
        return np.maximum(targets[:m] @ means + rng.normal(0, 0.5, (m, d)), 0)

    train, test_id = id_like(n_id), id_like(n_id // 2)
    shift = np.zeros(d)
    shift[signal:signal + 3] = 8.0
    ood = np.maximum(rng.normal(0, 0.5, (n_ood, d)) + shift, 0)
    design = np.c_[train, np.ones(n_id)]
    coef = np.linalg.lstsq(design, 8 * targets - 4, rcond=None)[0]   # least-squares head
    weight, bias = coef[:-1].T, coef[-1]
    head = lambda h: h @ weight.T + bias  # noqa: E731
    return FitData(train, head(train), targets, weight, bias), (test_id, head(test_id)), (ood, head(ood))


KNOWN = [(name, {}) for name in SCORES if name != "odin"] + [
    ("odin", {"eps": 0.0}), ("react", {"then": "jointenergy"}), ("vim", {"then": "jointenergy"}),
    ("ash", {"variant": "p"}), ("ash", {"variant": "b"}), ("ash", {"then": "jointenergy"})]


@pytest.mark.parametrize("name,params", KNOWN)
def test_known_answer_auroc(name, params):
    fit, (f_id, l_id), (f_ood, l_ood) = synthetic()
    scorer = build_scorer(name, **params).fit(fit)
    s_id, s_ood = scorer.score(features=f_id, logits=l_id), scorer.score(features=f_ood, logits=l_ood)
    auroc = roc_auc_score(np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))], np.r_[s_id, s_ood])
    # MSP's softmax splits the mass among an image's labels (1/k for k equally sure labels),
    # so multi-label ID images look less sure: separable data, yet a lower AUROC
    assert auroc > (0.85 if name == "msp" else 0.9), f"{name} {params}: AUROC {auroc:.3f}"


def test_mahalanobis_singular_covariance_uses_pseudo_inverse():
    rng = np.random.default_rng(5)
    basis = rng.normal(0, 1, (5, 12))                      # features span only 5 of 12 dims
    data = random_head(200, 5, 3, seed=5)
    data = FitData(data.features @ basis, data.features @ basis @ rng.normal(0, 0.1, (12, 3)),
                   data.targets, rng.normal(0, 0.1, (3, 12)), np.zeros(3))
    x = random_head(20, 5, 3, seed=6).features @ basis
    assert np.allclose(fitted("mahalanobis", data).score(features=x), mahalanobis_ref(data, x),
                       rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("module,name", [("mahalanobis", "mahalanobis"), ("ash", "ash"), ("vim", "vim")])
def test_chunked_paths_agree(monkeypatch, module, name):
    data = random_head(300, 16, 4, seed=7)
    x = random_head(50, 16, 4, seed=8)
    whole = fitted(name, data).score(features=x.features, logits=x.logits)
    monkeypatch.setattr(f"edge_ray.scores.{module}._CHUNK", 7)
    chunked = fitted(name, data).score(features=x.features, logits=x.logits)
    assert np.allclose(whole, chunked, rtol=1e-12, atol=1e-12)
