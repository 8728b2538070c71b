"""The plain arrangement the project's reader is measured against (issue 19): what a
researcher writes with webdataset + torchvision in ten lines.

`webdataset.WebDataset(urls, shardshuffle=False, nodesplitter=None,
workersplitter=split_by_worker).map(decode).batched(B, collation_fn=torch.stack)` in a
`webdataset.WebLoader`; decode = `PIL.Image.open` -> `draft("RGB", ...)` when the source
is at least twice the crop -> `convert("RGB")` -> `pil_to_tensor` -> `v2.RandomResizedCrop`
(same size and scale) + horizontal flip, uint8 out of the workers; `(x.float() - mean) / std`
in the main process. ID and OE are two such loaders read in step (one OE batch per ID
batch), as the project's reader pairs them, and both come out of the same `workers`
processes (each worker reads its share of the ID shards and an endless share of the OE
shards), so the two arrangements start the same number of processes. Labels are parsed
from the json but the baseline does no multi-hot or shuffle-buffer work: it is the floor,
not a twin.
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
    """One stream: decode + crop in `workers` processes, uint8 batches out."""
    dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None,
                             workersplitter=wds.split_by_worker, empty_check=False)
    if endless:
        dataset = dataset.repeat()
    dataset = dataset.map(Decode(image_size, crop_scale)).batched(batch_size, collation_fn=_collate, partial=False)
    return wds.WebLoader(dataset, batch_size=None, num_workers=workers)


class PairWithOE:
    """Inside each loader worker: B decoded ID samples -> (ID batch, OE batch of B_oe), the
    OE samples from an endless OE stream of the same worker (its share of the OE shards) --
    so both streams come out of the same `workers` processes, as in the project's reader."""

    def __init__(self, oe_urls, *, image_size: int, batch_size: int, oe_batch_size: int, crop_scale):
        self.oe_urls, self.batch_size, self.oe_batch_size = list(oe_urls), batch_size, oe_batch_size
        self.decode = Decode(image_size, crop_scale)

    def __call__(self, src):
        oe = iter(wds.WebDataset(self.oe_urls, shardshuffle=False, nodesplitter=None, empty_check=False,
                                 workersplitter=_oe_split).repeat().map(self.decode))
        buf = []
        for sample in src:
            buf.append(sample)
            if len(buf) == self.batch_size:
                yield _collate(buf), _collate([next(oe) for _ in range(self.oe_batch_size)])
                buf = []


def _oe_split(urls):
    """The worker's share of the OE shards, or all of them when there are fewer shards
    than workers (an endless stream must never be empty)."""
    urls = list(urls)
    info = torch.utils.data.get_worker_info()
    if info is None or len(urls) < info.num_workers:
        return iter(urls)
    return iter(urls[info.id::info.num_workers])


def paired_loader(id_urls, oe_urls, *, image_size: int, batch_size: int, oe_batch_size: int, workers: int,
                  crop_scale=(0.5, 1.0)):
    dataset = wds.WebDataset(list(id_urls), shardshuffle=False, nodesplitter=None,
                             workersplitter=wds.split_by_worker, empty_check=False)
    dataset = dataset.map(Decode(image_size, crop_scale)).compose(
        PairWithOE(oe_urls, image_size=image_size, batch_size=batch_size, oe_batch_size=oe_batch_size,
                   crop_scale=crop_scale))
    return wds.WebLoader(dataset, batch_size=None, num_workers=workers)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """In the main process, as the baseline leaves it: float, minus mean, over std."""
    m = torch.tensor(mean).view(1, 3, 1, 1) * 255
    s = torch.tensor(std).view(1, 3, 1, 1) * 255
    return (x.float() - m) / s


def epoch(id_urls, oe_urls, *, image_size: int, batch_size: int, oe_batch_size: int, workers: int,
          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """Yield (x_id, x_oe) float batches for one pass over the ID shards: `workers`
    processes make both streams (PairWithOE), as many as the project's reader uses."""
    for (x_id, _), (x_oe, _) in paired_loader(id_urls, oe_urls, image_size=image_size, batch_size=batch_size,
                                              oe_batch_size=oe_batch_size, workers=workers):
        yield normalize(x_id, mean, std), normalize(x_oe, mean, std)
