"""Results on disk: results.json, the paper's Table 3 as Markdown and CSV, and figures.

``results`` everywhere is ``{training_name: evaluate(...) output}``: the rows of the table
are training x inference, as in the paper (BCE with ten post-hoc scores, then OE,
EnergyOE and EDGE with MaxEnergy / JointEnergy).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

import matplotlib

from edge_ray import storage

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLUMNS = (("fpr95", "FPR95↓"), ("auroc", "AUROC↑"), ("aupr_in", "AUPR↑"))


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def table_rows(results: dict, *, part: str = "all") -> tuple[list[str], list[list]]:
    """Header and rows; ``part='tail'`` uses tail-only ID images (paper's imbalance view)."""
    first = next(iter(results.values()))
    sets = list(first["ood_sets"])
    header = ["training", "inference"] + [f"{s} {label}" for s in sets for _, label in COLUMNS]
    header += [f"mean {label}" for _, label in COLUMNS] + ["mAP"]
    rows = []
    for training, res in results.items():
        for score, per_set in res["scores"].items():
            cells = [training, score]
            vals = {k: [] for k, _ in COLUMNS}
            for s in sets:
                m = per_set[s] if part == "all" else per_set[s]["tail"]
                for key, _ in COLUMNS:
                    v = None if m is None else 100 * m[key]
                    cells.append(v)
                    if v is not None:
                        vals[key].append(v)
            cells += [float(np.mean(vals[k])) if vals[k] else None for k, _ in COLUMNS]
            cells.append(100 * res["map"])
            rows.append(cells)
    return header, rows


def _fmt(v) -> str:
    return "–" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))


def markdown_table(results: dict, *, part: str = "all") -> str:
    header, rows = table_rows(results, part=part)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def compact_table(results: dict, scores=("jointenergy",), *, part: str = "all") -> str:
    """FPR95 / AUROC (%) per OOD set for the given scores, one row per training: the
    headline a terminal can show (the full table is in table.md)."""
    first = next(iter(results.values()))
    sets = list(first["ood_sets"])
    lines = ["| training | score | " + " | ".join(s.removeprefix("ood_") for s in sets) + " | mAP |",
             "|---|---|" + "---|" * (len(sets) + 1)]
    for training, res in results.items():
        for score in scores:
            if score not in res["scores"]:
                continue
            cells = []
            for s in sets:
                m = res["scores"][score][s] if part == "all" else res["scores"][score][s]["tail"]
                cells.append("–" if m is None else f"{100 * m['fpr95']:.1f} / {100 * m['auroc']:.1f}")
            lines.append(f"| {training} | {score} | " + " | ".join(cells) + f" | {100 * res['map']:.1f} |")
    return "\n".join(lines)


def _plot_histograms(results: dict, out: Path) -> list[Path]:
    paths = []
    for training, res in results.items():
        arr = res["_arrays"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ood = np.concatenate(list(arr["ood"].values()))
        parts = [("ID head", arr["id_head"]), ("ID tail-only", arr["id_tail"]), ("OOD (all sets)", ood)]
        hi = max(float(np.percentile(np.concatenate([v for _, v in parts if len(v)]), 99.5)), 1e-3)
        bins = np.linspace(0, hi, 50)
        for label, v in parts:
            if len(v):
                ax.hist(np.clip(v, 0, hi), bins=bins, alpha=0.5, density=True, label=f"{label} (n={len(v)})")
        ax.set_xlabel("JointEnergy (higher = more ID)")
        ax.set_ylabel("density")
        ax.set_title(f"{training}: JointEnergy of ID head / tail and OOD")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"energy_hist_{training}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _plot_curves(results: dict, out: Path, score: str = "jointenergy") -> Path | None:
    """FPR95 / AUROC against the number of removed head classes (Fig. 1c/d, Fig. 5),
    averaged over OOD sets, one line per training."""
    if not any(score in r["scores"] for r in results.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for training, res in results.items():
        if score not in res["scores"]:
            continue
        curves = [v["curve"] for v in res["scores"][score].values()]
        n = min(len(c) for c in curves)
        x = [curves[0][j]["removed"] for j in range(n)]
        for ax, key in zip(axes, ("fpr95", "auroc")):
            ax.plot(x, [100 * np.mean([c[j][key] for c in curves]) for j in range(n)], marker="o", label=training)
    for ax, key in zip(axes, ("FPR95 (%)", "AUROC (%)")):
        ax.set_xlabel("head classes removed from the ID test set")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{score}: OOD detection as tail classes dominate (mean over OOD sets)")
    fig.tight_layout()
    path = out / f"head_tail_{score}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(results: dict, out_dir: str | Path, *, extra: dict | None = None) -> dict:
    """Write every output to ``out_dir`` (a local path or a URI); return the locations
    ``{"json", "markdown", "csv", "plots"}``."""
    location = storage.normalize(out_dir)
    with storage.local_folder(location) as out:
        paths = _write_local(results, out, extra)
    return {k: [storage.join(location, p.name) for p in v] if isinstance(v, list) else storage.join(location, v.name)
            for k, v in paths.items()}


def _write_local(results: dict, out: Path, extra: dict | None) -> dict:
    payload = {"results": {k: _public(v) for k, v in results.items()}, **(extra or {})}
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=_json_default))
    md = ["# OOD detection (ID positive; FPR95, AUROC, AUPR-In in %)", "", markdown_table(results), "",
          "## Tail-only ID test images (every label a minority class)", "",
          markdown_table(results, part="tail"), ""]
    (out / "table.md").write_text("\n".join(md))
    header, rows = table_rows(results)
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([[("" if c is None else c) for c in r] for r in rows])
    for training, res in results.items():
        scorers = res.get("_scorers", {})
        state = {f"{n}/{k}": v for n, s in scorers.items() for k, v in s.state_dict().items()}
        if state:
            np.savez(out / f"scorers_{training}.npz", **state)
    plots = _plot_histograms(results, out)
    curve = _plot_curves(results, out)
    plots += [curve] if curve else []
    return {"json": out / "results.json", "markdown": out / "table.md", "csv": out / "table.csv", "plots": plots}


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
