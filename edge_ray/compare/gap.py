"""Why EDGE's gap term is active or idle, epoch by epoch, from `compare` studies' EDGE runs.

Every training epoch logs three numbers of EDGE's hinge (``losses.gap_diagnostics``): the
fraction of hinge terms above zero (``gap_active``), the mean bottom-k ID JointEnergy of a
batch (``energy_id_bottomk``) and the mean OE JointEnergy (``energy_oe``). The hinge of an OE
image is ``relu(E_oe - mean(bottom-k E_id) + m)``, so it is active exactly while the OE energy
lies above ``bottom-k ID energy - m``. This module reads those histories from one or more
`compare` output folders (each run's summary.json beside its results.json) or from training
run folders, averages them over seeds per epoch, and writes a figure and a table::

    python -m edge_ray.compare.gap untuned=results/runs/demo-full-seed0-edge,results/untuned/untuned-edge-seed1 \\
        tuned=results/compare-tuned --out results/gap_tuned_vs_untuned

writes ``OUT.png`` (gap fraction and energies per epoch, mean ± std over seeds) and
``OUT.json``, and prints the table as markdown. No Ray: it reads files (local paths or URIs).
"""
from __future__ import annotations

import argparse
import io
import sys

import numpy as np

from edge_ray import storage

QUANTITIES = ("gap_active", "energy_id_bottomk", "energy_oe")
LOSS_KEYS = ("alpha", "beta", "k", "m", "m_mode", "tau", "gap")
DEFAULTS = {"m_mode": "absolute"}  # runs trained before the setting existed used the paper's margin


def _loss_values(loss: dict) -> dict:
    merged = {**DEFAULTS, **loss}
    return {k: merged[k] for k in LOSS_KEYS}


def run_history(run_dir: str) -> dict:
    """One training run's folder (`launch.py train`, the demo's): seed, loss values, history."""
    summary = storage.read_json(storage.join(run_dir, "summary.json"))
    if not summary.get("checkpoint"):
        raise ValueError(f"{run_dir}: the run has no checkpoint (it did not finish an epoch)")
    config = storage.read_json(storage.join(summary["checkpoint"], "config.json"))
    if config["loss"]["method"] != "edge":
        raise ValueError(f"{run_dir}: a {config['loss']['method']} run; the gap diagnostics are EDGE's")
    return {"seed": config["train"]["seed"], "loss": _loss_values(config["loss"]),
            "history": _checked(summary["history"], storage.join(run_dir, "summary.json"))}


def _checked(history: list, where: str) -> list:
    missing = [q for q in QUANTITIES if any(q not in h for h in history)]
    if missing:
        raise ValueError(f"{where}: no {', '.join(missing)} in its epochs (trained before these were "
                         "logged); rerun the study to have them")
    return history


def histories(location: str) -> list[dict]:
    """EDGE runs from a `compare` output folder, a training run folder, or several of either
    joined by commas."""
    runs = []
    for where in filter(None, (w.strip() for w in location.split(","))):
        if storage.is_file(storage.join(where, "summary.json")):
            runs.append(run_history(where))
        elif storage.is_file(storage.join(where, "results.json")):
            runs += edge_histories(where)
        else:
            raise FileNotFoundError(f"{where}: neither a `compare` output folder (results.json) nor a "
                                    "training run folder (summary.json)")
    return runs


def edge_histories(folder: str) -> list[dict]:
    """Each EDGE run of a `compare` output folder: its seed, loss values and per-epoch history."""
    study = storage.read_json(storage.join(folder, "results.json"))
    runs = []
    for run in study["runs"]:
        if run["method"] != "edge":
            continue
        record = storage.read_json(run["results"])
        where = storage.join(storage.parent(run["results"]), "summary.json")
        if not storage.is_file(where):
            raise FileNotFoundError(f"{where}: the run's training summary is missing; rerun `launch.py "
                                    f"compare` with the same --out ({folder}) to train it again")
        history = _checked(storage.read_json(where)["history"], where)
        runs.append({"seed": run["seed"], "loss": _loss_values(record["config"]["loss"]),
                     "history": history})
    if not runs:
        raise ValueError(f"{folder}: the study has no EDGE runs (compare --methods ... edge)")
    return runs


