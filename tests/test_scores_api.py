"""Registry, state round-trip through np.savez, and the input checks of every scorer."""
import numpy as np
import pytest

from edge_ray.scores import SCORES, FitData, build_scorer

NAMES = ["maxlogit", "msp", "odin", "energy", "mahalanobis", "react", "vim", "ash",
         "maxenergy", "jointenergy", "knn"]
STATEFUL = ["mahalanobis", "react", "vim", "ash", "knn"]


def fit_data(n=120, d=16, c=4, seed=0):
    rng = np.random.default_rng(seed)
    feats = np.abs(rng.normal(0, 1, (n, d))).astype(np.float32)
    weight, bias = rng.normal(0, 0.3, (c, d)), rng.normal(0, 0.3, c)
    targets = (rng.random((n, c)) < 0.4).astype(np.float32)
    return FitData(feats, feats @ weight.T + bias, targets, weight, bias)


def params_for(name):
    return {"odin": {"eps": 0.0}, "vim": {"dim": 5}, "ash": {"variant": "b"}}.get(name, {})


def test_registry_names_and_flags():
    assert list(SCORES) == NAMES
    for name in NAMES:
        scorer = build_scorer(name)
        assert scorer.name == name and isinstance(scorer.params, dict)
        assert scorer.needs_fit == (name in STATEFUL)
        assert scorer.needs_inputs == (name == "odin")
        assert build_scorer(name, **scorer.params).params == scorer.params   # params rebuild it


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_roundtrip_through_npz(name, tmp_path):
    data, test = fit_data(), fit_data(n=30, seed=1)
    scorer = build_scorer(name, **params_for(name)).fit(data)
    before = scorer.score(features=test.features, logits=test.logits)
    np.savez(tmp_path / "state.npz", **scorer.state_dict())
    with np.load(tmp_path / "state.npz") as state:
        restored = build_scorer(name, **params_for(name)).load_state_dict(state)
    after = restored.score(features=test.features, logits=test.logits)
    assert np.array_equal(before, after)
    assert before.dtype == np.float64 and before.shape == (30,)


def test_load_state_dict_rejects_bad_state():
    state = build_scorer("react").fit(fit_data()).state_dict()
    with pytest.raises(ValueError, match="keys"):
        build_scorer("react").load_state_dict({k: v for k, v in state.items() if k != "bias"})
    with pytest.raises(ValueError, match=r"weight \[C, D\]"):
        build_scorer("react").load_state_dict({**state, "bias": np.zeros(99)})
    with pytest.raises(ValueError, match="keys"):
        build_scorer("energy").load_state_dict({"x": np.zeros(1)})
    bad = build_scorer("vim", dim=5).fit(fit_data()).state_dict()
    with pytest.raises(ValueError, match="NaN"):
        build_scorer("vim").load_state_dict({**bad, "alpha": float("nan")})


def test_unknown_name_and_params():
    with pytest.raises(ValueError) as err:
        build_scorer("maxsoftmax")
    assert all(name in str(err.value) for name in NAMES)
    with pytest.raises(ValueError, match=r"unknown parameter.*'percentil'.*percentile"):
        build_scorer("react", percentil=90)
    with pytest.raises(ValueError, match="unknown parameter"):
        build_scorer("maxlogit", temperature=2)
    for name, params in [("react", {"percentile": 120}), ("ash", {"percentile": 100}),
                         ("ash", {"variant": "x"}), ("vim", {"dim": 0}), ("vim", {"then": "max"}),
                         ("energy", {"temperature": -1})]:
        with pytest.raises(ValueError):
            build_scorer(name, **params)


@pytest.mark.parametrize("name", NAMES)
def test_nan_inf_and_wrong_dims(name):
    scorer = build_scorer(name, **params_for(name)).fit(fit_data())
    good = fit_data(n=5, seed=2)
    for bad in (np.nan, np.inf):
        for field in scorer.requires:
            inputs = {"features": good.features.copy(), "logits": good.logits.copy()}
            inputs[field][2, 1] = bad
            with pytest.raises(ValueError, match=f"{field} contains NaN or inf in 1 of 5 rows"):
                scorer.score(**inputs)
    for field in scorer.requires:
        inputs = {"features": good.features, "logits": good.logits}
        inputs[field] = inputs[field][0]
        with pytest.raises(ValueError, match=rf"{field} must be 2-D \[N, K\], got shape \("):
            scorer.score(**inputs)
        with pytest.raises(ValueError, match=f"{field} is missing"):
            scorer.score(**{**inputs, field: None})
    empty = scorer.score(features=np.zeros((0, 16)), logits=np.zeros((0, 4)))
    assert empty.shape == (0,)


@pytest.mark.parametrize("name", STATEFUL)
def test_feature_dim_mismatch_and_score_before_fit(name):
    test = fit_data(n=5, d=10, seed=3)
    with pytest.raises(ValueError, match="must be fitted first"):
        build_scorer(name).score(features=test.features, logits=test.logits)
    with pytest.raises(ValueError, match="must be fitted first"):
        build_scorer(name).state_dict()
    with pytest.raises(ValueError, match="needs FitData"):
        build_scorer(name).fit(None)
    scorer = build_scorer(name, **params_for(name)).fit(fit_data(d=16))
    with pytest.raises(ValueError, match="features have D=10 but the scorer was fitted on D=16"):
        scorer.score(features=test.features, logits=test.logits)


def test_row_count_mismatch():
    scorer = build_scorer("vim", dim=5).fit(fit_data())
    good = fit_data(n=5, seed=4)
    with pytest.raises(ValueError, match="different numbers of rows"):
        scorer.score(features=good.features, logits=good.logits[:3])


def test_fitdata_checks_shapes_and_values():
    d = fit_data()
    with pytest.raises(ValueError, match="FitData.weight must be"):
        FitData(d.features, d.logits, d.targets, d.weight.T, d.bias)
    with pytest.raises(ValueError, match="targets shape"):
        FitData(d.features, d.logits, d.targets[:, :2], d.weight, d.bias)
    with pytest.raises(ValueError, match="0/1"):
        FitData(d.features, d.logits, d.targets * 2, d.weight, d.bias)
    feats = d.features.copy()
    feats[0, 0] = np.nan
    with pytest.raises(ValueError, match="FitData.features contains NaN"):
        FitData(feats, d.logits, d.targets, d.weight, d.bias)
    with pytest.raises(ValueError, match="no training sample has a positive label"):
        build_scorer("mahalanobis").fit(FitData(d.features, d.logits, 0 * d.targets, d.weight, d.bias))
    with pytest.raises(ValueError, match="1 <= dim < D=16"):
        build_scorer("vim", dim=16).fit(d)
