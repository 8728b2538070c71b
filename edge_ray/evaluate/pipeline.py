"""The evaluation engine: one pass per dataset, every score, every metric.

The model runs once over the ID training set (to fit stateful scorers), the ID test set and
every OOD set, caching logits and penultimate features; every score is then computed from
the cache (ODIN, which perturbs inputs, gets one extra gradient pass per set). Outputs are
plain dicts that ``edge_ray.evaluate.report`` turns into the paper's tables and figures.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from edge_ray.data import EvalCache, ShardIndex, load_index
from edge_ray.evaluate.forward import collect_outputs, eval_chunks
from edge_ray.metrics import head_classes, head_tail_curve, mean_average_precision, ood_metrics, tail_only_mask
from edge_ray.scores import SCORES, FitData, build_scorer


@dataclass(frozen=True)
class EvalSets:
    id_train: ShardIndex
    id_test: ShardIndex
    ood: tuple  # of ShardIndex


def open_sets(id_train: str, id_test: str, ood: list[str], *, classes=None) -> EvalSets:
    """Open and check the sets: roles, non-empty, and one class list (the model's, if given)."""
    if not ood:
        raise ValueError("no OOD set given; pass at least one shard dir of role 'ood'")
    train = load_index(id_train, role="id")
    test = load_index(id_test, role="id")
    if test.classes != train.classes:
        raise ValueError(f"ID test set {test.dir} and ID training set {train.dir} have different class lists")
    if classes is not None and tuple(classes) != tuple(train.classes):
        raise ValueError(f"the checkpoint was trained on classes {list(classes)[:5]}... but "
                         f"{train.dir} lists {list(train.classes)[:5]}...; evaluate with the ID sets it was trained on")
    return EvalSets(train, test, tuple(load_index(p, role="ood") for p in ood))


def check_score_names(names) -> list[str]:
    bad = [n for n in names if n not in SCORES]
    if bad:
        raise ValueError(f"unknown score(s) {bad}; valid names: {', '.join(SCORES)}")
    if not names:
        raise ValueError(f"no score requested; valid names: {', '.join(SCORES)}")
    return list(names)


@dataclass(frozen=True)
class EvalOptions:
    image_size: int
    mean: tuple
    std: tuple
    batch_size: int = 128
    device: str = "cpu"
    fit_samples: int = 20000     # ID training images used to fit stateful scorers
    min_remaining: int = 20      # head/tail curve stops below this many ID images
    loader_workers: int = 0


def eval_options(cfg, device: str = "cpu") -> EvalOptions:
    """Evaluation settings of a run (a ``Config``): its image size and normalisation (the
    backbone's own where the config leaves it unset), its eval section."""
    from edge_ray.models import resolve_normalization

    cfg = resolve_normalization(cfg)
    return EvalOptions(image_size=cfg.data.image_size, mean=cfg.data.mean, std=cfg.data.std,
                       batch_size=cfg.eval.batch_size, device=device, min_remaining=cfg.eval.min_remaining)


def _loader(index, opts: EvalOptions, cache: EvalCache):
    return cache.loader(index, batch_size=opts.batch_size, image_size=opts.image_size,
                        num_workers=opts.loader_workers, mean=opts.mean, std=opts.std)


def _collect(model, index, opts, bar, cache: EvalCache, limit=None):
    loader = _loader(index, opts, cache)
    if limit is not None and index.num_samples > limit:
        loader = _first_batches(loader, -(-limit // opts.batch_size))
    bar.set_description(f"features {index.name}")
    return collect_outputs(model, loader, device=torch.device(opts.device), progress=bar)


def _first_batches(loader, n):
    for i, batch in enumerate(loader):
        if i >= n:
            return
        yield batch


def _odin_scores(scorer, model, index, opts, cache: EvalCache) -> np.ndarray:
    std = torch.tensor(opts.std, dtype=torch.float32).to(opts.device)
    out = [scorer.score_inputs(model, part, input_std=std)
           for x, _, _ in _loader(index, opts, cache) for part in eval_chunks(x.to(opts.device), opts.device)]
    return np.concatenate(out)


def needs_training_features(names) -> bool:
    """Whether a score of `names` is fitted on ID training features (Mahalanobis, ViM, ...):
    only then are the training images read."""
    return any(SCORES[name].needs_fit for name in names)


def fit_scorers(names, train_out: dict | None, model) -> dict:
    """The scorers of `names`, the stateful ones fitted on `train_out` (ID training
    features; None when no scorer of `names` needs fitting)."""
    scorers = {name: build_scorer(name) for name in names}
    stateful = [name for name, s in scorers.items() if s.needs_fit]
    if not stateful:
        return scorers
    if train_out is None:
        raise ValueError(f"scores {', '.join(stateful)} need ID training features to fit")
    head = model.head
    fit = FitData(train_out["features"], train_out["logits"], train_out["targets"],
                  head.weight.detach().cpu().numpy(), head.bias.detach().cpu().numpy())
    return {name: s.fit(fit) if s.needs_fit else s for name, s in scorers.items()}


def _score(scorer, out, model, index, opts, cache: EvalCache):
    if scorer.needs_inputs:
        return _odin_scores(scorer, model, index, opts, cache)
    return scorer.score(features=out["features"], logits=out["logits"])


def evaluate(model, sets: EvalSets, score_names, opts: EvalOptions, *, training: str = "model",
             cache: EvalCache | None = None) -> dict:
    """Every requested score on every OOD set, ID mAP, tail-only metrics and head/tail curves.

    `cache` keeps the decoded images of sets small enough (`EvalCache`): pass one to
    evaluate several models on the same sets; by default ODIN's pass reuses the images of
    the features pass within this call.

    Returns a JSON-serialisable dict (see ``edge_ray.evaluate.report`` for the layout on disk) and
    keeps, under keys that are not written, the raw ID/OOD JointEnergy arrays (``"_arrays"``,
    for the histograms), the fitted scorers (``"_scorers"``) and every score of every ID test
    image with its key (``"_id_test"``).
    """
    names = check_score_names(score_names)
    model = model.to(opts.device).eval()
    cache = cache if cache is not None else EvalCache()
    fit = needs_training_features(names)
    total = (min(sets.id_train.num_samples, opts.fit_samples) if fit else 0) + sets.id_test.num_samples
    total += sum(s.num_samples for s in sets.ood)
    with tqdm(total=total, unit="img", desc="features", mininterval=1.0) as bar:
        train_out = _collect(model, sets.id_train, opts, bar, cache, limit=opts.fit_samples) if fit else None
        test_out = _collect(model, sets.id_test, opts, bar, cache)
        ood_out = {s.name: _collect(model, s, opts, bar, cache) for s in sets.ood}
    scorers = fit_scorers(names, train_out, model)
    counts = list(sets.id_train.label_counts)
    tail = tail_only_mask(test_out["targets"], counts)
    result = {"training": training, "map": mean_average_precision(test_out["logits"], test_out["targets"]),
              "classes": list(sets.id_train.classes), "class_counts": counts,
              "num_id_test": int(len(test_out["keys"])), "num_tail_only": int(tail.sum()),
              "ood_sets": {s.name: s.num_samples for s in sets.ood}, "scores": {},
              "scorer_state": {n: s.params for n, s in scorers.items()}}
    id_scores = {}
    for name in tqdm(names, desc="scores", mininterval=1.0):
        scorer = scorers[name]
        id_s = id_scores[name] = _score(scorer, test_out, model, sets.id_test, opts, cache)
        per_set = {}
        for s in sets.ood:
            o = _score(scorer, ood_out[s.name], model, s, opts, cache)
            row = ood_metrics(id_s, o)
            row["tail"] = ood_metrics(id_s[tail], o) if tail.any() else None
            row["curve"] = head_tail_curve(id_s, test_out["targets"], o, counts,
                                           min_remaining=opts.min_remaining)
            per_set[s.name] = row
        result["scores"][name] = per_set
    result["_arrays"] = _energy_arrays(test_out, ood_out, tail, counts)
    result["_scorers"] = scorers
    result["_id_test"] = {"keys": list(test_out["keys"]), "scores": id_scores}
    return result


def collect_set(model, index, opts: EvalOptions, *, limit: int | None = None, progress: bool = True,
                cache: EvalCache | None = None) -> dict:
    """Features, logits, targets and keys of a shard set (its first ``limit`` images)."""
    model = model.to(opts.device).eval()
    total = index.num_samples if limit is None else min(limit, index.num_samples)
    with tqdm(total=total, unit="img", desc="features", mininterval=1.0, disable=not progress) as bar:
        return _collect(model, index, opts, bar, cache if cache is not None else EvalCache(0), limit=limit)


def score_set(scorer, model, index, opts: EvalOptions, *, progress: bool = True) -> dict:
    """One pass over a shard set with a fitted scorer, as ``evaluate`` scores its sets:
    ``keys``, ``scores`` [N], ``logits`` [N, C] and ``targets`` [N, C]."""
    cache = EvalCache()  # ODIN's pass reuses the features pass's images when they fit
    out = collect_set(model, index, opts, progress=progress, cache=cache)
    return {"keys": out["keys"], "scores": _score(scorer, out, model, index, opts, cache),
            "logits": out["logits"], "targets": out["targets"]}


def _energy_arrays(test_out, ood_out, tail, counts) -> dict:
    """JointEnergy of ID-head, ID-tail and each OOD set (paper Fig. 1a/b)."""
    je = SCORES["jointenergy"]()
    id_e = je.score(logits=test_out["logits"])
    head = test_out["targets"][:, head_classes(counts)].astype(bool).any(axis=1)
    return {"id_head": id_e[head], "id_tail": id_e[tail],
            "ood": {k: je.score(logits=v["logits"]) for k, v in ood_out.items()}}


def evaluate_checkpoint(checkpoint_dir: str, out_dir: str, *, scores, id_train=None, id_test=None,
                        ood=None, training: str = "model", device: str = "cpu") -> dict:
    """Evaluate one checkpoint; returns the public result dict (also written to ``out_dir``)."""
    from edge_ray.evaluate.report import write_results
    from edge_ray.train.checkpoint import load_trained
    from edge_ray.train.recipes import recipe_record

    model, cfg, _ = load_trained(checkpoint_dir)
    if not (id_test or cfg.data.id_test):
        raise ValueError(f"{checkpoint_dir}: the run's config sets no data.id_test (a tuning config names no "
                         "test sets); pass --id-test DIR")
    sets = open_sets(id_train or cfg.data.id_train, id_test or cfg.data.id_test,
                     list(ood if ood is not None else cfg.data.ood))
    if sets.id_train.num_classes != model.num_classes:
        raise ValueError(f"the checkpoint has {model.num_classes} classes but {sets.id_train.dir} "
                         f"lists {sets.id_train.num_classes}; evaluate with the ID sets it was trained on")
    result = evaluate(model, sets, scores, eval_options(cfg, device), training=training)
    result["recipe"] = recipe_record(cfg)
    paths = write_results({training: result}, out_dir)
    return {"result": {k: v for k, v in result.items() if not k.startswith("_")},
            "paths": {k: [str(p) for p in v] if isinstance(v, list) else str(v) for k, v in paths.items()}}
