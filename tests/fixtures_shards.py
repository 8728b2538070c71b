"""Tiny on-disk datasets in VOC, COCO, NUS-WIDE, manifest and folder layouts,
with real JPEG/PNG bytes from Pillow plus one truncated and one zero-byte image,
and a tar reader that does not use the code under test."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

VOC = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
       "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
       "train", "tvmonitor")


def image_bytes(seed: int, fmt: str = "JPEG", size=(20, 16)) -> bytes:
    img = Image.new("RGB", size, (seed * 37 % 256, seed * 91 % 256, seed * 13 % 256))
    img.putpixel((seed % size[0], 0), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    data = image_bytes(99, size=(64, 64))
    return data[: len(data) // 2]


# id -> list of (class name, difficult); image kind: jpeg | png | truncated | empty
VOC_OBJECTS = {
    "2007_000001": [("dog", 0), ("person", 0)],
    "2007_000002": [("cat", 0), ("cat", 0)],
    "2007_000003": [("aeroplane", 0), ("tvmonitor", 1)],
    "2007_000004": [("bus", 1)],
    "2007_000005": [("sheep", 0)],
    "2007_000006": [("horse", 0)],
    "2007_000007": [("bird", 0)],
    "2007_000008": [("car", 0)],
}
VOC_IMAGE_KIND = {"2007_000005": "png", "2007_000007": "truncated", "2007_000008": "empty"}


def write_image(path: Path, kind: str, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"jpeg": lambda: image_bytes(seed), "png": lambda: image_bytes(seed, "PNG"),
            "bmp": lambda: image_bytes(seed, "BMP"), "truncated": truncated_jpeg,
            "empty": lambda: b""}[kind]()
    path.write_bytes(data)


def voc_xml(objects) -> str:
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>"
                   for n, d in objects)
    return f"<annotation><size><width>20</width><height>16</height></size>{objs}</annotation>"


def make_voc(tmp: Path, split: str = "train", objects=None, ids=None) -> Path:
    objects = objects or VOC_OBJECTS
    root = tmp / "VOCdevkit" / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for n, (image_id, objs) in enumerate(objects.items()):
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(objs))
        write_image(root / "JPEGImages" / f"{image_id}.jpg", VOC_IMAGE_KIND.get(image_id, "jpeg"), n)
    ids = list(objects) if ids is None else ids
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def voc_expected(skip_difficult: bool = False) -> dict[str, list[int]]:
    """Labels the converted VOC samples must carry (bad images excluded)."""
    out = {}
    for image_id, objs in VOC_OBJECTS.items():
        if VOC_IMAGE_KIND.get(image_id) in ("truncated", "empty"):
            continue
        out[image_id] = sorted({VOC.index(n) for n, d in objs if not (skip_difficult and d)})
    return out


COCO_CATEGORIES = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
COCO_ANNOTATIONS = {1: [18, 1], 2: [3, 3], 3: [], 4: [1], 5: [18]}  # image id -> category ids
COCO_KIND = {4: "truncated", 5: "empty"}


def make_coco(tmp: Path) -> tuple[Path, Path]:
    images, ann_path = tmp / "coco" / "val", tmp / "coco" / "instances_val.json"
    anns, n = [], 0
    for image_id, cats in COCO_ANNOTATIONS.items():
        write_image(images / f"{image_id:012d}.jpg", COCO_KIND.get(image_id, "jpeg"), image_id)
        for cat in cats:
            n += 1
            anns.append({"id": n, "image_id": image_id, "category_id": cat, "iscrowd": 0})
    data = {"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in COCO_ANNOTATIONS],
            "annotations": anns, "categories": COCO_CATEGORIES}
    ann_path.write_text(json.dumps(data))
    return images, ann_path


def read_shards(out_dir: Path) -> dict[str, dict]:
    """key -> {"ext", "labels", "meta", "shard", "data"} read with tarfile only."""
    samples: dict[str, dict] = {}
    for tar_path in sorted(Path(out_dir).glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                rec = samples.setdefault(key, {"shard": tar_path.name})
                data = tar.extractfile(member).read()
                if ext == "json":
                    rec["meta"] = json.loads(data)
                    rec["labels"] = rec["meta"]["labels"]
                else:
                    rec["ext"], rec["data"] = ext, data
    return samples


def keys_per_shard(out_dir: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, rec in read_shards(out_dir).items():
        out.setdefault(rec["shard"], []).append(key)
    return out
