"""Pascal VOC (2007/2012 layout) -> shards: 20 classes, labels from Annotations/*.xml."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from .errors import ConversionError, MissingInputError
from .plan import Item, sanitize_key
from .writer import convert

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
_FIX_ROOT = "--root must be the VOCdevkit/VOC20xx folder holding Annotations/, ImageSets/, JPEGImages/"


def read_split(root: Path, split: str) -> list[str]:
    """Image ids of ImageSets/Main/<split>.txt, in file order."""
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise MissingInputError(f"split file {path} not found; {_FIX_ROOT} and --split one of "
                                "train, val, trainval, test")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def read_labels(xml_path: Path, skip_difficult: bool = False) -> tuple[int, ...]:
    """Sorted class indices of the objects in one annotation file.

    Difficult objects count as present (the usual multi-label protocol) unless
    `skip_difficult`; an unknown name stops the conversion rather than vanish."""
    try:
        root = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise MissingInputError(f"annotation {xml_path} not found; the id is listed in the split "
                                f"file, so restore the file or remove the id ({_FIX_ROOT})") from None
    except ET.ParseError as exc:
        raise ConversionError(f"cannot parse annotation {xml_path}: {exc}; fix or restore it") from None
    labels = set()
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if skip_difficult and (obj.findtext("difficult") or "0").strip() == "1":
            continue
        if name not in VOC_CLASSES:
            raise ConversionError(f"unknown class {name!r} in {xml_path}; VOC classes are "
                                  f"{', '.join(VOC_CLASSES)}; fix the annotation, or use "
                                  "`shards manifest` with your own class list")
        labels.add(VOC_CLASSES.index(name))
    return tuple(sorted(labels))


def voc_items(root, split: str, skip_difficult: bool = False) -> list[Item]:
    """One item per listed id: JPEGImages/<id>.jpg with its annotation's labels."""
    root = Path(root)
    return [Item(key=sanitize_key(image_id), source=str(root / "JPEGImages" / f"{image_id}.jpg"),
                 labels=read_labels(root / "Annotations" / f"{image_id}.xml", skip_difficult))
            for image_id in read_split(root, split)]


def convert_voc(root, split: str, out_dir, *, skip_difficult: bool = False,
                name: str | None = None, **options) -> dict:
    """Convert one VOC split; `options` go to `shards.writer.convert`."""
    root = Path(root)
    items = voc_items(root, split, skip_difficult)
    name = name or sanitize_key(f"{root.resolve().name}-{split}")
    source = {"kind": "voc", "root": str(root), "split": split, "skip_difficult": skip_difficult}
    return convert(items, out_dir, name=name, role="id", classes=VOC_CLASSES, source=source,
                   where=str(root / "ImageSets" / "Main" / f"{split}.txt"), **options)
