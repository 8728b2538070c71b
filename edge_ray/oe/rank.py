"""Rank OE candidate sets by the dilation distance (paper Eq. 9; Alg. 1, line 1): the
Ray-free part, in one process (`rank_serial`). `edge_ray.oe.ray_rank` runs the same
measurement as a Ray task pool and holds the command line.

Each set's penultimate features are extracted once and the candidate's `dilation_distance`
to the ID set computed per batch (smaller = more informative OE set). Features come from
the model in eval mode, with the deterministic eval transform and no grad (the released
code used train mode and augmentation, so its distances changed from run to run).

Which images: each set contributes the first `batches * batch_size` positions of
`numpy.random.default_rng(seed).permutation(num_samples)` (all of them if the set is smaller,
cut to full batches), in that permuted order, so a batch mixes shards and classes and the
same seed always gives the same images, features and ranking.

A candidate that cannot be measured (missing or bad index, role other than `oe`, fewer
images than one batch, a task error) is reported with its reason and gets no rank; the
others go on. Only when none can be ranked is it an error.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from edge_ray.data import IMAGENET_MEAN, IMAGENET_STD, ShardIndex, eval_transform, load_index
from edge_ray.data.records import read_positions
from edge_ray.data.streams import decode_batch
from edge_ray.data.transforms import normalize_batch
from edge_ray.evaluate.forward import collect_outputs
from edge_ray.models.networks import MultiLabelNet, build_model
from edge_ray.oe.dilation import SPECTRUM_METHODS, batch_distances


@dataclass(frozen=True)
class RankOptions:
    k: int = 16                   # top-k singular values per batch
    batch_size: int = 64          # rows per batch, for ID and OE alike (paper: equal batch sizes)
    batches: int = 10             # at most this many batches per set
    seed: int = 0                 # picks the images (see module docstring)
    image_size: int = 256
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    method: str = "gram"          # spectrum: gram eigenvalues or svdvals (oe_select.py)

    def check(self) -> "RankOptions":
        for name in ("k", "batch_size", "batches", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.k > self.batch_size:
            raise ValueError(f"--k {self.k} exceeds --batch-size {self.batch_size}: a batch has at "
                             "most batch_size non-zero singular values; lower --k")
        if self.method not in SPECTRUM_METHODS:
            raise ValueError(f"method must be one of {SPECTRUM_METHODS}, got {self.method!r}")
        return self


# ---- pure part: no Ray below this line until rank_parallel -------------------------------

def sample_positions(num_samples: int, *, batch_size: int, batches: int, seed: int) -> np.ndarray:
    """Positions of the images a set contributes: a seeded permutation, cut to full batches."""
    n = min(batches * batch_size, num_samples) // batch_size * batch_size
    return np.random.default_rng(seed).permutation(num_samples)[:n]


def set_features(model: MultiLabelNet, index: ShardIndex, positions: np.ndarray, opts: RankOptions,
                 *, device: str = "cpu") -> np.ndarray:
    """Penultimate features float32 [len(positions), D], row i for `positions[i]`.

    Shards are read in position order (one pass, seeking past unwanted samples) and the
    rows put back in the permuted order afterwards.
    """
    order = np.argsort(positions, kind="stable")
    records = read_positions([u for u, _ in index.shards], index.shard_sizes, positions[order])
    transform = eval_transform(opts.image_size, mean=opts.mean, std=opts.std)

    def batches():
        # The evaluation loader's preprocessing (uint8 resize, one normalising pass per batch):
        # the same pixels as `evaluate` sees, at a fraction of the per-image PIL/torchvision cost.
        while chunk := list(itertools.islice(records, opts.batch_size)):
            x = normalize_batch(decode_batch(chunk, transform, None), transform.mean, transform.std)
            yield x, np.zeros((len(chunk), 0), np.float32), [r.key for r in chunk]

    found = collect_outputs(model.to(device), batches(), device=torch.device(device))["features"]
    features = np.empty_like(found)
    features[order] = found
    return features


def measure(id_features, oe_features, opts: RankOptions) -> dict:
    """Eq. 9 for one candidate: the mean of the per-batch distances, their spread and counts."""
    d = batch_distances(id_features, oe_features, k=opts.k, batch_size=opts.batch_size,
                        method=opts.method)
    return {"distance": float(d.mean()), "distance_std": float(d.std()), "batches": len(d),
            "images": len(d) * opts.batch_size}


def result_row(candidate: str, *, status: str = "ranked", reason: str = "", **fields) -> dict:
    """One line of the ranking; `status` is ranked, skipped (refused up front) or failed."""
    row = {"rank": None, "candidate": candidate, "name": "", "role": "", "num_samples": None,
           "images": 0, "batches": 0, "distance": None, "distance_std": None}
    return {**row, **fields, "status": status, "reason": reason}


def rank_table(rows: list[dict]) -> list[dict]:
    """Ranked rows by increasing distance (ties by candidate) with ranks 1.., then the rest."""
    ranked = sorted((r for r in rows if r["status"] == "ranked"),
                    key=lambda r: (r["distance"], r["candidate"]))
    rest = [dict(r, rank=None) for r in rows if r["status"] != "ranked"]
    return [dict(r, rank=i) for i, r in enumerate(ranked, start=1)] + rest


def rank_candidates(id_features, candidate_features: dict, *, k: int, batch_size: int,
                    method: str = "gram") -> list[dict]:
    """Serial reference: rank already extracted candidate features against the ID features."""
    opts = RankOptions(k=k, batch_size=batch_size, method=method)
    return rank_table([result_row(name, **measure(id_features, f, opts))
                       for name, f in candidate_features.items()])


def open_id_set(path: str, opts: RankOptions) -> ShardIndex:
    index = load_index(path, role="id")
    if index.num_samples < opts.batch_size:
        raise ValueError(f"ID set {index.name!r} holds {index.num_samples} images, fewer than "
                         f"--batch-size {opts.batch_size}; lower --batch-size")
    return index


def inspect_candidate(path: str, opts: RankOptions) -> tuple[ShardIndex | None, dict]:
    """(index, row) for a candidate that can be measured, else (None, a skipped row with the reason)."""
    try:
        index = load_index(path)
    except (OSError, ValueError) as err:
        return None, result_row(path, status="skipped", reason=str(err))
    row = dict(name=index.name, role=index.role, num_samples=index.num_samples)
    if index.role != "oe":
        why = ("it is an ID set" if index.role == "id" else
               "it is a test OOD set (training on it leaks the test); convert it with role oe")
        return None, result_row(path, status="skipped", reason=f"role {index.role!r}: {why}", **row)
    if index.num_samples < opts.batch_size:
        return None, result_row(path, status="skipped", reason=f"holds {index.num_samples} images, "
                                f"fewer than --batch-size {opts.batch_size}", **row)
    return index, result_row(path, **row)


def rank_serial(model: MultiLabelNet, id_dir: str, candidates: list[str], opts: RankOptions,
                *, device: str = "cpu") -> list[dict]:
    """The whole ranking in this process: the reference the parallel run must reproduce."""
    opts = opts.check()
    id_index = open_id_set(id_dir, opts)
    id_f = set_features(model, id_index, _positions(id_index, opts), opts, device=device)
    rows = []
    for path in candidates:
        index, row = inspect_candidate(path, opts)
        if index is not None:
            f = set_features(model, index, _positions(index, opts), opts, device=device)
            row.update(measure(id_f, f, opts))
        rows.append(row)
    return _require_ranked(rank_table(rows))


def _positions(index: ShardIndex, opts: RankOptions) -> np.ndarray:
    return sample_positions(index.num_samples, batch_size=opts.batch_size, batches=opts.batches,
                            seed=opts.seed)


def _require_ranked(rows: list[dict]) -> list[dict]:
    if not any(r["status"] == "ranked" for r in rows):
        reasons = "; ".join(f"{r['candidate']}: {r['reason']}" for r in rows)
        raise ValueError(f"no OE candidate could be ranked ({reasons})")
    return rows


def model_blob(model: MultiLabelNet, name: str) -> dict:
    """What a task needs to rebuild the model (no download on the workers); a timm model
    with a fixed input size is rebuilt at the image size it was built for."""
    arch = getattr(model, "arch", {})
    return {"name": name, "num_classes": model.num_classes, "width": arch.get("width", model.feature_dim // 4),
            "image_size": arch.get("image_size"),
            "state": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def model_from_blob(blob: dict) -> MultiLabelNet:
    model = build_model(blob["name"], blob["num_classes"], width=blob["width"], image_size=blob.get("image_size"))
    model.load_state_dict(blob["state"])
    return model


def format_table(rows: list[dict]) -> str:
    lines = [f"{'rank':>4}  {'candidate':<32} {'images':>6}  {'distance':>18}  status"]
    for r in rows:
        dist = f"{r['distance']:.4f} ± {r['distance_std']:.4f}" if r["distance"] is not None else "-"
        status = r["status"] + (f": {r['reason']}" if r["reason"] else "")
        lines.append(f"{r['rank'] or '-':>4}  {r['candidate']:<32} {r['images'] or '-':>6}  {dist:>18}  {status}")
    return "\n".join(lines)
