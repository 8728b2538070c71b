"""An image folder (searched recursively) -> an OE or OOD shard set, no labels."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ConversionError, MissingInputError
from .plan import Item, sanitize_key
from .writer import convert

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def folder_items(root) -> list[Item]:
    """Every image file under `root`, keyed by its relative path (sorted later)."""
    root = Path(root)
    if not root.is_dir():
        raise MissingInputError(f"image folder {root} not found")
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            if fn.lower().endswith(IMAGE_SUFFIXES):
                rel = Path(dirpath, fn).relative_to(root).as_posix()
                items.append(Item(key=sanitize_key(rel.rsplit(".", 1)[0]),
                                  source=str(Path(dirpath, fn))))
    return items


def convert_folder(root, out_dir, *, role: str, name: str, **options) -> dict:
    """Convert a folder of unlabelled images as an OE pool or an OOD test set."""
    if role not in ("oe", "ood"):
        raise ConversionError(f"folder sets are unlabelled: --role must be oe or ood, got {role!r}")
    source = {"kind": "folder", "root": str(root)}
    return convert(folder_items(root), out_dir, name=name, role=role, source=source,
                   where=f"image folder {root}", **options)
