"""Backbones with a multi-label linear head, split as ``forward_features`` / ``forward_head``.

``forward_features(x) -> [N, D]`` is the pooled penultimate feature that Mahalanobis,
ReAct, ViM, ASH and the dilation distance use; ``forward_head(f) -> [N, C]`` is the linear
classifier ``head`` (weight [C, D], bias [C]). Pretrained ImageNet weights come from a
torchvision weights name (needs internet or a warm torch hub cache) or a local file.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from edge_ray.models import BACKBONES


class MultiLabelNet(nn.Module):
    """A feature extractor ``body`` (image -> [N, D]) and a linear multi-label ``head``."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def small_cnn(width: int = 32) -> tuple[nn.Module, int]:
    """Three conv blocks (conv + BatchNorm + ReLU, max-pool between) and global average
    pooling to a ``4 * width`` feature (128-d by default): a CPU-sized model for the embedded
    benchmark and the tests, about 10 MFLOPs per 32x32 image."""
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    layers = block(3, width) + [nn.MaxPool2d(2)] + block(width, 2 * width) + [nn.MaxPool2d(2)]
    layers += block(2 * width, 4 * width) + [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), 4 * width


def _torchvision_body(name: str, weights) -> tuple[nn.Module, int]:
    import torchvision  # here, not at the top: 2 s of imports that the small CNN never needs

    net = torchvision.models.get_model(name, weights=weights)
    if name == "resnet50":
        dim = net.fc.in_features
        net.fc = nn.Identity()
        return net, dim
    if name == "densenet121":
        dim = net.classifier.in_features
        net.classifier = nn.Identity()
        return net, dim
    if name == "vgg16":
        # Keep the two 4096-d hidden layers: the penultimate feature is the second one.
        dim = net.classifier[-1].in_features
        net.classifier[-1] = nn.Identity()
        return net, dim
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")


def _resolve_weights(name: str, weights: str):
    """(torchvision weights enum or None, local file path or None)."""
    if not weights:
        return None, None
    if weights.endswith((".pth", ".pt")) or Path(weights).exists():
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"model.weights file {weights!r} does not exist; give a local "
                                    ".pth state dict or a torchvision weights name like IMAGENET1K_V2")
        return None, path
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    key = weights.split(".")[-1]
    if key not in enum.__members__:
        raise ValueError(f"{weights!r} is not a torchvision weights name for {name}; "
                         f"valid: {', '.join(enum.__members__)} or a local .pth file")
    return enum[key], None


def load_state_file(path: Path) -> dict:
    """A state dict from a file, never unpickling arbitrary objects."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def build_model(name: str, num_classes: int, *, weights: str = "", width: int = 32) -> MultiLabelNet:
    """Build a backbone with a fresh ``num_classes`` head.

    ``weights``: "" (random init), a torchvision weights name for the backbone (downloaded
    by torchvision; fails with a clear message without internet), or a local ``.pth``: either
    a torchvision ImageNet state dict for the backbone or a full ``MultiLabelNet`` state dict.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if name == "smallcnn":
        if weights and not Path(weights).is_file():
            raise FileNotFoundError(f"smallcnn has no torchvision weights; {weights!r} is not a file")
        body, dim = small_cnn(width)
        enum, path = None, Path(weights) if weights else None
    elif name in BACKBONES:
        enum, path = _resolve_weights(name, weights)
        try:
            body, dim = _torchvision_body(name, enum)
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            raise RuntimeError(
                f"could not download torchvision weights {weights!r} for {name} ({err}); without "
                f"internet, download them elsewhere and pass model.weights=/path/to/{name}.pth") from None
    else:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    model = MultiLabelNet(body, dim, num_classes)
    if path is not None:
        _load_local(model, path)
    return model


def _load_local(model: MultiLabelNet, path: Path) -> None:
    state = load_state_file(path)
    if any(k.startswith("body.") for k in state):
        model.load_state_dict(state)
        return
    # A plain torchvision backbone checkpoint: drop its 1000-way classifier.
    body_keys = model.body.state_dict().keys()
    kept = {k: v for k, v in state.items() if k in body_keys}
    missing = [k for k in body_keys if k not in kept]
    if missing:
        raise ValueError(f"{path}: not a {type(model.body).__name__} state dict "
                         f"({len(missing)} parameters missing, e.g. {missing[0]})")
    model.body.load_state_dict(kept)
