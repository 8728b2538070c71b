"""What a search leaves in its output folder: the trial table (Markdown + CSV), ``best.yaml``,
the objective plot and, for two objectives, the Pareto front.

Pure bookkeeping over plain rows (one dict per trial); nothing here talks to Ray.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from edge_ray.config import Config  # noqa: E402
from edge_ray.tune.space import apply_params  # noqa: E402

# Trial states in the table. STOPPED = ended early by ASHA (fewer epochs than train.epochs);
# UNFINISHED = the search was interrupted before the trial ended (`tune --resume` runs it).
DONE, STOPPED, ERROR, UNFINISHED = "DONE", "STOPPED", "ERROR", "UNFINISHED"
SIDE_METRICS = ("val_map", "val_auroc", "loss")


def _number(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


# A tie on the objective (a held-out set every trial separates perfectly: FPR95 0) goes to the
# better of the other validation metrics, in this order, and only then to the trial's id.
TIE_BREAKS = (("val_auroc", "max"), ("val_fpr95", "min"), ("val_map", "max"))


def sort_rows(rows: list[dict], metric: str, mode: str) -> list[dict]:
    """Best objective first, ties by TIE_BREAKS; trials without a value (errors, unfinished) last."""
    def signed(r, m, md):
        v = _number(r.get(m))
        return (v is None, 0.0 if v is None else (v if md == "min" else -v))

    def key(r):
        ties = [x for m, md in TIE_BREAKS if m != metric for x in signed(r, m, md)]
        return (*signed(r, metric, mode), *ties, r["trial"])
    return sorted(rows, key=key)


def best_row(rows: list[dict], metric: str, mode: str) -> dict | None:
    """The best trial that trained every epoch (an ASHA-stopped trial's value is from a
    shorter run, so it is not comparable); any trial with a value when none did."""
    valued = [r for r in rows if _number(r.get(metric)) is not None]
    full = [r for r in valued if r["status"] == DONE] or valued
    return sort_rows(full, metric, mode)[0] if full else None


def pareto_rows(rows: list[dict], metrics: tuple, modes: tuple) -> list[dict]:
    """Non-dominated trials (no other trial is at least as good on every metric and better
    on one), the same set as Optuna's ``study.best_trials``."""
    signed = []
    for r in rows:
        vals = [_number(r.get(m)) for m in metrics]
        if r["status"] == DONE and None not in vals:
            signed.append((r, [v if mode == "min" else -v for v, mode in zip(vals, modes)]))
    front = [r for r, a in signed
             if not any(all(x <= y for x, y in zip(b, a)) and b != a for _, b in signed)]
    return sort_rows(front, metrics[0], modes[0])


def _cell(v) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def columns(rows: list[dict], params: list[str], metrics: tuple) -> list[str]:
    side = [m for m in SIDE_METRICS if m not in metrics and any(m in r for r in rows)]
    return ["trial", "status", "epochs", *params, *metrics, *side, "seconds"]


def markdown(rows: list[dict], cols: list[str]) -> str:
    lines = ["| # | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {i} | " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for i, r in enumerate(rows, 1)]
    errors = [r for r in rows if r.get("error")]
    if errors:
        lines += ["", "Errors:"] + [f"- {r['trial']}: {r['error']}" for r in errors]
    return "\n".join(lines)


def write_csv(rows: list[dict], cols: list[str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols + ["checkpoint", "error"], extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in w.fieldnames})


def write_best(base: Config, row: dict, params: list[str], path: Path, *, search: str,
               metrics: tuple) -> Config:
    """The base config with the best trial's values: ``launch.py train --config best.yaml``.

    Only ``train.run_name`` changes besides the tuned keys, so training the winner never
    resumes (and silently skips) an older run of the base config's name.
    """
    cfg = apply_params(base, {**{p: row[p] for p in params},
                              "train.run_name": f"{search}-best"})
    scores = ", ".join(f"{m}={_cell(row.get(m))}" for m in metrics)
    header = (f"# Best trial {row['trial']} of search {search!r} ({scores}).\n"
              f"# Train it with: python launch.py train --config {path}\n")
    path.write_text(header + cfg.to_yaml())
    return cfg


def plot_objective(rows: list[dict], metric: str, mode: str, path: Path, *,
                   second: tuple | None = None, front: list[dict] = ()) -> Path:
    """Objective per trial (in start order) with the running best; with ``second=(metric,
    mode)`` a second panel plots both objectives and marks the Pareto front."""
    ordered = sorted(rows, key=lambda r: r["trial"])
    fig, axes = plt.subplots(1, 2 if second else 1, figsize=(11 if second else 6, 4), squeeze=False)
    ax = axes[0][0]
    colors = {DONE: "tab:blue", STOPPED: "tab:orange", ERROR: "tab:red", UNFINISHED: "tab:gray"}
    xs, best, running = [], [], None
    for i, r in enumerate(ordered, 1):
        v = _number(r.get(metric))
        if v is None:
            continue
        ax.scatter(i, v, color=colors.get(r["status"], "black"), zorder=3)
        if r["status"] == DONE:
            running = v if running is None else (min if mode == "min" else max)(running, v)
        if running is not None:
            xs.append(i)
            best.append(running)
    ax.step(xs, best, where="post", color="black", lw=1, label=f"best so far ({mode})")
    for status in sorted({r["status"] for r in ordered}):
        ax.scatter([], [], color=colors.get(status, "black"), label=status.lower())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial (start order)", ylabel=metric, title=f"{metric} per trial")
    ax.legend(fontsize=8)
    if second:
        ax2 = axes[0][1]
        pts = [(r, _number(r.get(metric)), _number(r.get(second[0]))) for r in ordered]
        pts = [(r, x, y) for r, x, y in pts if x is not None and y is not None]
        ax2.scatter([x for _, x, _ in pts], [y for _, _, y in pts], color="tab:blue", label="trials")
        fx = sorted((_number(r[metric]), _number(r[second[0]])) for r in front)
        if fx:
            ax2.plot(*zip(*fx), "o-", color="tab:red", label="Pareto front")
        ax2.set(xlabel=f"{metric} ({mode})", ylabel=f"{second[0]} ({second[1]})", title="objectives")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
