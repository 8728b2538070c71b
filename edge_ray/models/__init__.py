"""Backbones: the names ``model.name`` accepts (here, free of torch, so that configs and CLI
parsers can list them) and, in ``networks.py``, the networks built from them."""

BACKBONES = ("resnet50", "vgg16", "densenet121", "smallcnn")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile
