"""Dilation distance against a float64 numpy SVD loop."""

import numpy as np
import pytest
import torch

from edge_ray.oe import dilation as oe_select


def ref_dilation(f_id, f_oe, k, bs):
    n = min(len(f_id), len(f_oe)) // bs
    ds = []
    for b in range(n):
        s1 = np.linalg.svd(f_id[b * bs:(b + 1) * bs], compute_uv=False)
        s2 = np.linalg.svd(f_oe[b * bs:(b + 1) * bs], compute_uv=False)
        s1 = np.r_[s1, np.zeros(max(0, k - len(s1)))][:k]
        s2 = np.r_[s2, np.zeros(max(0, k - len(s2)))][:k]
        ds.append(np.sqrt(np.sum((s1 - s2) ** 2)))
    return np.mean(ds)


@pytest.mark.parametrize("n_id,n_oe,d,k,bs", [
    (64, 64, 16, 4, 16), (100, 37, 8, 3, 10), (50, 80, 64, 5, 8),  # B < D and B > D
    (30, 30, 6, 20, 10),  # k larger than min(B, D): zero-padded
    (12, 12, 5, 1, 12)])
@pytest.mark.parametrize("method", ["gram", "svd"])
def test_matches_numpy_svd(n_id, n_oe, d, k, bs, method):
    rng = np.random.default_rng(n_id * 7 + d)
    f_id = np.abs(rng.normal(size=(n_id, d)))  # post-ReLU-like features
    f_oe = np.abs(rng.normal(0.5, 2, size=(n_oe, d)))
    got = oe_select.dilation_distance(f_id, f_oe, k=k, batch_size=bs, method=method)
    ref = ref_dilation(f_id, f_oe, k, bs)
    assert got == pytest.approx(ref, rel=1e-7, abs=1e-9)


def test_identical_sets_are_zero_and_scaled_set_is_far():
    rng = np.random.default_rng(5)
    f = rng.normal(size=(40, 10))
    assert oe_select.dilation_distance(f, f.copy(), k=5, batch_size=10) == pytest.approx(0, abs=1e-9)
    assert oe_select.dilation_distance(f, 3 * f, k=5, batch_size=10) > 1


def test_top_singular_values_methods_agree():
    x = torch.randn(32, 300, dtype=torch.float64)
    a = oe_select.top_singular_values(x, 10, "gram")
    b = oe_select.top_singular_values(x, 10, "svd")
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_bad_inputs():
    f = np.ones((10, 4))
    with pytest.raises(ValueError, match="k must be >= 1"):
        oe_select.dilation_distance(f, f, k=0, batch_size=5)
    with pytest.raises(ValueError, match="batch_size 11 is larger"):
        oe_select.dilation_distance(f, f, k=1, batch_size=11)
    with pytest.raises(ValueError, match="batch_size 8 is larger.*OE has 5"):
        oe_select.dilation_distance(f, f[:5], k=1, batch_size=8)
    with pytest.raises(ValueError, match="NaN or inf"):
        oe_select.dilation_distance(f * np.nan, f, k=1, batch_size=5)
    with pytest.raises(ValueError, match="different feature dimensions"):
        oe_select.dilation_distance(f, np.ones((10, 3)), k=1, batch_size=5)
    with pytest.raises(ValueError, match="empty"):
        oe_select.dilation_distance(np.ones((0, 4)), f, k=1, batch_size=5)
