"""The GPU decode stage: nvJPEG decode and augmentation on the device.

On an H100/H200 a compiled ResNet-50 EDGE step takes ~5k img/s, while PIL decode +
crop in 14 DataLoader workers delivers ~3k img/s: the CPU input path is the ceiling.
`decode="gpu"` splits the last reader stage (plan -> read -> decode, ARCHITECTURE.md):

  DataLoader workers (`pack_batch`)  the same `record_batches` as the CPU path; per image
      only the JPEG header is parsed and the crop drawn from the same seeded generator;
      the encoded files travel to the rank in one buffer (`PackedBatch`).
  the rank's process (`BatchDecoder`)  one `torchvision.io.decode_jpeg(list, device=
      "cuda")` call per step (nvJPEG; the hardware JPEG engines of A100/H100/H200 for
      baseline files), then crop, resize (bilinear, antialiased, as PIL's), flip and
      normalise on the GPU.
  a feeder thread (`prefetch`)  runs the rank's stage a batch or two ahead on its own
      CUDA stream, so decoding overlaps the training steps queued on the default stream
      (`loop.train_epoch` never waits for the GPU mid-epoch). `GPU_FEEDERS` (below) names
      the other arrangements: decode and crops in two threads ("pipelined"), or crops
      queued by the training loop on its own stream ("inline").

Same samples, labels, steps and crop boxes as the CPU path; only where pixels are made
changes. The CPU path may decode a JPEG at 1/2, 1/4 or 1/8 scale (PIL draft mode) and
draws the crop on that size; here the crop is drawn on the same size and scaled to the
full-resolution image nvJPEG returns, so both paths cut the same region and agree within
JPEG decoder tolerance. What nvJPEG should not get (PNG, WebP, CMYK JPEGs, EXIF-rotated
JPEGs, a JPEG whose draft size we cannot reproduce) is decoded on the CPU in the worker, exactly as the CPU
path does, and then cropped on the GPU like the rest. No CUDA, or no working nvJPEG:
`resolve_device` returns None and the reader keeps the CPU path (one warning).
"""
from __future__ import annotations

import dataclasses
import io
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .prefetch import add_seconds, prefetch
from .records import Record
from .resize import crop_resize, crop_resize_batch, resize_weights
from .decode import decode_image, orientation
from .transforms import TrainTransform

__all__ = ["DECODERS", "GPU_FEEDERS", "GPU_CROPS", "PackedBatch", "pack_batch", "on_cpu_share", "jpeg_geometry",
           "scale_box", "BatchDecoder", "decode_jpeg", "resolve_device", "prefetch", "crop_resize",
           "crop_resize_batch", "resize_weights"]

DECODERS = ("cpu", "gpu")
# How a rank runs the GPU decode stage's two steps (`data.gpu.BatchDecoder.decode`, `.finish`):
#   serial     one feeder thread does both, a batch or two ahead, on its own stream;
#   pipelined  one thread decodes (nvJPEG) while a second crops the previous batch;
#   inline     a thread decodes; the crops are queued by the training loop itself, on the
#              training stream, between steps (no crop kernels beside the step's).
GPU_FEEDERS = ("serial", "pipelined", "inline")
GPU_CROPS = ("batched", "per_image")   # crop resize: as one batch, or image by image

JPEG_MAGIC = b"\xff\xd8\xff"
# JPEG colour modes nvJPEG decodes to the same RGB as PIL's `convert("RGB")`; CMYK and
# YCCK files go to the CPU decoder.
_NVJPEG_MODES = ("RGB", "L")
_WARNED: set[str] = set()
_PROBED: dict[torch.device, bool] = {}


def warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


# ---------------------------------------------------------------- worker side


