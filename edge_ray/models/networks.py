"""Backbones with a multi-label linear head, split as ``forward_features`` / ``forward_head``.

``forward_features(x) -> [N, D]`` is the pooled penultimate feature that Mahalanobis,
ReAct, ViM, ASH, KNN and the dilation distance use; ``forward_head(f) -> [N, C]`` is the
linear classifier ``head`` (weight [C, D], bias [C]). Pretrained ImageNet weights come from a
torchvision weights name (needs internet or a warm torch hub cache) or a local file.

timm backbones (``timm:<name>``, ``TimmMultiLabelNet``): the timm model is built with
``num_classes=0`` and its pooled pre-logits are the feature, whatever the architecture:
``forward_head(forward_features(x), pre_logits=True)``. For a CNN (ResNet, ConvNeXt) that is
the global-average-pooled last stage (after ConvNeXt's head norm); for a ViT or DeiT the
class token (or the mean of the patch tokens for models pooled that way) after the final
LayerNorm (``fc_norm`` where the model has one); for Swin the average-pooled tokens after
its final norm. ``D`` is the model's ``head_hidden_size`` (= ``num_features`` unless the
model has a pre-logits layer). Models with a fixed input size (ViT, Swin: timm's
``pretrained_cfg.fixed_input_size``) are built at ``img_size = data.image_size``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from edge_ray.models import BACKBONES, TIMM_PREFIX, import_timm, is_timm, timm_name


class MultiLabelNet(nn.Module):
    """A feature extractor ``body`` (image -> [N, D]) and a linear multi-label ``head``.
    ``arch``: what ``build_model`` needs to build it again (name, width, and for timm
    models the image size it was built at and timm's version)."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int, arch: dict | None = None):
        super().__init__()
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.arch = dict(arch or {})

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class TimmMultiLabelNet(MultiLabelNet):
    """A timm model (built with ``num_classes=0``) as the body; the feature is its pooled
    pre-logits output (module docstring), the head this project's linear layer."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_head(self.body.forward_features(x), pre_logits=True)


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
    """A state dict from a file (``.safetensors``, or a torch file read with
    ``weights_only``): never unpickling arbitrary objects."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def build_model(name: str, num_classes: int, *, weights: str = "", width: int = 32,
                image_size: int | None = None) -> MultiLabelNet:
    """Build a backbone with a fresh ``num_classes`` head.

    ``weights``: "" (random init), a torchvision weights name for the backbone (downloaded
    by torchvision; fails with a clear message without internet), or a local ``.pth``: either
    a torchvision ImageNet state dict for the backbone or a full ``MultiLabelNet`` state dict.
    For ``timm:<name>`` (``_timm_model``): "", ``pretrained`` (timm's weights for the name,
    downloaded from its hub), or a local ``.safetensors`` / ``.pth`` file holding the timm
    model's own state dict or a full ``MultiLabelNet`` one. ``image_size``: the input size
    a timm model with a fixed input size (ViT, Swin) is built for (default: its own).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    arch = {"name": name, "width": width}
    if is_timm(name):
        return _timm_model(name, num_classes, weights=weights, width=width, image_size=image_size)
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
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES} or {TIMM_PREFIX}<timm model>")
    model = MultiLabelNet(body, dim, num_classes, arch)
    if path is not None:
        _load_local(model, path)
    return model


TIMM_PRETRAINED = "pretrained"  # model.weights for timm's own weights of the model (a download)


def _timm_model(name: str, num_classes: int, *, weights: str, width: int, image_size: int | None) -> MultiLabelNet:
    timm = import_timm(f"model.name={name}")
    arch_name = timm_name(name)
    cfg = timm.models.get_pretrained_cfg(arch_name)
    if cfg is None and not timm.is_model(arch_name.split(".")[0]):
        raise ValueError(f"unknown backbone {name!r}: timm {timm.__version__} has no model {arch_name!r}")
    kwargs = {"num_classes": 0}
    fixed = bool(cfg is not None and cfg.fixed_input_size)
    if fixed and image_size:
        kwargs["img_size"] = int(image_size)
    path = None
    if weights and weights != TIMM_PRETRAINED:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"model.weights {weights!r} is not a file; for {name} give a local "
                                    f".safetensors / .pth state dict, {TIMM_PRETRAINED!r} (timm's weights, "
                                    "downloaded) or nothing (random init)")
    try:
        body = timm.create_model(arch_name, pretrained=weights == TIMM_PRETRAINED, **kwargs)
    except (OSError, RuntimeError) as err:
        if weights != TIMM_PRETRAINED:
            raise
        raise RuntimeError(f"could not fetch timm's weights for {arch_name} ({str(err).splitlines()[0]}); without "
                           "internet, save them elsewhere (timm.create_model(name, pretrained=True).state_dict() "
                           f"to a .safetensors file) and pass model.weights=/path/to/{arch_name}.safetensors") from None
    dim = int(getattr(body, "head_hidden_size", None) or body.num_features)
    arch = {"name": name, "width": width, "timm": {"model": arch_name, "version": timm.__version__}}
    if "img_size" in kwargs:
        arch["image_size"] = kwargs["img_size"]
    model = TimmMultiLabelNet(body, dim, num_classes, arch)
    if path is not None:
        state = load_state_file(path)
        if any(k.startswith("body.") for k in state):
            model.load_state_dict(state)
        else:
            _load_timm_body(body, state, path)
    return model


def _load_timm_body(body: nn.Module, state: dict, path: Path) -> None:
    """A timm model's own state dict (as ``timm.create_model(...).state_dict()`` or a hub
    download gives it) into ``body``: timm's checkpoint filter of the model's module first
    (it resamples a ViT's position embedding to this image size, among others), its
    classifier dropped, then every remaining key must fit."""
    import sys

    filter_fn = getattr(sys.modules.get(type(body).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, body)
    classifier = getattr(body, "pretrained_cfg", {}).get("classifier") or ()
    for prefix in (classifier,) if isinstance(classifier, str) else classifier:
        for suffix in (".weight", ".bias"):
            state.pop(prefix + suffix, None)
    try:
        body.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise ValueError(f"{path}: not a state dict of timm's {type(body).__name__} "
                         f"({detail[:300]}{' ...' if len(detail) > 300 else ''})") from None


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
