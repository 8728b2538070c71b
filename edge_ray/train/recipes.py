"""The training recipe a run takes from its method: optimiser, learning rate, weight decay,
schedule (``losses.LOSSES[method].recipe``; the paper's: Adam for BCE, SGD for the rest).

``train.optimizer``, ``train.lr``, ``train.weight_decay`` and ``train.schedule`` default to
unset (None). A run fills the unset ones from its method's recipe when it is built
(``resolve_recipe``), not when a file is read: the demo and ``compare`` set ``loss.method``
after loading, and the recipe must follow the method actually trained. A value set in YAML
or as key=value always wins. Checkpoints record the resolved values, so a rerun's resume
check compares what was trained. ``resolve_run`` does the same for the backbone's
normalisation (``data.mean`` / ``data.std``).
"""
from __future__ import annotations

from dataclasses import replace

from edge_ray.losses import LOSSES, SGD_RECIPE

KEYS = tuple(SGD_RECIPE)


def recipe_keys(train) -> list[str]:
    """The train keys a run will take from its method's recipe (those left unset)."""
    return [k for k in KEYS if getattr(train, k) is None]


def resolve_train(train, method: str):
    """``train`` (a TrainConfig) with every unset key filled from the recipe of ``method``
    (the SGD one for an empty or unknown method)."""
    recipe = LOSSES[method].recipe if method in LOSSES else SGD_RECIPE
    return replace(train, **{k: recipe[k] for k in recipe_keys(train)})


def resolve_recipe(cfg):
    """``cfg`` (a Config) with its training recipe resolved for ``cfg.loss.method``; idempotent."""
    return replace(cfg, train=resolve_train(cfg.train, cfg.loss.method))


def resolve_run(cfg):
    """``cfg`` with everything a run leaves unset resolved where the run is built: the
    training recipe of its method (``resolve_recipe``) and the backbone's own normalisation
    for an unset ``data.mean`` / ``data.std`` (``models.resolve_normalization``: timm's
    pretrained_cfg for a timm model, ImageNet's otherwise). Idempotent; checkpoints record
    the result."""
    from edge_ray.models import resolve_normalization

    return resolve_normalization(resolve_recipe(cfg))


def describe_recipe(cfg) -> str:
    """One line for a run header: the optimiser and schedule this run trains with, and which
    of them came from the method's recipe rather than the config."""
    t = resolve_train(cfg.train, cfg.loss.method)
    momentum = f", momentum {t.momentum:g}{' (Nesterov)' if t.nesterov else ''}" if t.optimizer == "sgd" else ""
    line = f"{t.optimizer}, lr {t.lr:g}{momentum}, weight decay {t.weight_decay:g}, {t.schedule} schedule"
    preset = recipe_keys(cfg.train)
    return line + (f" ({', '.join(preset)}: the paper's recipe for {cfg.loss.method})" if preset else "")


def recipe_record(cfg) -> dict:
    """The resolved optimiser and schedule of a run, for results.json."""
    t = resolve_train(cfg.train, cfg.loss.method)
    return {"method": cfg.loss.method, "optimizer": t.optimizer, "lr": t.lr, "momentum": t.momentum,
            "nesterov": t.nesterov, "weight_decay": t.weight_decay, "schedule": t.schedule, "epochs": t.epochs}