@dataclass
class PackedBatch:
    """One batch as a DataLoader worker ships it: encoded bytes and crop boxes.

    Two flat buffers instead of one tensor per image: every tensor crossing the worker
    queue costs a shared-memory segment and a file descriptor.
    """

    keys: list[str]
    shards: list[str]
    on_gpu: list[bool]                       # per sample: nvJPEG (True) or CPU-decoded
    sizes: list[tuple[int, int]]             # per sample: (height, width) of the decoded image
    boxes: list[tuple[int, int, int, int]]   # per sample: (top, left, height, width) in it
    flips: list[bool]
    encoded: torch.Tensor                    # uint8: the nvJPEG files, back to back
    encoded_sizes: list[int]
    pixels: torch.Tensor                     # uint8: the CPU-decoded images (HWC), back to back

    def __len__(self) -> int:
        return len(self.keys)

    def pin_memory(self) -> "PackedBatch":
        """The batch with its two buffers in page-locked memory (the DataLoader's pin
        thread calls this with pin_memory=True): nvJPEG then copies the files to the GPU
        by DMA, and the pixels upload without a staging copy on the feeder thread."""
        def pin(t: torch.Tensor) -> torch.Tensor:
            return t.pin_memory() if t.numel() else t

        return dataclasses.replace(self, encoded=pin(self.encoded), pixels=pin(self.pixels))


def pack_batch(records: list[Record], transform: TrainTransform, gen: np.random.Generator,
               cpu_share: float = 0.0) -> PackedBatch:
    """The worker half of the GPU stage: `streams.decode_batch`'s counterpart.

    Consumes `gen` exactly as the CPU path does (one `sample_crop` per record, in order),
    so both paths draw the same crops from the same seeds. `cpu_share` (0..1): that share
    of the batch, spread evenly over its positions, is decoded here by PIL as the CPU path
    does (and cropped on the GPU like the rest) even where nvJPEG could: the worker's cores
    then take part of the decoding off the GPU (`DataConfig.cpu_decode_share`).
    """
    on_gpu, sizes, boxes, flips, encoded, pixels = [], [], [], [], [], []
    min_size = transform.min_decode_size
    for i, rec in enumerate(records):
        try:
            geometry = None if on_cpu_share(i, cpu_share) else jpeg_geometry(rec.data, min_size)
            if geometry is None:  # CPU decode, exactly as the CPU path
                rgb = np.asarray(decode_image(rec.data, min_size=min_size), dtype=np.uint8)
                height, width = rgb.shape[:2]
                seen, scale = (width, height), 1
                pixels.append(rgb.reshape(-1))
            else:
                width, height, seen, scale = geometry
                encoded.append(rec.data)
        except Exception as err:  # PIL raises several types for corrupt or hostile bytes
            raise ValueError(f"shard {rec.shard!r}, key {rec.key!r}: cannot decode the "
                             f".{rec.ext} image ({err})") from err
        top, left, h, w, flip = transform.sample_crop(*seen, gen)
        on_gpu.append(geometry is not None)
        sizes.append((height, width))
        boxes.append(scale_box((top, left, h, w), scale, height, width))
        flips.append(flip)
    return PackedBatch(
        keys=[r.key for r in records], shards=[r.shard for r in records], on_gpu=on_gpu,
        sizes=sizes, boxes=boxes, flips=flips, encoded=_concat_bytes(encoded),
        encoded_sizes=[len(b) for b in encoded],
        pixels=torch.from_numpy(np.concatenate(pixels)) if pixels else torch.empty(0, dtype=torch.uint8))


def on_cpu_share(position: int, share: float) -> bool:
    """Whether batch position `position` falls in the CPU-decoded `share`: every position
    where floor((i + 1) * share) steps up, i.e. floor(n * share) of any first n, evenly spread."""
    return share > 0 and int((position + 1) * share + 1e-9) > int(position * share + 1e-9)


