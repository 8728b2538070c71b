"""What `launch.py compare` leaves in its output folder, from ``edge_ray.compare.stats``'s rows:
``results.json`` (every per-seed value, every test), ``table.md`` (headline tables, the paired
tests, every score), ``table.csv`` (one row per method x score x OOD set x part x metric) and
``compare_<score>.png`` (mean ± std bars with each seed's value as a dot).

Tables are in % like the paper's; results.json keeps the metrics' fractions. Every write is
in ``write_study``, so the output folder is one place to change.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edge_ray import storage  # noqa: E402
from edge_ray.compare.stats import METRICS, mean_std  # noqa: E402
from edge_ray.losses import LOSSES  # noqa: E402



def display(method: str) -> str:
    """The name a table or plot shows for a training method (``losses.LOSSES``)."""
    return LOSSES[method].display if method in LOSSES else method


LABELS = {"fpr95": "FPR95", "auroc": "AUROC", "aupr_in": "AUPR"}
CSV_HEADER = ["method", "score", "ood_set", "part", "metric", "n", "mean", "std", "seeds", "values"]


def pm(mean: float, std: float | None, scale: float = 100.0, digits: int = 1) -> str:
    """``58.0 ± 2.1`` (in % by default); the mean alone for one seed."""
    if std is None:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _order(rows: list[dict], key: str) -> list:
    return list(dict.fromkeys(r[key] for r in rows))


def _find(rows, **want) -> dict | None:
    return next((r for r in rows if all(r[k] == v for k, v in want.items())), None)


def headline(cells: list[dict], maps: list[dict], score: str, metric: str, part: str = "all") -> str:
    """Methods x OOD sets for one score and metric, ``mean ± std`` over seeds; the last
    columns are the mean over OOD sets (averaged per seed first) and ID mAP."""
    rows = [c for c in cells if c["score"] == score and c["part"] == part and c["metric"] == metric]
    sets = _order(rows, "ood_set")
    lines = ["| training | " + " | ".join(s.removeprefix("ood_") for s in sets) + " | mean | mAP |",
             "|---|" + "---|" * (len(sets) + 2)]
    for method in _order(rows, "method"):
        per_set = [_find(rows, method=method, ood_set=s) for s in sets]
        out = [pm(c["mean"], c["std"]) if c else "–" for c in per_set]
        found = [c for c in per_set if c]
        common = sorted(set.intersection(*(set(c["seeds"]) for c in found))) if found else []
        per_seed = [np.mean([c["values"][c["seeds"].index(s)] for c in found]) for s in common]
        out.append(pm(*mean_std(per_seed)) if per_seed else "–")
        m = _find(maps, method=method)
        out.append(pm(m["mean"], m["std"]) if m else "–")
        lines.append(f"| {display(method)} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def _p(p) -> str:
    return "–" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def _delta(r) -> str:
    ci = r["ci95"]
    spread = f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else ""
    return f"{100 * r['mean_diff']:+.1f}{spread}"


def tests_table(tests: list[dict], score: str) -> str:
    """EDGE - baseline per OOD set: mean difference in points with its 95% CI, paired-t p,
    Holm-adjusted p and the verdict, for FPR95 and AUROC."""
    rows = [r for r in tests if r["score"] == score]
    lines = ["| EDGE vs | OOD set | n | ΔFPR95 [95% CI] | p | p Holm | ΔAUROC [95% CI] | p | p Holm | verdict (FPR95 / AUROC) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for baseline in _order(rows, "baseline"):
        for ood_set in _order(rows, "ood_set"):
            f = _find(rows, baseline=baseline, ood_set=ood_set, metric="fpr95")
            a = _find(rows, baseline=baseline, ood_set=ood_set, metric="auroc")
            if not (f and a):
                continue
            lines.append(f"| {display(baseline)} | {ood_set.removeprefix('ood_')} | {f['n']} | "
                         f"{_delta(f)} | {_p(f['p'])} | {_p(f['p_holm'])} | {_delta(a)} | {_p(a['p'])} | "
                         f"{_p(a['p_holm'])} | {f['verdict']} / {a['verdict']} |")
    return "\n".join(lines)


def map_tests_table(tests: list[dict]) -> str:
    """EDGE - baseline in ID test mAP, paired by seed."""
    lines = ["| EDGE vs | n | ΔmAP [95% CI] | p | p Holm | EDGE lower in | verdict |", "|---|---|---|---|---|---|---|"]
    for r in tests:
        lower = sum(d < 0 for d in r["diffs"])
        lines.append(f"| {display(r['baseline'])} | {r['n']} | {_delta(r)} | {_p(r['p'])} | "
                     f"{_p(r['p_holm'])} | {lower} of {r['n']} seeds | {r['verdict']} |")
    return "\n".join(lines)


def full_table(cells: list[dict], part: str = "all") -> str:
    """Every method x score, FPR95 / AUROC / AUPR per OOD set, ``mean ± std`` in %."""
    rows = [c for c in cells if c["part"] == part]
    sets = _order(rows, "ood_set")
    header = ["training", "score"] + [f"{s.removeprefix('ood_')} {LABELS[m]}" for s in sets for m in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in _order(rows, "method"):
        for score in _order([c for c in rows if c["method"] == method], "score"):
            out = []
            for s in sets:
                for m in METRICS:
                    c = _find(rows, method=method, score=score, ood_set=s, metric=m)
                    out.append(pm(c["mean"], c["std"]) if c else "–")
            lines.append(f"| {display(method)} | {score} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def csv_rows(cells: list[dict], maps: list[dict]) -> list[list]:
    """table.csv: metrics in % with full precision; mAP rows have metric ``map``."""
    def row(c, score, ood_set, part, metric):
        std = "" if c["std"] is None else 100 * c["std"]
        return [c["method"], score, ood_set, part, metric, c["n"], 100 * c["mean"], std,
                ";".join(map(str, c["seeds"])), ";".join(repr(100 * v) for v in c["values"])]
    out = [row(c, c["score"], c["ood_set"], c["part"], c["metric"]) for c in cells]
    return out + [row(m, "", "", "all", "map") for m in maps]


def plot(cells: list[dict], score: str, path: Path) -> Path:
    """FPR95 and AUROC per OOD set: one bar per method (mean), error bar = std, dots = seeds."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, metric in zip(axes, ("fpr95", "auroc")):
        rows = [c for c in cells if c["score"] == score and c["part"] == "all" and c["metric"] == metric]
        sets, methods = _order(rows, "ood_set"), _order(rows, "method")
        width = 0.8 / max(1, len(methods))
        for i, method in enumerate(methods):
            x = np.arange(len(sets)) + (i - (len(methods) - 1) / 2) * width
            found = [_find(rows, method=method, ood_set=s) for s in sets]
            means = [100 * c["mean"] if c else np.nan for c in found]
            stds = [100 * (c["std"] or 0) if c else 0 for c in found]
            ax.bar(x, means, width, yerr=stds, capsize=3, label=display(method), alpha=0.8)
            for xi, c in zip(x, found):
                if c:
                    ax.scatter([xi] * len(c["values"]), [100 * v for v in c["values"]], s=8, color="black",
                               zorder=3)
        ax.set_xticks(np.arange(len(sets)), [s.removeprefix("ood_") for s in sets], rotation=20)
        ax.set_ylabel(f"{LABELS[metric]} (%)" + (" lower is better" if metric == "fpr95" else " higher is better"))
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    n = max((c["n"] for c in cells), default=0)
    fig.suptitle(f"{score}: mean ± std over {n} seeds (dots: each seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(payload: dict, headline_scores) -> str:
    s = payload
    methods = ", ".join(display(m) for m in s["methods"])
    parts = [f"# {methods}: {len(s['seeds'])} seeds ({', '.join(map(str, s['seeds']))}), {len(s['runs'])} runs",
             "", "Mean ± sample std (ddof 1) over seeds, in %. Paired tests: EDGE − baseline per seed, "
             "Student's paired t-test (two-sided), Holm-adjusted within each score; verdict "
             "better/worse at Holm p < 0.05, else noise (see edge_ray/compare/stats.py for why).", ""]
    for score in headline_scores:
        for metric, part in (("fpr95", "all"), ("auroc", "all"), ("fpr95", "tail")):
            where = "all ID test images" if part == "all" else "tail-only ID test images"
            parts += [f"## {score}: {LABELS[metric]} (%), {where}", "",
                      headline(s["summary"], s["map"], score, metric, part), ""]
        if s["tests"]:
            parts += [f"## EDGE against each baseline, {score} (Δ in points: EDGE − baseline)", "",
                      tests_table(s["tests"], score), ""]
    if s.get("map_tests"):
        parts += ["## EDGE against each baseline, ID test mAP (Δ in points; Holm over the baselines)", "",
                  map_tests_table(s["map_tests"]), ""]
    parts += ["## Every score, all ID test images", "", full_table(s["summary"]), "",
              "## Every score, tail-only ID test images", "", full_table(s["summary"], "tail"), ""]
    return "\n".join(parts)


def write_study(out, payload: dict, headline_scores=("jointenergy",)) -> dict:
    """Write results.json, table.md, table.csv and one PNG per headline score into ``out`` (a
    local path or a URI); return their locations."""
    location = storage.normalize(out)
    with storage.local_folder(location) as folder:
        paths = {"json": folder / "results.json", "markdown": folder / "table.md", "csv": folder / "table.csv"}
        paths["json"].write_text(json.dumps(payload, indent=1))
        paths["markdown"].write_text(markdown(payload, headline_scores))
        with open(paths["csv"], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_HEADER)
            w.writerows(csv_rows(payload["summary"], payload["map"]))
        scored = {c["score"] for c in payload["summary"]}
        paths["plots"] = [plot(payload["summary"], s, folder / f"compare_{s}.png")
                          for s in headline_scores if s in scored]
    return {k: [storage.join(location, p.name) for p in v] if isinstance(v, list) else storage.join(location, v.name)
            for k, v in paths.items()}
