"""ODIN against a manual autograd computation on a tiny torch model."""
import numpy as np
import pytest
import torch
from scipy.special import expit

from edge_ray.scores import build_scorer

STD = torch.tensor([0.229, 0.224, 0.225])


@pytest.fixture
def model_and_x():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 6),
                                torch.nn.Dropout(0.5))   # dropout: proves eval mode is used
    model[1].bias.data[:3] += 2.0                        # some positive pseudo-labels
    return model, torch.randn(10, 3, 4, 4)


@pytest.mark.parametrize("temperature", [1.0, 1000.0])
@pytest.mark.parametrize("reduce", ["max", "sum"])
def test_odin_eps0_is_tempered_sigmoid(model_and_x, temperature, reduce):
    model, x = model_and_x
    model.eval()
    logits = model(x).detach().double().numpy()
    model.train()
    probs = expit(logits / temperature)
    want = probs.max(axis=1) if reduce == "max" else probs.sum(axis=1)
    scorer = build_scorer("odin", eps=0.0, temperature=temperature, reduce=reduce)
    assert np.allclose(scorer.score_inputs(model, x, input_std=STD), want, rtol=1e-12)
    assert np.allclose(scorer.score(logits=logits), want, rtol=1e-12)
    assert model.training  # the caller's mode is restored


@pytest.mark.parametrize("eps", [0.0014, 0.05])
def test_odin_perturbation_matches_manual_autograd(model_and_x, eps):
    model, x = model_and_x
    temperature = 1000.0
    model.eval()
    x_req = x.clone().requires_grad_(True)
    logits = model(x_req)
    y = (torch.sigmoid(logits) > 0.5).float()
    z = logits / temperature
    bce = -(y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z))).mean()
    (grad,) = torch.autograd.grad(bce, x_req)
    x_want = x - eps * torch.sign(grad) / STD.view(1, 3, 1, 1)
    with torch.no_grad():
        want = expit(model(x_want).double().numpy() / temperature).max(axis=1)

    model.train()                                        # ODIN must switch dropout off itself
    scorer = build_scorer("odin", eps=eps, temperature=temperature)
    x_got = scorer.perturb(model, x, input_std=STD)
    assert torch.allclose(x_got, x_want, rtol=0, atol=1e-6)
    assert not torch.equal(x_got, x)
    assert np.allclose(scorer.score_inputs(model, x, input_std=[0.229, 0.224, 0.225]), want, rtol=1e-9)
    assert all(p.grad is None for p in model.parameters())  # gradients only w.r.t. the input
    assert model.training


def test_odin_errors(model_and_x):
    model, x = model_and_x
    scorer = build_scorer("odin")
    assert scorer.needs_inputs and not scorer.needs_fit
    with pytest.raises(ValueError, match="score_inputs"):
        scorer.score(logits=np.zeros((2, 3)))            # eps > 0 cannot score cached logits
    with pytest.raises(ValueError, match="channels"):
        scorer.score_inputs(model, x, input_std=[0.2, 0.2])
    with pytest.raises(ValueError, match="temperature"):
        build_scorer("odin", temperature=0)
    with pytest.raises(ValueError, match="reduce"):
        build_scorer("odin", reduce="mean")
    with pytest.raises(ValueError, match="only scorers with needs_inputs"):
        build_scorer("energy").score_inputs(model, x, input_std=STD)
