"""Backbones: the feature/head split, shapes, and weight loading from local files."""
import pytest
import torch
import torchvision

from edge_ray.models.networks import build_model


@pytest.mark.parametrize("name,dim", [("smallcnn", 128), ("resnet50", 2048), ("densenet121", 1024), ("vgg16", 4096)])
def test_forward_split(name, dim):
    torch.manual_seed(0)
    model = build_model(name, 5).eval()
    x = torch.randn(2, 3, 64 if name != "smallcnn" else 32, 64 if name != "smallcnn" else 32)
    with torch.no_grad():
        f = model.forward_features(x)
        assert f.shape == (2, dim)
        torch.testing.assert_close(model(x), f @ model.head.weight.T + model.head.bias)


def test_local_torchvision_state_dict(tmp_path):
    ref = torchvision.models.resnet50()
    path = tmp_path / "resnet50.pth"
    torch.save(ref.state_dict(), path)
    model = build_model("resnet50", 3, weights=str(path))
    torch.testing.assert_close(model.body.conv1.weight, ref.conv1.weight)


def test_full_checkpoint_roundtrip(tmp_path):
    a = build_model("smallcnn", 4)
    path = tmp_path / "m.pth"
    torch.save({"model": a.state_dict(), "epoch": 3}, path)
    b = build_model("smallcnn", 4, weights=str(path))
    torch.testing.assert_close(a.head.weight, b.head.weight)


def test_weight_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model("resnet50", 3, weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="valid: IMAGENET1K_V1"):
        build_model("resnet50", 3, weights="IMAGENET9K")
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model("resnet18x", 3)
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="parameters missing"):
        build_model("resnet50", 3, weights=str(bad))
