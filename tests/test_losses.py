"""Losses against brute-force float64 numpy references on random inputs."""
import numpy as np
import pytest
import torch

from edge_ray import losses

SHAPES = [(1, 1, 1), (5, 3, 4), (16, 20, 32), (7, 80, 3)]  # (N_id, C, N_oe)


def softplus(x):
    return np.logaddexp(0.0, x)


def bce(z, y):
    return np.mean(y * softplus(-z) + (1 - y) * softplus(z))


def ref_edge(z_id, y, z_oe, alpha, beta, k, m, gap):
    e_id = np.array([sum(softplus(v) for v in row) for row in z_id])
    e_oe = np.array([sum(softplus(v) for v in row) for row in z_oe])
    low = sorted(e_id)[: min(k, len(e_id))]
    if gap == "mean":
        terms = [max(0.0, e - np.mean(low) + m) for e in e_oe]
    else:
        terms = [max(0.0, e - l + m) for e in e_oe for l in low]
    l_id, l_conf, l_gap = bce(z_id, y), np.mean(softplus(z_oe)), np.mean(terms)
    return l_id + alpha * l_conf + beta * l_gap, l_id, l_conf, l_gap


def make(n, c, n_oe, seed, scale=3.0):
    rng = np.random.default_rng(seed)
    z_id = rng.normal(0, scale, (n, c))
    y = (rng.random((n, c)) < 0.3).astype(np.float64)
    z_oe = rng.normal(-1, scale, (n_oe, c))
    return z_id, y, z_oe


def t(x):
    return torch.tensor(x, dtype=torch.float64)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gap", ["mean", "pairwise"])
@pytest.mark.parametrize("k", [1, 3, 1000])  # 1000 > batch: whole batch
def test_edge_loss_matches_reference(shape, gap, k):
    z_id, y, z_oe = make(*shape, seed=sum(shape) * 31 + k + len(gap))
    out = losses.edge_loss(t(z_id), t(y), t(z_oe), alpha=0.7, beta=0.3, k=k, m=2.5, gap=gap)
    ref = ref_edge(z_id, y, z_oe, 0.7, 0.3, k, 2.5, gap)
    assert set(out) == {"loss", "id", "conf", "gap"}
    for key, r in zip(["loss", "id", "conf", "gap"], ref):
        np.testing.assert_allclose(out[key].item(), r, rtol=1e-10, atol=1e-12)


def test_gap_active_on_random_inputs():
    """The gap must actually be non-zero in the test above's regime, or it proves nothing."""
    z_id, y, z_oe = make(16, 20, 32, seed=0)
    out = losses.edge_loss(t(z_id), t(y), t(z_oe), alpha=1, beta=1, k=4, m=50.0)
    assert out["gap"].item() > 0


def test_joint_energy_and_extreme_logits():
    z = torch.tensor([[100.0, -100.0, 0.0], [1000.0, 88.8, -1000.0]], dtype=torch.float32)
    e = losses.joint_energy(z)
    assert torch.isfinite(e).all()
    np.testing.assert_allclose(e.double().numpy(), softplus(z.double().numpy()).sum(1), rtol=1e-6)
    y = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    for gap in ("mean", "pairwise"):
        out = losses.edge_loss(z, y, -z, alpha=1, beta=1, k=1, m=1, gap=gap)
        assert all(torch.isfinite(v) for v in out.values())
        out["loss"].backward() if out["loss"].requires_grad else None


def test_extreme_logits_gradients_finite():
    z = (torch.randn(6, 5) * 100).requires_grad_()
    zo = (torch.randn(4, 5) * 100).requires_grad_()
    y = (torch.rand(6, 5) < 0.5).float()
    for fn in (lambda: losses.edge_loss(z, y, zo, alpha=1, beta=1, k=2, m=1)["loss"],
               lambda: losses.energy_oe_loss(z, y, zo)["loss"],
               lambda: losses.hendrycks_oe_loss(z, y, zo)["loss"],
               lambda: losses.asl_loss(z, y)["loss"],
               lambda: losses.focal_loss(z, y)["loss"],
               lambda: losses.db_loss(z, y, class_freq=[5, 4, 3, 2, 1], num_samples=10)["loss"]):
        z.grad = zo.grad = None
        loss = fn()
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_oe_is_edge_without_gap():
    z_id, y, z_oe = make(8, 6, 9, seed=3)
    a = losses.oe_loss(t(z_id), t(y), t(z_oe), alpha=0.4)
    b = losses.edge_loss(t(z_id), t(y), t(z_oe), alpha=0.4, beta=0.0, k=2, m=3)
    assert torch.allclose(a["loss"], b["loss"])


