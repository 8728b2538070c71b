"""MS-COCO instances_*.json -> shards: categories sorted by id become classes 0..N-1."""
from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from .errors import ConversionError, MissingInputError
from .plan import Item, sanitize_key
from .writer import convert


def load_annotations(path: Path) -> dict:
    if not path.is_file():
        raise MissingInputError(f"annotation file {path} not found; pass --annotations "
                                "annotations/instances_<split>.json")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConversionError(f"cannot parse {path}: {exc}; re-download the annotation file") from None
    for field in ("images", "annotations", "categories"):
        if field not in data:
            raise ConversionError(f"{path} has no {field!r} field; expected a COCO instances_*.json")
    return data


def image_labels(data: dict, path: Path) -> tuple[list[str], dict[int, set[int]]]:
    """Class names (by category id) and the class set of every image id."""
    cats = sorted(data["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    labels: dict[int, set[int]] = {img["id"]: set() for img in data["images"]}
    for ann in data["annotations"]:
        if ann["category_id"] not in index:
            raise ConversionError(f"{path}: annotation {ann.get('id')} has unknown category_id "
                                  f"{ann['category_id']}; fix or re-download the file")
        if ann["image_id"] not in labels:
            raise ConversionError(f"{path}: annotation {ann.get('id')} refers to image_id "
                                  f"{ann['image_id']} that is not in 'images'")
        labels[ann["image_id"]].add(index[ann["category_id"]])  # crowd boxes count too
    return [c["name"] for c in cats], labels


def coco_items(images, annotations, drop_empty: bool = False):
    """Items plus skip entries for images dropped as unannotated (`drop_empty`)."""
    images, path = Path(images), Path(annotations)
    data = load_annotations(path)
    classes, labels = image_labels(data, path)
    items, skipped = [], []
    for img in data["images"]:
        src = str(images / img["file_name"])
        if drop_empty and not labels[img["id"]]:
            skipped.append({"path": src, "reason": "no annotation (--drop-empty)"})
            continue
        key = sanitize_key(str(PurePosixPath(img["file_name"]).with_suffix("")))
        items.append(Item(key=key, source=src, labels=tuple(sorted(labels[img["id"]]))))
    return classes, items, skipped


def convert_coco(images, annotations, out_dir, *, drop_empty: bool = False,
                 name: str | None = None, **options) -> dict:
    """Convert one COCO split; images without annotations are kept with no
    labels (pure negatives) unless `drop_empty`."""
    classes, items, skipped = coco_items(images, annotations, drop_empty)
    name = name or sanitize_key(Path(annotations).stem)
    source = {"kind": "coco", "images": str(images), "annotations": str(annotations),
              "drop_empty": drop_empty}
    return convert(items, out_dir, name=name, role="id", classes=classes, source=source,
                   where=str(annotations), skipped=skipped, **options)
