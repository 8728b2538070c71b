"""fp16 with a gradient scaler (train.amp_dtype): the dtype chosen per device capability, the
scaled step, and the scaler's state through a checkpoint (and a checkpoint without one)."""
import pytest
import torch

from edge_ray.config import ConfigError, load_config
from edge_ray.train import loop
from edge_ray.train.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import ROOT


@pytest.mark.parametrize("requested,capability,want", [
    ("auto", (9, 0), "bf16"),   # H100
    ("auto", (8, 0), "bf16"),   # A100
    ("auto", (8, 9), "bf16"),   # L4
    ("auto", (7, 5), "fp16"),   # T4
    ("auto", (7, 0), "fp16"),   # V100
    ("auto", None, "fp16"),     # no GPU: autocast is off; the answer is a GPU-less device's
    ("bf16", (7, 0), "bf16"),   # asked for: kept, even where it is emulated
    ("fp16", (9, 0), "fp16"),
])
def test_amp_dtype_choice(requested, capability, want):
    assert loop.amp_dtype(requested, capability) == want


def test_amp_dtype_config_and_cpu_device():
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    assert cfg.train.amp_dtype == "auto"
    assert load_config(ROOT / "configs" / "tiny.yaml", ["train.amp_dtype=fp16"]).train.amp_dtype == "fp16"
    with pytest.raises(ConfigError, match="train.amp_dtype='fp32' is not valid; did you mean 'fp16'"):
        load_config(ROOT / "configs" / "tiny.yaml", ["train.amp_dtype=fp32"])
    with pytest.raises(ValueError, match="auto, bf16 or fp16"):
        loop.amp_dtype("fp8", (9, 0))
    assert loop.device_amp_dtype("auto", torch.device("cpu")) == "fp16"
    opts = loop.StepOptions(device=torch.device("cpu"), amp=True, amp_dtype="fp16")
    assert loop.make_scaler(opts) is None  # no autocast on the CPU: nothing to scale
    assert loop.make_scaler(loop.StepOptions(device=torch.device("cuda"), amp=True, amp_dtype="bf16")) is None


def _tiny_problem(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    batch = (torch.randn(6, 3, 2, 2), (torch.rand(6, 4) < 0.5).float(), None)

    def loss_fn(z_id, y, z_oe, epoch):
        return {"loss": torch.nn.functional.binary_cross_entropy_with_logits(z_id, y)}

    return model, batch, loss_fn


def test_scaled_step_equals_the_plain_step():
    """A power-of-two loss scale is exact: the scaled step moves the weights as the plain one."""
    opts = loop.StepOptions(device=torch.device("cpu"))
    plain, batch, loss_fn = _tiny_problem()
    scaled, _, _ = _tiny_problem()
    opt_a = torch.optim.SGD(plain.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(scaled.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    for _ in range(3):
        loop.step_tensors(plain, batch, loss_fn, opt_a, None, epoch=0, opts=opts)
        loop.step_tensors(scaled, batch, loss_fn, opt_b, None, epoch=0, opts=opts, scaler=scaler)
    for a, b in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert scaler.get_scale() == 2.0 ** 10


def test_overflowing_step_is_skipped_and_the_scale_halved():
    opts = loop.StepOptions(device=torch.device("cpu"))
    model, batch, loss_fn = _tiny_problem()
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def large_loss(*args):  # x 1e6 x 2^127: the scaled gradients overflow float32
        return {"loss": 1e6 * loss_fn(*args)["loss"]}

    loop.step_tensors(model, batch, large_loss, opt, None, epoch=0, opts=opts, scaler=scaler)
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)  # the step was skipped
    assert scaler.get_scale() == 2.0 ** 126


def test_scaler_state_through_the_checkpoint(tmp_path):
    model, batch, loss_fn = _tiny_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, growth_interval=2)
    opts = loop.StepOptions(device=torch.device("cpu"))
    for _ in range(3):  # growth after 2 clean steps: scale 2^13, growth tracker 1
        loop.step_tensors(model, batch, loss_fn, opt, None, epoch=0, opts=opts, scaler=scaler)
    common = dict(model_state=model.state_dict(), optimizer_state=opt.state_dict(), scheduler_state={},
                  epoch=0, resumes=0, seed=0, history=[{}], config={})
    save_checkpoint(tmp_path / "fp16", scaler_state=scaler.state_dict(), **common)
    state, _, _ = load_checkpoint(tmp_path / "fp16")
    restored = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=2)
    loop.restore_scaler(restored, state)
    assert restored.state_dict() == scaler.state_dict()
    assert restored.get_scale() == 2.0 ** 13 and restored.state_dict()["_growth_tracker"] == 1

    # bf16 / float32 runs (a disabled scaler's state is {}) and older checkpoints: no "scaler"
    save_checkpoint(tmp_path / "bf16", scaler_state=torch.amp.GradScaler("cpu", enabled=False).state_dict(), **common)
    save_checkpoint(tmp_path / "old", **common)
    for name in ("bf16", "old"):
        state, _, _ = load_checkpoint(tmp_path / name)
        assert "scaler" not in state
        fresh = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
        loop.restore_scaler(fresh, state)  # a resumed fp16 run starts with a fresh scaler
        assert fresh.get_scale() == 2.0 ** 16
        loop.restore_scaler(None, state)   # no scaler (bf16): nothing to do
