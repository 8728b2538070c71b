"""NUS-WIDE (official release layout) -> shards: 81 concepts from per-concept 0/1 files.

Expected under --root (see shards/README.md):
  Concepts81.txt                                  81 concept names, one per line
  ImageList/TrainImagelist.txt, TestImagelist.txt image paths like `actor\\0001_2124494179.jpg`
  TrainTestLabels/Labels_<concept>_Train.txt, _Test.txt  one 0/1 per line, aligned to the list
and the images under --images (default <root>/Flickr).
"""
from __future__ import annotations

from pathlib import Path

from .errors import ConversionError, MissingInputError
from .plan import Item, sanitize_key
from .writer import convert

_SPLITS = {"train": "Train", "test": "Test"}


def _lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise MissingInputError(f"{what} {path} not found; --root must hold Concepts81.txt, "
                                "ImageList/ and TrainTestLabels/ of the NUS-WIDE release")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_concept_column(path: Path, n_images: int) -> list[bool]:
    """One concept's 0/1 column; its length must match the image list exactly,
    otherwise labels would shift silently onto the wrong images."""
    values = _lines(path, "label file")
    if len(values) != n_images:
        raise ConversionError(f"{path} has {len(values)} lines but the image list has {n_images}; "
                              "the label files and image list must come from the same release")
    bad = next((i for i, v in enumerate(values) if v not in ("0", "1")), None)
    if bad is not None:
        raise ConversionError(f"{path} line {bad + 1}: expected 0 or 1, got {values[bad]!r}")
    return [v == "1" for v in values]


def nuswide_items(root, split: str, images=None, drop_empty: bool = False):
    """(classes, items, skipped) for one split."""
    if split not in _SPLITS:
        raise ConversionError(f"--split must be train or test, got {split!r}")
    root = Path(root)
    images = Path(images) if images else root / "Flickr"
    tag = _SPLITS[split]
    classes = _lines(root / "Concepts81.txt", "concept list")
    rel_paths = _lines(root / "ImageList" / f"{tag}Imagelist.txt", "image list")
    columns = [read_concept_column(root / "TrainTestLabels" / f"Labels_{c}_{tag}.txt",
                                   len(rel_paths)) for c in classes]
    items, skipped = [], []
    for row, rel in enumerate(rel_paths):
        parts = rel.replace("\\", "/").split("/")
        src = str(images.joinpath(*parts))
        labels = tuple(c for c, col in enumerate(columns) if col[row])
        if drop_empty and not labels:
            skipped.append({"path": src, "reason": "no concept (--drop-empty)"})
            continue
        key = sanitize_key("/".join(parts).rsplit(".", 1)[0])
        items.append(Item(key=key, source=src, labels=labels))
    return classes, items, skipped


def convert_nuswide(root, split: str, out_dir, *, images=None, drop_empty: bool = False,
                    name: str | None = None, **options) -> dict:
    """Convert one NUS-WIDE split; `options` go to `shards.writer.convert`."""
    classes, items, skipped = nuswide_items(root, split, images, drop_empty)
    source = {"kind": "nuswide", "root": str(root), "images": str(images or Path(root) / "Flickr"),
              "split": split, "drop_empty": drop_empty}
    return convert(items, out_dir, name=name or f"nuswide-{split}", role="id", classes=classes,
                   source=source, skipped=skipped,
                   where=str(Path(root) / "ImageList" / f"{_SPLITS[split]}Imagelist.txt"), **options)
