"""The plain arrangement the project's reader is measured against (issue 19): what a
researcher writes with webdataset + torchvision in ten lines.

`webdataset.WebDataset(urls, shardshuffle=False, nodesplitter=None,
workersplitter=split_by_worker).map(decode).batched(B, collation_fn=torch.stack)` in a
`webdataset.WebLoader`; decode = `PIL.Image.open` -> `draft("RGB", ...)` when the source
is at least twice the crop -> `convert("RGB")` -> `pil_to_tensor` -> `v2.RandomResizedCrop`
(same size and scale) + horizontal flip, uint8 out of the workers; `(x.float() - mean) / std`
in the main process. ID and OE are two such loaders read in step (one OE batch per ID
batch), as the project's reader pairs them. Labels are parsed from the json but the
baseline does no multi-hot or shuffle-buffer work: it is the floor, not a twin. The OE
loader has its own `workers` processes (the project's workers make both streams), which
helps its img/s; CPU per image, the number compared, does not gain from it.
"""
from __future__ import annotations

import io
import json
import math

import torch
import webdataset as wds
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.functional import pil_to_tensor

RATIO = (3 / 4, 4 / 3)


class Decode:
    """bytes -> uint8 [3, S, S]: PIL decode (DCT-scaled when it can), v2 crop + flip."""

    def __init__(self, image_size: int, crop_scale=(0.5, 1.0), hflip: bool = True):
        self.min_side = math.ceil(image_size / math.sqrt(crop_scale[0] * RATIO[0]))
        ops = [v2.RandomResizedCrop(image_size, scale=crop_scale, antialias=True)]
        self.augment = v2.Compose(ops + ([v2.RandomHorizontalFlip()] if hflip else []))

    def __call__(self, sample: dict) -> tuple:
        data = next(v for k, v in sample.items() if k in ("jpg", "jpeg", "png", "webp"))
        img = Image.open(io.BytesIO(data))
        if img.format == "JPEG":
            img.draft("RGB", (self.min_side, self.min_side))
        x = self.augment(pil_to_tensor(img.convert("RGB")))
        labels = json.loads(sample["json"]).get("labels", []) if "json" in sample else []
        return x, labels


def _collate(samples: list) -> tuple:
    return torch.stack([x for x, _ in samples]), [labels for _, labels in samples]


def loader(urls: list[str], *, image_size: int, batch_size: int, workers: int, crop_scale=(0.5, 1.0),
           endless: bool = False):
    dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None,
                             workersplitter=wds.split_by_worker, empty_check=False)
    if endless:
        dataset = dataset.repeat()
    dataset = dataset.map(Decode(image_size, crop_scale)).batched(batch_size, collation_fn=_collate, partial=False)
    return wds.WebLoader(dataset, batch_size=None, num_workers=workers)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """In the main process, as the baseline leaves it: float, minus mean, over std."""
    m = torch.tensor(mean).view(1, 3, 1, 1) * 255
    s = torch.tensor(std).view(1, 3, 1, 1) * 255
    return (x.float() - m) / s


def epoch(id_urls, oe_urls, *, image_size: int, batch_size: int, oe_batch_size: int, workers: int,
          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """Yield (x_id, x_oe) float batches for one pass over the ID shards."""
    ids = loader(id_urls, image_size=image_size, batch_size=batch_size, workers=workers)
    oes = iter(loader(oe_urls, image_size=image_size, batch_size=oe_batch_size, workers=workers, endless=True))
    for x_id, _ in ids:
        x_oe, _ = next(oes)
        yield normalize(x_id, mean, std), normalize(x_oe, mean, std)