def summarize(runs: list[dict]) -> dict:
    """Per epoch, mean and std over seeds of each quantity, plus bottom-k energy - m (the OE
    energy above which a hinge is active). All runs must share epochs and loss values."""
    losses = {tuple(sorted(r["loss"].items())) for r in runs}
    if len(losses) != 1:
        raise ValueError(f"the runs have different loss values: {sorted(losses)}; summarize one study at a time")
    loss = runs[0]["loss"]
    epochs = [h["epoch"] for h in runs[0]["history"]]
    if any([h["epoch"] for h in r["history"]] != epochs for r in runs):
        raise ValueError("the runs trained different epochs; summarize runs of one study")
    out = {"loss": loss, "seeds": sorted(r["seed"] for r in runs), "epochs": epochs}
    for q in QUANTITIES:
        v = np.array([[h[q] for h in r["history"]] for r in runs], dtype=np.float64)  # seeds x epochs
        out[q] = {"mean": v.mean(0).tolist(), "std": v.std(0, ddof=1).tolist() if len(runs) > 1 else [0.0] * len(epochs)}
    # the hinge is active when the OE energy exceeds bottom-k minus the margin (m, or m x bottom-k)
    scale = (lambda low: low * (1 - loss["m"])) if loss["m_mode"] == "relative" else (lambda low: low - loss["m"])
    thr = np.array([[scale(h["energy_id_bottomk"]) for h in r["history"]] for r in runs])
    out["active_above"] = {"mean": thr.mean(0).tolist()}
    # epochs the gap term was on (beta applied after tau epochs): where gap_active matters
    out["gap_on"] = [bool(h.get("beta_active", h["epoch"] > loss["tau"])) for h in runs[0]["history"]]
    return out


def table(summaries: dict) -> str:
    """Markdown: one row per study x epoch (gap fraction in %, energies, the threshold)."""
    lines = ["| study | epoch | gap term on | active hinges % | bottom-k ID energy | mean OE energy | "
             "bottom-k − m |", "|---|---|---|---|---|---|---|"]
    for label, s in summaries.items():
        one = len(s["seeds"]) == 1  # no spread to show

        def cell(q, i, scale=1.0, digits=2):
            m, sd = s[q]["mean"][i] * scale, s[q]["std"][i] * scale
            return f"{m:.{digits}f}" if one else f"{m:.{digits}f} ± {sd:.{digits}f}"

        for i, epoch in enumerate(s["epochs"]):
            lines.append(f"| {label} ({len(s['seeds'])} seeds) | {epoch} | {'yes' if s['gap_on'][i] else 'no'} | "
                         f"{cell('gap_active', i, 100, 1)} | {cell('energy_id_bottomk', i)} | "
                         f"{cell('energy_oe', i, digits=3)} | {s['active_above']['mean'][i]:.2f} |")
    return "\n".join(lines)


def plot(summaries: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for (label, s), color in zip(summaries.items(), ("tab:gray", "tab:red", "tab:blue", "tab:green")):
        x = np.array(s["epochs"])
        loss = s["loss"]
        name = f"{label} (m {loss['m']:g}, beta {loss['beta']:g}, k {loss['k']}, tau {loss['tau']})"
        g = s["gap_active"]
        ax1.errorbar(x, 100 * np.array(g["mean"]), yerr=100 * np.array(g["std"]), color=color, marker="o",
                     capsize=3, label=name)
        for q, style, what in (("energy_id_bottomk", "-", "bottom-k ID"), ("energy_oe", "--", "OE")):
            m, sd = np.array(s[q]["mean"]), np.array(s[q]["std"])
            ax2.plot(x, m, style, color=color, marker="o", label=f"{label}: {what}")
            ax2.fill_between(x, m - sd, m + sd, color=color, alpha=0.15)
        ax2.plot(x, s["active_above"]["mean"], ":", color=color, label=f"{label}: bottom-k − m (hinge on above)")
    ax1.set(xlabel="epoch", ylabel="active hinge terms (%)", title="EDGE's gap term: share of active hinges")
    ax1.set_ylim(bottom=0)
    ax2.set(xlabel="epoch", ylabel="JointEnergy", title="energies per epoch (mean ± std over seeds)")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    storage.write_bytes(path, buf.getvalue())  # a local path or a URI
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_ray.compare.gap", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python -m edge_ray.compare.gap untuned=results/untuned/untuned-edge-seed1,"
                                       "results/untuned/untuned-edge-seed2 tuned=results/compare-tuned "
                                       "--out results/gap_tuned_vs_untuned")
    p.add_argument("studies", nargs="+", metavar="LABEL=DIR[,DIR...]",
                   help="a label and a `compare` output folder or training run folders (comma-separated)")
    p.add_argument("--out", required=True, help="output path without extension (OUT.png, OUT.json)")
    args = p.parse_args(argv)
    summaries = {}
    try:
        for word in args.studies:
            label, sep, folder = word.partition("=")
            if not sep or not label or not folder:
                raise ValueError(f"{word!r}: write LABEL=COMPARE_OUT, e.g. tuned=results/compare-tuned")
            summaries[label] = summarize(histories(folder))
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    storage.write_json(args.out + ".json", summaries, indent=1)
    plot(summaries, args.out + ".png")
    print(table(summaries))
    print(f"\nwrote {args.out}.png and {args.out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