@pytest.mark.parametrize("shape", SHAPES)
def test_hendrycks_oe_reference(shape):
    z_id, y, z_oe = make(*shape, seed=11)
    out = losses.hendrycks_oe_loss(t(z_id), t(y), t(z_oe), lam=0.5)
    c = z_oe.shape[1]
    ce = []
    for row in z_oe:
        lse = np.log(np.sum(np.exp(row - row.max()))) + row.max()
        ce.append(-np.mean(row - lse))
    ref = bce(z_id, y) + 0.5 * np.mean(ce)
    assert c == shape[1]
    np.testing.assert_allclose(out["loss"].item(), ref, rtol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_energy_oe_reference(shape):
    z_id, y, z_oe = make(*shape, seed=12)
    out = losses.energy_oe_loss(t(z_id), t(y), t(z_oe), lam=0.2, m_in=-3.0, m_out=-1.0)

    def free(row):
        mx = row.max()
        return -(np.log(np.sum(np.exp(row - mx))) + mx)

    r_in = np.mean([max(0.0, free(r) + 3.0) ** 2 for r in z_id])
    r_out = np.mean([max(0.0, -1.0 - free(r)) ** 2 for r in z_oe])
    np.testing.assert_allclose(out["energy_in"].item(), r_in, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["energy_out"].item(), r_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["loss"].item(), bce(z_id, y) + 0.2 * (r_in + r_out), rtol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_focal_and_asl_reference(shape):
    z, y, _ = make(*shape, seed=13)
    p = 1 / (1 + np.exp(-z))
    fl = -(y * (1 - p) ** 2 * np.log(p) + (1 - y) * p ** 2 * np.log(1 - p))
    np.testing.assert_allclose(losses.focal_loss(t(z), t(y), gamma=2.0)["loss"].item(), fl.mean(), rtol=1e-8)
    pm = np.maximum(p - 0.05, 0)
    asl = -(y * (1 - p) ** 1 * np.log(np.maximum(p, 1e-8))
            + (1 - y) * pm ** 4 * np.log(np.maximum(1 - pm, 1e-8)))
    out = losses.asl_loss(t(z), t(y), gamma_pos=1.0, gamma_neg=4.0, clip=0.05)
    np.testing.assert_allclose(out["loss"].item(), asl.mean(), rtol=1e-8)


@pytest.mark.parametrize("focal", [False, True])
def test_db_loss_reference(focal):
    z, y, _ = make(12, 5, 1, seed=14)
    freq = np.array([50.0, 20, 8, 3, 1])
    n = 60
    out = losses.db_loss(t(z), t(y), class_freq=freq, num_samples=n, focal=focal)
    total = 0.0
    for i in range(z.shape[0]):
        rep = sum(1 / freq[c] for c in range(5) if y[i, c])
        for c in range(5):
            r = (1 / freq[c]) / rep if rep > 0 else (1 / freq[c]) / 1e-12
            w = 1 / (1 + np.exp(-10 * (r - 0.2))) + 0.1
            zz = z[i, c] - np.log(n / freq[c] - 1) * 0.05 / 2
            if not y[i, c]:
                zz, w = zz * 2, w / 2
            ce = y[i, c] * softplus(-zz) + (1 - y[i, c]) * softplus(zz)
            term = w * ce
            if focal:
                a = 0.5
                term = a * (1 - np.exp(-ce)) ** 2 * term
            total += term
    np.testing.assert_allclose(out["loss"].item(), total / z.size, rtol=1e-8)


def test_bad_inputs():
    z, y = torch.randn(4, 3), (torch.rand(4, 3) < 0.5).float()
    with pytest.raises(ValueError, match="NaN or inf"):
        losses.edge_loss(torch.full((4, 3), float("nan")), y, z, alpha=1, beta=1, k=1, m=0)
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(5, 3\)|\(5, 3\).*\(4, 3\)"):
        losses.edge_loss(z, torch.zeros(5, 3), z, alpha=1, beta=1, k=1, m=0)
    with pytest.raises(ValueError, match="0/1"):
        losses.edge_loss(z, y * 0.5, z, alpha=1, beta=1, k=1, m=0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        losses.edge_loss(z, y, z, alpha=1, beta=1, k=0, m=0)
    with pytest.raises(ValueError, match="empty"):
        losses.edge_loss(z, y, torch.zeros(0, 3), alpha=1, beta=1, k=1, m=0)
    with pytest.raises(ValueError, match="classes"):
        losses.edge_loss(z, y, torch.zeros(2, 4), alpha=1, beta=1, k=1, m=0)
    with pytest.raises(ValueError, match="gap must be"):
        losses.edge_loss(z, y, z, alpha=1, beta=1, k=1, m=0, gap="max")


def test_gap_diagnostics():
    z_id = torch.tensor([[5.0, 5.0], [0.0, 0.0], [-5.0, -5.0]])
    z_oe = torch.tensor([[-10.0, -10.0], [10.0, 10.0]])
    d = losses.gap_diagnostics(z_id, z_oe, k=1, m=0.0)
    e_low = 2 * np.log1p(np.exp(-5.0))
    np.testing.assert_allclose(d["energy_id_bottomk"].item(), e_low, rtol=1e-5)
    assert d["gap_active"].item() == 0.5


def ref_gap_grad(z_id, z_oe, k, m, m_mode):
    """d L_gap / d logits by central differences in float64, with the relative margin held at
    its value at the unperturbed point (the option's definition: a constant of the step)."""
    e_id0 = softplus(z_id).sum(1)
    low0 = np.sort(e_id0)[:min(k, len(e_id0))].mean()
    margin = m * low0 if m_mode == "relative" else m

    def l_gap(a, b):
        e_id, e_oe = softplus(a).sum(1), softplus(b).sum(1)
        low = np.sort(e_id)[:min(k, len(e_id))].mean()
        return np.mean(np.maximum(0.0, e_oe - low + margin))

    grads = []
    for x, which in ((z_id, 0), (z_oe, 1)):
        g = np.zeros_like(x)
        for idx in np.ndindex(*x.shape):
            hi, lo = x.copy(), x.copy()
            hi[idx] += 1e-6
            lo[idx] -= 1e-6
            args_hi = (hi, z_oe) if which == 0 else (z_id, hi)
            args_lo = (lo, z_oe) if which == 0 else (z_id, lo)
            g[idx] = (l_gap(*args_hi) - l_gap(*args_lo)) / 2e-6
        grads.append(g)
    return l_gap(z_id, z_oe), grads


@pytest.mark.parametrize("m_mode,m", [("absolute", 2.5), ("relative", 0.4), ("relative", 1.2)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_margin_modes_value_and_gradient_match_reference(m_mode, m, seed):
    """loss.m_mode: the paper's margin m (absolute) or m x the mean bottom-k ID energy held
    constant for the step (relative): value and gradient against float64 finite differences."""
    z_id, y, z_oe = make(9, 5, 6, seed=seed + 40)
    a, b = t(z_id).requires_grad_(), t(z_oe).requires_grad_()
    out = losses.edge_loss(a, t(y), b, alpha=0.0, beta=1.0, k=3, m=m, m_mode=m_mode)
    ref, (g_id, g_oe) = ref_gap_grad(z_id, z_oe, 3, m, m_mode)
    assert 0 < ref  # some hinge is active, so the comparison means something
    np.testing.assert_allclose(out["gap"].item(), ref, rtol=1e-10)
    out["gap"].backward()
    np.testing.assert_allclose(a.grad.numpy(), g_id, atol=1e-6)
    np.testing.assert_allclose(b.grad.numpy(), g_oe, atol=1e-6)


def test_relative_margin_keeps_the_hinge_on_when_id_energies_grow():
    """The case the option is for: OE energies at their floor, ID energies far above m. The
    paper's margin leaves every hinge idle; m = 1.1 x bottom-k keeps all of them active, and
    the diagnostics say so."""
    rng = np.random.default_rng(3)
    z_id = rng.normal(3.0, 0.5, (32, 7))      # JointEnergy ~ 21 per image
    z_oe = rng.normal(-6.0, 0.5, (32, 7))     # ~ 0.02
    for m_mode, m, active in (("absolute", 3.0, 0.0), ("relative", 1.1, 1.0), ("relative", 0.5, 0.0)):
        d = losses.gap_diagnostics(t(z_id), t(z_oe), k=8, m=m, m_mode=m_mode)
        assert d["gap_active"].item() == active, (m_mode, m)
    with pytest.raises(ValueError, match="m_mode must be one of"):
        losses.edge_loss(t(z_id), t((z_id > 3).astype(float)), t(z_oe), alpha=1, beta=1, k=8, m=1, m_mode="scaled")


def test_m_mode_is_a_config_key_with_the_papers_default():
    from edge_ray.config import ConfigError, load_config

    assert load_config(None).loss.m_mode == "absolute"
    assert load_config(None, ["loss.m_mode=relative"]).loss.m_mode == "relative"
    with pytest.raises(ConfigError, match="m_mode"):
        load_config(None, ["loss.m_mode=scaled"])
