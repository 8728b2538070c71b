"""The runs of `launch.py compare`: one per method x seed, each a Ray Train run followed by
an evaluation with every score, driven as Ray tasks a few at a time.

A run is named ``compare-<method>-seed<k>`` under ``<out>/runs``; its evaluation is saved
beside its checkpoints as ``results.json`` together with the resolved config it was trained
with. A later compare whose run has the same config and asks for no new score reads that
file and starts nothing, so ``--seeds 7`` after ``--seeds 5`` trains only seeds 5 and 6.
"""
from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import ray
import yaml
from tqdm import tqdm

from edge_ray import storage
from edge_ray.losses import LOSSES
from edge_ray.config import Config, ConfigError, did_you_mean, from_dict, validate
from edge_ray.train.recipes import recipe_record, resolve_recipe
from edge_ray.train.ray_trainer import run_dir, run_training
from edge_ray.tune.report import best_row, pareto_rows
from edge_ray.tune.space import apply_params

# Spellings the CLI accepts besides the config's loss.method names (the issue writes energyoe).
ALIASES = {"energyoe": "energy_oe", "hendrycksoe": "hendrycks_oe", "db": "dbloss"}


def method_name(raw: str, flag: str = "--methods") -> str:
    """One CLI method name -> its loss.method value; a clear error for a typo."""
    key = raw.lower().replace("-", "_")
    method = ALIASES.get(key.replace("_", ""), key)
    if method not in LOSSES:
        hint = did_you_mean(key, LOSSES, aliases=ALIASES)
        raise ConfigError(f"{flag}: unknown method {raw!r}; {hint}choose from {', '.join(LOSSES)} "
                          "(energyoe = energy_oe)")
    return method


def parse_methods(names) -> list[str]:
    """CLI method names -> loss.method values, in order; one clear error for a typo or a repeat."""
    out = []
    for raw in names:
        method = method_name(raw)
        if method in out:
            raise ConfigError(f"--methods names {method} twice; list each method once")
        out.append(method)
    if len(out) < 2:
        raise ConfigError("--methods needs at least two methods to compare, e.g. --methods oe edge")
    return out


@dataclass(frozen=True)
class Run:
    method: str
    seed: int
    cfg: Config                   # resolved: what the run trains with

    @property
    def name(self) -> str:
        return self.cfg.train.run_name

    @property
    def results_path(self) -> str:
        return storage.join(run_dir(self.cfg), "results.json")


def plan(base: Config, methods, seeds, oe: str, tuned: dict | None = None) -> list[Run]:
    """Every method x seed: loss.method, train.seed, the run name, OE for OE methods only,
    and each method's tuned values when given (``tuned``: method -> values by dotted key).
    Recipes are resolved per method (train.recipes)."""
    tuned = tuned or {}
    runs = []
    for method in methods:
        for seed in seeds:
            cfg = replace(base, loss=replace(base.loss, method=method),
                          data=replace(base.data, oe=oe if LOSSES[method].uses_oe else ""),
                          train=replace(base.train, seed=seed, run_name=f"compare-{method}-seed{seed}"))
            if tuned.get(method):
                cfg = apply_params(cfg, tuned[method])
            runs.append(Run(method, seed, resolve_recipe(validate(cfg))))
    return runs


def load_finished(run: Run, scores) -> dict | None:
    """The saved record of this run if it was trained with this exact config and scored
    with every requested score; None means it has to run (again)."""
    if not storage.is_file(run.results_path):
        return None
    record = storage.read_json(run.results_path)
    if record.get("config") != run.cfg.to_dict() or not set(scores) <= set(record["result"]["scores"]):
        return None
    return record


def save_run(run: Run, record: dict) -> None:
    """The one write per run: its record beside its checkpoints."""
    storage.write_text(run.results_path, json.dumps(record, indent=1, default=_plain))


def _plain(o):
    return o.item() if isinstance(o, np.generic) else o.tolist() if isinstance(o, np.ndarray) else str(o)