def jpeg_geometry(data: bytes, min_size: int) -> tuple[int, int, tuple[int, int], int] | None:
    """(width, height, size the CPU path decodes at, its scale factor) of a JPEG that nvJPEG
    can take, from the header alone; None when the image must be decoded on the CPU (CMYK,
    YCCK, or an EXIF orientation to apply: `decode.decode_image` handles those).

    Repeats `decode.decode_image`'s draft call (which only reads the header) so the
    crop is drawn on the very size the CPU path would draw it on.
    """
    if not data.startswith(JPEG_MAGIC):
        return None
    img = Image.open(io.BytesIO(data), formats=["JPEG"])
    if img.mode not in _NVJPEG_MODES or orientation(img) != 1:  # nvJPEG ignores EXIF orientation
        return None
    width, height = img.size
    img.draft("RGB", (min_size, min_size))
    seen = img.size
    for scale in (1, 2, 4, 8):  # the DCT scalings libjpeg offers; sizes round up
        if (-(-width // scale), -(-height // scale)) == seen:
            return width, height, seen, scale
    return None  # a draft rule we do not know: decode this one on the CPU


def scale_box(box: tuple[int, int, int, int], scale: int, height: int, width: int) -> tuple[int, int, int, int]:
    """A crop box on the 1/scale decoded image -> the same region of the full image.

    Pixel i of a JPEG decoded at 1/scale covers full-size pixels [i*scale, (i+1)*scale);
    the last one may be partial, hence the clipping.
    """
    top, left, h, w = (v * scale for v in box)
    return top, left, min(h, height - top), min(w, width - left)


def _concat_bytes(chunks: list[bytes]) -> torch.Tensor:
    out = torch.empty(sum(len(c) for c in chunks), dtype=torch.uint8)
    flat, pos = out.numpy(), 0
    for chunk in chunks:
        flat[pos:pos + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        pos += len(chunk)
    return out


# ---------------------------------------------------------------- rank side


class BatchDecoder:
    """The rank half of the GPU stage: `PackedBatch`es -> normalised float32 [B, 3, S, S].

    Two steps, which the loader may run in one feeder thread or split (`GPU_FEEDERS`):
    `decode` (every image of the step's batches as uint8 on the GPU: one nvJPEG call for
    ID and OE together, which is faster than two) and `finish` (crop, resize, flip,
    normalise). Crops are resized as a batch by default (`crop_resize_batch`: dense
    matrix products, a handful of kernels per batch); `batched=False` resizes image by
    image (`crop_resize`: several small kernels per image, touching only the crop). With
    the training step running beside it on the same GPU, the batched resize fed training
    faster (benchmarks/README.md).

    `timings` sums host seconds per part of the work: "stream_wait" (the feeder's stream
    draining before nvJPEG), "nvjpeg" (the decode call, which returns when its images are
    done), "crops" (queueing step 2; its GPU time is not seen by the host).
    """

    def __init__(self, image_size: int, mean, std, device: torch.device | str, batched: bool = True):
        self.image_size, self.device, self.batched = int(image_size), torch.device(device), batched
        self.mean = (torch.tensor(mean, dtype=torch.float32) * 255).view(1, 3, 1, 1).to(self.device)
        self.inv_std = (1 / (torch.tensor(std, dtype=torch.float32) * 255)).view(1, 3, 1, 1).to(self.device)
        self.timings: dict[str, float] = {}

    def __call__(self, *batches: PackedBatch | None) -> tuple[torch.Tensor | None, ...]:
        return self.finish(batches, self.decode(*batches))

    def decode(self, *batches: PackedBatch | None) -> list[list[torch.Tensor] | None]:
        """Step 1: per batch, its images as uint8 [3, H, W] on the device, in order."""
        jpegs = iter(self._decode_jpegs([b for b in batches if b is not None]))
        out = []
        for b in batches:
            if b is None:
                out.append(None)
                continue
            pixels = iter(self._pixels(b))
            out.append([next(jpegs) if gpu else next(pixels) for gpu in b.on_gpu])
        return out

    def finish(self, batches, images) -> tuple[torch.Tensor | None, ...]:
        """Step 2: crop, resize, flip and normalise `decode`'s images, batch by batch."""
        started = time.perf_counter()
        out = []
        for b, imgs in zip(batches, images):
            if b is None:
                out.append(None)
                continue
            if self.batched:
                boxes = self.upload(torch.tensor(b.boxes, dtype=torch.float32).view(-1, 4))
                flips = self.upload(torch.tensor(b.flips, dtype=torch.bool))
                x = crop_resize_batch(imgs, boxes, flips, self.image_size)
            else:
                x = torch.stack([crop_resize(img, box, False, self.image_size)
                                 for img, box in zip(imgs, b.boxes)])
                flipped = [i for i, flip in enumerate(b.flips) if flip]
                if flipped:  # one batched flip instead of a kernel per image
                    rows = self.upload(torch.tensor(flipped))
                    x[rows] = x[rows].flip(-1)
            out.append(x.sub_(self.mean).mul_(self.inv_std))
        add_seconds(self.timings, "crops", started)
        return tuple(out)

    def upload(self, t: torch.Tensor) -> torch.Tensor:
        """Host -> device without waiting: from pageable memory a copy may first wait for
        everything queued on the stream, which would stall the feeder thread."""
        if self.device.type != "cuda":
            return t.to(self.device)
        return t.pin_memory().to(self.device, non_blocking=True)

    def _decode_jpegs(self, batches: list[PackedBatch]) -> list[torch.Tensor]:
        data, where = [], []
        for b in batches:
            data += torch.split(b.encoded, b.encoded_sizes) if b.encoded_sizes else []
            where += [(b, i) for i, gpu in enumerate(b.on_gpu) if gpu]
        if not data:
            return []
        if self.device.type == "cuda":
            # torchvision's nvJPEG writes its outputs on a stream of its own, not ordered
            # after this one, into memory allocated from this stream's pool: a block this
            # stream freed while queued kernels still read it (the last batch's flip
            # indices, crop boxes, decoded images) could be overwritten before they ran.
            # Seen on an H100 once training stopped syncing every step: garbage indices,
            # "index out of bounds" device asserts. Let this stream's queued work finish.
            started = time.perf_counter()
            torch.cuda.current_stream(self.device).synchronize()
            add_seconds(self.timings, "stream_wait", started)
        started = time.perf_counter()
        try:
            images = decode_jpeg(data, self.device)
        except RuntimeError as err:  # nvJPEG fails a whole batch for one bad file
            warn_once(f"nvJPEG failed on a batch ({str(err).splitlines()[0]}); decoding that "
                      "batch with PIL")
            return [self._pil(b, i, d) for (b, i), d in zip(where, data)]
        add_seconds(self.timings, "nvjpeg", started)
        return [img if tuple(img.shape[1:]) == b.sizes[i] else self._pil(b, i, d)
                for img, (b, i), d in zip(images, where, data)]

    def _pil(self, batch: PackedBatch, i: int, data: torch.Tensor) -> torch.Tensor:
        """One file the batched decode could not do, at full size, or the CPU path's error."""
        try:
            rgb = np.array(decode_image(data.numpy().tobytes()), dtype=np.uint8)
        except Exception as err:
            raise ValueError(f"shard {batch.shards[i]!r}, key {batch.keys[i]!r}: cannot decode "
                             f"the image ({err})") from err
        if rgb.shape[:2] != batch.sizes[i]:
            raise ValueError(f"shard {batch.shards[i]!r}, key {batch.keys[i]!r}: decodes to "
                             f"{rgb.shape[:2]}, its header says {batch.sizes[i]}")
        return self.upload(torch.from_numpy(rgb)).permute(2, 0, 1)

    def _pixels(self, batch: PackedBatch) -> list[torch.Tensor]:
        shapes = [s for s, gpu in zip(batch.sizes, batch.on_gpu) if not gpu]
        if not shapes:
            return []
        flat = self.upload(batch.pixels)
        parts = torch.split(flat, [h * w * 3 for h, w in shapes])
        return [p.view(h, w, 3).permute(2, 0, 1) for p, (h, w) in zip(parts, shapes)]


def decode_jpeg(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """RGB uint8 [3, H, W] images from JPEG byte tensors: nvJPEG on CUDA, libjpeg on CPU."""
    from torchvision.io import ImageReadMode, decode_jpeg as tv_decode

    return tv_decode(data, mode=ImageReadMode.RGB, device=device)


def resolve_device(device=None) -> torch.device | None:
    """The CUDA device the GPU stage runs on, or None (with one warning) when it cannot:
    no CUDA, a CPU device asked for, or an nvJPEG that fails on a tiny test image."""
    if device is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        warn_once("data.decode='gpu' needs a CUDA device; using the CPU decode path")
        return None
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device not in _PROBED:
        _PROBED[device] = _nvjpeg_works(device)
    return device if _PROBED[device] else None


def _nvjpeg_works(device: torch.device) -> bool:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 90)).save(buf, format="JPEG")
    try:
        data = [torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)]
        decode_jpeg(data, device)
        return True
    except Exception as err:  # not compiled with nvJPEG, driver trouble, ...
        warn_once(f"nvJPEG does not work on {device} ({str(err).splitlines()[0]}); "
                  "using the CPU decode path")
        return False
