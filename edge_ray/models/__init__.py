"""Backbones: the names ``model.name`` accepts (here, free of torch, so that configs and CLI
parsers can list them) and, in ``networks.py``, the networks built from them.

``model.name`` is one of ``BACKBONES`` (torchvision's three of the paper and the small CNN)
or ``timm:<name>``: any model of timm (``timm.list_models()``), optionally with a weights
tag (``timm:vit_base_patch16_224.augreg_in21k``). timm is imported only when such a name is
checked or built. ``backbone_problem`` is the config rule of ``model.name``;
``normalization`` gives a backbone's own mean / std (timm's ``pretrained_cfg``, ImageNet's
for the others), which a run takes when ``data.mean`` / ``data.std`` are unset
(``resolve_normalization``, called where a run is built, as ``train.recipes`` does for the
training recipe)."""
from __future__ import annotations

from dataclasses import replace

BACKBONES = ("resnet50", "vgg16", "densenet121", "smallcnn")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile
TIMM_PREFIX = "timm:"
TIMM_PIN = "timm==1.0.31"  # what pyproject.toml installs; said in the messages when timm is missing


def is_timm(name: str) -> bool:
    return str(name).startswith(TIMM_PREFIX)


def timm_name(name: str) -> str:
    """``timm:resnet10t`` -> ``resnet10t`` (a name as ``timm.create_model`` takes it)."""
    return str(name)[len(TIMM_PREFIX):]


def import_timm(why: str):
    try:
        import timm
    except ImportError:
        raise ImportError(f"{why} needs timm; install it with `pip install {TIMM_PIN}`") from None
    return timm


def backbone_problem(name, key: str = "model.name") -> str | None:
    """None when ``name`` is a backbone this project builds, else the one-line problem (with
    the closest valid name). A timm name is checked against ``timm.list_models()`` (and a
    weights tag against ``timm.list_pretrained()``)."""
    from edge_ray.config.checks import choice_error, closest

    name = str(name)
    if name in BACKBONES:
        return None
    if not is_timm(name):
        return choice_error(name, key, BACKBONES + (f"{TIMM_PREFIX}<name of a timm model>",))
    timm = import_timm(f"{key}={name}")
    arch = timm_name(name)
    base, _, tag = arch.partition(".")
    models = timm.list_models()
    if base not in models:
        close = closest(base, models)
        hint = f"did you mean '{TIMM_PREFIX}{close}'? " if close else ""
        return (f"{key}={name!r} is not valid: timm {timm.__version__} has no model {base!r}; {hint}"
                "python -c \"import timm; print(timm.list_models('*vit*'))\" lists them")
    if tag and arch not in timm.list_pretrained():
        tags = [m for m in timm.list_pretrained(f"{base}.*")]
        close = closest(arch, tags)
        hint = f"did you mean '{TIMM_PREFIX}{close}'? " if close else ""
        return (f"{key}={name!r} is not valid: timm has no weights tag {tag!r} for {base}; {hint}"
                f"its tags: {', '.join(t.split('.', 1)[1] for t in tags) or 'none'}")
    return None


def normalization(name: str) -> tuple[tuple, tuple]:
    """(mean, std) the backbone's weights were trained with: timm's ``pretrained_cfg`` for a
    timm model (its default weights tag unless the name gives one), ImageNet's otherwise (the
    torchvision weights and the small CNN)."""
    from edge_ray.config.schema import IMAGENET_MEAN, IMAGENET_STD

    if is_timm(name):
        timm = import_timm(f"model.name={name}")
        cfg = timm.models.get_pretrained_cfg(timm_name(name))
        if cfg is not None and cfg.mean is not None and cfg.std is not None:
            return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)
    return IMAGENET_MEAN, IMAGENET_STD


def resolve_normalization(cfg):
    """``cfg`` (a Config) with ``data.mean`` / ``data.std`` filled from the backbone's own
    when unset (None); set values always win. Idempotent."""
    if cfg.data.mean is not None and cfg.data.std is not None:
        return cfg
    mean, std = normalization(cfg.model.name)
    return replace(cfg, data=replace(cfg.data, mean=tuple(cfg.data.mean or mean), std=tuple(cfg.data.std or std)))