def evaluate_run(checkpoint: str, cfg_dict: dict, scores: list, device: str) -> dict:
    """Every score on the run's ID test and OOD sets (the public part of evaluate())."""
    from edge_ray.evaluate.pipeline import eval_options
    from edge_ray.train.checkpoint import load_trained
    from edge_ray.evaluate.pipeline import evaluate, open_sets

    cfg = from_dict(cfg_dict)
    model, _, _ = load_trained(checkpoint)
    sets = open_sets(cfg.data.id_train, cfg.data.id_test, list(cfg.data.ood))
    result = evaluate(model, sets, scores, eval_options(cfg, device), training=cfg.loss.method)
    result["recipe"] = recipe_record(cfg)
    return json.loads(json.dumps({k: v for k, v in result.items() if not k.startswith("_")}, default=_plain))


@ray.remote(num_cpus=0)
def run_one(cfg_dict: dict, scores: list, eval_cpus: float, eval_gpus: float, callbacks=()) -> dict:
    """Train (Ray Train reserves the workers' resources; this task only waits, at 0 CPU),
    then evaluate as a task with the run's CPUs / GPU. ``callbacks``: Ray Train callbacks
    (MLflow's relay to the driver)."""
    cfg = from_dict(cfg_dict)
    start = time.perf_counter()
    summary = run_training(cfg, callbacks=callbacks)
    trained = time.perf_counter()
    task = ray.remote(evaluate_run).options(num_cpus=eval_cpus, num_gpus=eval_gpus)
    result = ray.get(task.remote(summary.checkpoint_dir, cfg_dict, scores, "cuda" if eval_gpus else "cpu"))
    last = summary.history[-1] if summary.history else {}
    return {"method": cfg.loss.method, "seed": cfg.train.seed, "name": cfg.train.run_name, "config": cfg_dict,
            "checkpoint": summary.checkpoint_dir, "train_seconds": round(trained - start, 1),
            "eval_seconds": round(time.perf_counter() - trained, 1),
            "last_epoch": {k: last[k] for k in ("epoch", "loss", "val_map", "gap_active") if k in last},
            "result": result}


def _error_line(err: Exception) -> str:
    cause = getattr(err, "cause", None) or err
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(cause).__name__)[:300]


def _fmt_eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def _done_line(k: int, total: int, rec: dict, eta: str) -> str:
    je = rec["result"]["scores"].get("jointenergy")
    fpr = f", JointEnergy FPR95 {100 * np.mean([m['fpr95'] for m in je.values()]):.1f}% (mean of sets)" if je else ""
    return (f"[{k}/{total}] {rec['method']} seed {rec['seed']}: train {rec['train_seconds']:.0f}s + eval "
            f"{rec['eval_seconds']:.0f}s, test mAP {100 * rec['result']['map']:.1f}%{fpr}; ETA {eta}")


def drive(runs: list[Run], scores: list, *, slots: int, eval_cpus: float, eval_gpus: float,
          tracking=None) -> tuple[dict, set]:
    """Run what is not finished, ``slots`` at a time; return ``{run name: record}`` and the
    names of the runs reused from disk. Progress: a bar of runs done / total and one line
    per finished run with the ETA."""
    records = {r.name: rec for r in runs if (rec := load_finished(r, scores)) is not None}
    for r in runs:  # MLflow (edge_ray/tracking/ray_study.py): a child run per method x seed
        if tracking is not None and r.name in records:
            tracking.reused(r.cfg, records[r.name]["result"])
    reused = set(records)
    todo = [r for r in runs if r.name not in records]
    pending, failed, start = {}, [], time.perf_counter()
    with tqdm(total=len(runs), initial=len(records), unit="run", desc="runs", mininterval=5) as bar:
        while todo or pending:
            while todo and len(pending) < slots:
                r = todo.pop(0)
                callbacks = tracking.start(r.cfg) if tracking is not None else []
                pending[run_one.remote(r.cfg.to_dict(), list(scores), eval_cpus, eval_gpus, callbacks)] = r
            [ref], _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(ref)
            try:
                rec = ray.get(ref)
            except Exception as err:  # noqa: BLE001 - one run's failure must not lose the others
                failed.append(f"{run.method} seed {run.seed}: {_error_line(err)}")
                if tracking is not None:
                    tracking.done(run.cfg, status="FAILED")
                tqdm.write(f"FAILED {run.name}: {failed[-1]}")
                continue
            save_run(run, rec)
            if tracking is not None:
                tracking.done(run.cfg, rec["result"])
            records[run.name] = rec
            bar.update(1)
            fresh = bar.n - bar.initial
            eta = (time.perf_counter() - start) / fresh * (len(todo) + len(pending))
            tqdm.write(_done_line(bar.n, len(runs), rec, _fmt_eta(eta)))
    if failed:
        raise ValueError(f"{len(failed)} of {len(runs)} runs failed ({'; '.join(failed[:3])}); rerun the same "
                         "command to retry them, finished runs are reused")
    return records, reused


