"""The embedded benchmark: a long-tailed multi-label ID task, OE candidates and
OOD test sets, built offline from data shipped in scikit-learn and Pillow.

See shards/README.md for what each set is for. Each set gets its own random stream
([seed, set number]), so a set's content depends only on the seed and its own size.
"""
from __future__ import annotations

import numpy as np

from edge_ray import storage

from . import demo_render as R
from .plan import Item
from .writer import FORMAT, convert

CLASSES = [f"digit{d}" for d in range(7)]
ZIPF_S = 1.6
HEAD, TAIL = [0, 1, 2], [4, 5, 6]
SPLIT_FRACTIONS = {"id_train": 0.6, "id_val": 0.15, "id_test": 0.25}
DEFAULT_SIZES = {"n_train": 4000, "n_val": 1000, "n_test": 2000, "n_oe": 2000, "n_ood": 1000}
QUICK_SIZES = {k: v // 4 for k, v in DEFAULT_SIZES.items()}


def class_weights(s: float = ZIPF_S, n: int = len(CLASSES)) -> np.ndarray:
    """Zipf-like sampling weights p_c ~ 1/(c+1)^s: class 0 is the head."""
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def digit_splits(seed: int = 0) -> dict[str, np.ndarray]:
    """Disjoint sklearn digit indices per ID split (seeded shuffle of all 1797),
    so test canvases never reuse a training digit image."""
    perm = np.random.default_rng([seed, 999]).permutation(len(R.digits()[1]))
    cuts = np.cumsum([round(f * len(perm)) for f in SPLIT_FRACTIONS.values()])[:-1]
    return {name: np.sort(part) for name, part in zip(SPLIT_FRACTIONS, np.split(perm, cuts))}


def _pool(indices: np.ndarray, classes) -> dict[int, np.ndarray]:
    target = R.digits()[1]
    return {c: indices[target[indices] == c] for c in classes}


def _id_sample(rng, pool):
    """1-3 distinct ID classes drawn by Zipf weight; labels = classes present."""
    classes = sorted(int(c) for c in rng.choice(len(CLASSES), size=int(rng.integers(1, 4)),
                                                replace=False, p=class_weights()))
    img, meta = R.digit_canvas(rng, pool, classes)
    return img, meta, tuple(classes)


def _heldout_digits(rng, pool, digits):
    picks = [int(d) for d in rng.choice(digits, size=int(rng.integers(1, 4)))]
    return R.digit_canvas(rng, pool, picks)


# name -> (role, set number for the random stream, description). Set numbers are
# fixed so adding a set never changes the content of another.
SETS = {
    "id_train": ("id", 1, "1-3 digits 0-6, Zipf class frequencies, train digit pool"),
    "id_val": ("id", 2, "as id_train, val digit pool"),
    "id_test": ("id", 3, "as id_train, test digit pool"),
    "oe_digit7": ("oe", 10, "1-3 copies of digit 7 (near)"),
    "oe_letters": ("oe", 11, "1-3 letters A-M, Pillow default font"),
    "oe_china": ("oe", 12, "grayscale crops of china.jpg"),
    "oe_stripes": ("oe", 13, "stripes and checkerboards"),
    # Not an OE candidate: new images of oe_letters' kind for a search's objective (data.oe_val),
    # so tuning never sees the training OE images nor a test OOD set.
    "oe_letters_val": ("oe", 14, "1-3 letters A-M, new images: held-out OE for tuning"),
    "ood_digits89": ("ood", 20, "1-3 digits 8/9 (near-OOD)"),
    "ood_letters": ("ood", 21, "1-3 letters N-Z"),
    "ood_flower": ("ood", 22, "grayscale crops of flower.jpg"),
    "ood_flower_edges": ("ood", 23, "edge maps of flower.jpg crops"),
    "ood_scribble": ("ood", 24, "random smooth strokes"),
    "ood_blobs": ("ood", 25, "Gaussian blobs plus noise"),
}


HELD_OUT = ("oe_letters_val",)  # held-out OE for tuning: written, never ranked as a candidate


def missing_sets(bench: dict) -> list[str]:
    """The sets this version of the benchmark has that an older build in a folder lacks."""
    return [name for name in SETS if name not in bench.get("sets", {})]


def _generator(name: str, seed: int):
    """fn(rng) -> (image, meta, labels) for one set; OE/OOD carry no labels."""
    if name.startswith("id_"):
        pool = _pool(digit_splits(seed)[name], range(len(CLASSES)))
        return lambda rng: _id_sample(rng, pool)
    held = _pool(np.arange(len(R.digits()[1])), [7, 8, 9])
    make = {
        "oe_digit7": lambda rng: _heldout_digits(rng, held, [7]),
        "oe_letters": lambda rng: R.letters_canvas(rng, R.LETTERS_OE),
        "oe_letters_val": lambda rng: R.letters_canvas(rng, R.LETTERS_OE),
        "oe_china": lambda rng: R.photo_crop(rng, "china.jpg"),
        "oe_stripes": R.stripes,
        "ood_digits89": lambda rng: _heldout_digits(rng, held, [8, 9]),
        "ood_letters": lambda rng: R.letters_canvas(rng, R.LETTERS_OOD),
        "ood_flower": lambda rng: R.photo_crop(rng, "flower.jpg"),
        "ood_flower_edges": lambda rng: R.photo_crop(rng, "flower.jpg", edges=True),
        "ood_scribble": R.scribble,
        "ood_blobs": R.blobs,
    }[name]
    return lambda rng: (*make(rng), ())


def set_items(name: str, n: int, seed: int = 0) -> list[Item]:
    """The `n` items of one demo set (PNG bytes in memory, key = zero-padded index)."""
    fn = _generator(name, seed)
    rng = np.random.default_rng([seed, SETS[name][1]])
    items = []
    for i in range(n):
        img, meta, labels = fn(rng)
        items.append(Item(key=f"{i:06d}", source=f"demo:{name}/{i}", labels=labels,
                          data=R.png_bytes(img), meta=meta))
    return items


def _frequencies(index: dict) -> list[float]:
    return [round(c / index["num_samples"], 4) for c in index["label_counts"]]


def build_demo(out_dir="data/demo", *, seed: int = 0, quick: bool = False, n_train=None,
               n_val=None, n_test=None, n_oe=None, n_ood=None, workers: int = 0,
               shard_size: int = 250, progress: bool = False) -> dict:
    """Write every demo set under `out_dir` (a local path or a URI) plus benchmark.json;
    return the latter.

    Existing demo sets in `out_dir` are replaced. workers=0 (default) writes
    in-process: the build is a few seconds, less than Ray's start-up."""
    given = {"n_train": n_train, "n_val": n_val, "n_test": n_test, "n_oe": n_oe, "n_ood": n_ood}
    sizes = {k: v if v is not None else (QUICK_SIZES if quick else DEFAULT_SIZES)[k]
             for k, v in given.items()}
    size_of = {"id_train": sizes["n_train"], "id_val": sizes["n_val"], "id_test": sizes["n_test"]}
    out = storage.normalize(out_dir)
    sets, indexes = {}, {}
    for name, (role, _, description) in SETS.items():
        n = size_of.get(name, sizes["n_oe"] if role == "oe" else sizes["n_ood"])
        n = n // 2 if name in HELD_OUT else n
        indexes[name] = convert(set_items(name, n, seed), storage.join(out, name), name=name, role=role,
                                classes=CLASSES if role == "id" else (), shard_size=shard_size,
                                workers=workers, seed=seed, overwrite=True, progress=progress,
                                source={"kind": "demo", "description": description},
                                where=f"demo set {name}")
        sets[name] = {"role": role, "num_samples": indexes[name]["num_samples"],
                      "description": description}
    bench = {
        "format": FORMAT, "seed": seed, "quick": quick, "image_size": R.SIZE, "channels": 1,
        "id_train": "id_train", "id_val": "id_val", "id_test": "id_test",
        "oe": [k for k, v in sets.items() if v["role"] == "oe" and k not in HELD_OUT],
        "oe_val": list(HELD_OUT),
        "ood": [k for k, v in sets.items() if v["role"] == "ood"],
        "classes": CLASSES, "head_classes": HEAD, "tail_classes": TAIL, "zipf_s": ZIPF_S,
        "class_frequencies": {"weights": [round(float(w), 4) for w in class_weights()],
                              **{k: _frequencies(indexes[k]) for k in size_of}},
        "sets": sets,
        "digit_sources": {k: v.tolist() for k, v in digit_splits(seed).items()},
    }
    storage.write_json(storage.join(out, "benchmark.json"), bench, indent=1)
    return bench