def _cell(value: str):
    """A trials.csv cell as the value it was (numbers come back as numbers)."""
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return None if value == "" else value


def _flag(method: str) -> str:
    return f"--from-study {method}="


def parse_studies(words, edge_from_study: str | None, methods: list[str]) -> tuple[dict, list[str]]:
    """``--from-study METHOD=TUNE_OUT ...`` (and ``--edge-from-study``) -> {method: folder}, and
    the words that are config overrides instead (``section.key=value`` after the flag's
    values: argparse gives them to the flag). Every named method must be compared."""
    studies, overrides = {}, []
    for word in words or []:
        key, eq, where = word.partition("=")
        if not eq or not where:
            raise ConfigError(f"--from-study takes METHOD=TUNE_OUT, e.g. oe=results/tune/oe-search; got {word!r}")
        if "." in key:
            overrides.append(word)
            continue
        method = method_name(key, "--from-study")
        if method in studies:
            raise ConfigError(f"--from-study names {method} twice")
        studies[method] = where
    if edge_from_study:
        if "edge" in studies:
            raise ConfigError("--edge-from-study and --from-study edge=... both name EDGE's study; keep one")
        studies["edge"] = edge_from_study
    missing = [m for m in studies if m not in methods]
    if missing:
        raise ConfigError(f"--from-study names {', '.join(missing)}, which --methods does not compare "
                          f"({' '.join(methods)}); add it to --methods or drop its study")
    return studies, overrides


def params_from_study(where: str, method: str = "edge") -> tuple[dict, str]:
    """``method``'s tuned values from a `launch.py tune` output folder (or a search name under
    results/tune): the Pareto trial best on the search's first objective for a two-objective
    search, the best finished trial otherwise. Returns (values by dotted key, description).
    A loss key the method does not use (an EDGE study given for OE) is refused."""
    # the tune --out folder (a path or a URI), or a bare search name under results/tune
    bare = not storage.is_uri(where) and "/" not in where.strip("/")
    folder = storage.join("results/tune", where) if bare and not storage.is_dir(where) else where
    search, trials = storage.join(folder, "search.yaml"), storage.join(folder, "trials.csv")
    if not (storage.is_file(search) and storage.is_file(trials)):
        raise ConfigError(f"{_flag(method)}{where}: no search.yaml and trials.csv in {folder}; pass the "
                          "--out folder of a `launch.py tune` run (default results/tune/NAME)")
    s = yaml.safe_load(storage.read_text(search))
    metrics, modes = tuple(s["metrics"]), tuple(s["modes"])
    rows = [{k: _cell(v) for k, v in row.items()}
            for row in csv.DictReader(io.StringIO(storage.read_text(trials), newline=""))]
    if len(metrics) > 1:
        front = pareto_rows(rows, metrics, modes)
        chosen, how = (front[0] if front else None), f"best {metrics[0]} on the Pareto front"
    else:
        chosen, how = best_row(rows, metrics[0], modes[0]), f"best {metrics[0]}"
    if chosen is None:
        raise ConfigError(f"{_flag(method)}{where}: {trials} has no finished trial with "
                          f"{', '.join(metrics)}; let the search finish (tune --resume) first")
    params = {k: chosen[k] for k in s["space"] if not k.startswith("data.") and chosen.get(k) is not None}
    unused = [k for k in params if k.startswith("loss.") and k != "loss.method"
              and k.split(".", 1)[1] not in LOSSES[method].params]
    if unused:
        raise ConfigError(f"{_flag(method)}{where}: the search tuned {', '.join(unused)}, which "
                          f"{LOSSES[method].display} does not use; pass a search of loss.method={method}")
    shown = ", ".join(f"{k}={v}" for k, v in params.items())
    scores = ", ".join(f"{m}={chosen.get(m)}" for m in metrics)
    return params, f"trial {chosen['trial']} of search {s['name']!r} ({how}: {scores}): {shown}"
