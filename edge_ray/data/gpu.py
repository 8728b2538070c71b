"""The GPU decode stage (issue 9): nvJPEG decode and augmentation on the device.

On an H100/H200 a compiled ResNet-50 EDGE step takes ~5k img/s, while PIL decode +
crop in 14 DataLoader workers delivers ~3k img/s: the CPU input path is the ceiling.
`decode="gpu"` splits the last reader stage (DESIGN.md layering: plan -> read -> decode):

  DataLoader workers (`pack_batch`)  the same `record_batches` as the CPU path; per image
      only the JPEG header is parsed and the crop drawn from the same seeded generator;
      the encoded files travel to the rank in one buffer (`PackedBatch`).
  the rank's process (`BatchDecoder`)  one `torchvision.io.decode_jpeg(list, device=
      "cuda")` call per step (nvJPEG; the hardware JPEG engines of A100/H100/H200 for
      baseline files), then crop, resize (bilinear, antialiased, as PIL's), flip and
      normalise on the GPU.
  a feeder thread (`prefetch`)  runs the rank's stage a batch or two ahead on its own
      CUDA stream, so decoding overlaps the training steps queued on the default stream
      (`engine.train_epoch` reads the loss back only every few steps).

Same samples, labels, steps and crop boxes as the CPU path; only where pixels are made
changes. The CPU path may decode a JPEG at 1/2, 1/4 or 1/8 scale (PIL draft mode) and
draws the crop on that size; here the crop is drawn on the same size and scaled to the
full-resolution image nvJPEG returns, so both paths cut the same region and agree within
JPEG decoder tolerance. What nvJPEG should not get (PNG, WebP, CMYK JPEGs, a JPEG whose
draft size we cannot reproduce) is decoded on the CPU in the worker, exactly as the CPU
path does, and then cropped on the GPU like the rest. No CUDA, or no working nvJPEG:
`resolve_device` returns None and the reader keeps the CPU path (one warning).
"""
from __future__ import annotations

import contextlib
import io
import queue
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .records import Record
from .transforms import TrainTransform, decode_image

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


def pack_batch(records: list[Record], transform: TrainTransform, gen: np.random.Generator) -> PackedBatch:
    """The worker half of the GPU stage: `reader._decode_batch`'s counterpart.

    Consumes `gen` exactly as the CPU path does (one `sample_crop` per record, in order),
    so both paths draw the same crops from the same seeds.
    """
    on_gpu, sizes, boxes, flips, encoded, pixels = [], [], [], [], [], []
    min_size = transform.min_decode_size
    for rec in records:
        try:
            geometry = jpeg_geometry(rec.data, min_size)
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


def jpeg_geometry(data: bytes, min_size: int) -> tuple[int, int, tuple[int, int], int] | None:
    """(width, height, size the CPU path decodes at, its scale factor) of a JPEG that nvJPEG
    can take, from the header alone; None when the image must be decoded on the CPU.

    Repeats `transforms.decode_image`'s draft call (which only reads the header) so the
    crop is drawn on the very size the CPU path would draw it on.
    """
    if not data.startswith(JPEG_MAGIC):
        return None
    img = Image.open(io.BytesIO(data), formats=["JPEG"])
    if img.mode not in _NVJPEG_MODES:
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


def crop_resize(image: torch.Tensor, box: tuple[int, int, int, int], flip: bool, size: int) -> torch.Tensor:
    """uint8 or float [3, H, W] -> float32 [3, size, size] in 0..255: the crop `box`
    (top, left, height, width), resized bilinearly with antialiasing (PIL's filter, as
    `TrainTransform.geometric` applies it), then flipped left-right if `flip`."""
    top, left, h, w = box
    x = image[:, top:top + h, left:left + w].unsqueeze(0).float()
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = x[0]
    return x.flip(-1) if flip else x


def resize_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """[n, out_size, in_size] float32: row i of matrix j holds the weights with which
    output pixel i of image j is made from input pixels 0..in_size-1, when image j's crop
    covers pixels [start, start + length) on this axis.

    PIL's (and torch's antialiased) bilinear resampling: output pixel i is centred at
    (i + 0.5) * scale in the crop, scale = length / out_size; the triangle filter has
    support max(scale, 1) (widened when shrinking, which is the antialiasing); weights
    outside the crop are zero and each row is normalised to sum to 1.
    """
    start = start.to(torch.float32)
    length = length.to(torch.float32)
    scale = length / out_size
    support = scale.clamp(min=1.0)
    device = start.device
    centre = (torch.arange(out_size, device=device, dtype=torch.float32) + 0.5)[None, :] * scale[:, None]
    x = torch.arange(in_size, device=device, dtype=torch.float32)[None, None, :] - start[:, None, None]
    w = (1 - ((x + 0.5 - centre[..., None]) / support[:, None, None]).abs()).clamp_(min=0)
    w = w * ((x >= 0) & (x < length[:, None, None]))
    return w / w.sum(-1, keepdim=True)


def crop_resize_batch(images: list[torch.Tensor], boxes: torch.Tensor, flips: torch.Tensor,
                      size: int) -> torch.Tensor:
    """`crop_resize` for a whole batch: [n, 3, size, size] float32 in 0..255.

    `boxes` [n, 4] (top, left, height, width) and `flips` [n] bool live on the images'
    device. Images of one size are stacked and resampled as two batched matrix products,
    out = Wy @ image @ Wx^T, with the crop, the antialiased bilinear filter and the flip
    folded into Wy and Wx (`resize_weights`): a handful of kernels per distinct image size
    instead of several per image.
    """
    n = len(images)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    out = None
    for (height, width), idx in groups.items():
        sel = None if len(idx) == n else torch.tensor(idx, device=boxes.device)
        box = boxes if sel is None else boxes[sel]
        flip = flips if sel is None else flips[sel]
        stack = torch.stack([images[i] for i in idx]).float()                   # [g, 3, H, W]
        wy = resize_weights(box[:, 0], box[:, 2], height, size)                 # [g, S, H]
        wx = resize_weights(box[:, 1], box[:, 3], width, size)                  # [g, S, W]
        wx = torch.where(flip[:, None, None], wx.flip(1), wx)
        res = torch.einsum("ncsw,ntw->ncst", torch.einsum("nsh,nchw->ncsw", wy, stack), wx)
        if sel is None:
            return res
        if out is None:
            out = torch.empty((n, 3, size, size), dtype=torch.float32, device=res.device)
        out[sel] = res
    if out is None:
        raise ValueError("crop_resize_batch: no images")
    return out


class BatchDecoder:
    """The rank half of the GPU stage: `PackedBatch`es -> normalised float32 [B, 3, S, S].

    Several batches (ID and OE) go through one nvJPEG call, which is faster than two.
    Crops are resized image by image by default (`crop_resize`: a few small kernels per
    image, which run beside the training step on the side stream and touch only the
    crop); `batched=True` resizes a whole batch with dense matrix products
    (`crop_resize_batch`: a handful of launches, but ~100x the arithmetic and memory
    traffic). On one H100 (benchmarks/README.md) the per-image path fed training at
    least as fast: GPU time, not launches, is what the training step competes for.
    """

    def __init__(self, image_size: int, mean, std, device: torch.device | str, batched: bool = False):
        self.image_size, self.device, self.batched = int(image_size), torch.device(device), batched
        self.mean = (torch.tensor(mean, dtype=torch.float32) * 255).view(1, 3, 1, 1).to(self.device)
        self.inv_std = (1 / (torch.tensor(std, dtype=torch.float32) * 255)).view(1, 3, 1, 1).to(self.device)

    def __call__(self, *batches: PackedBatch | None) -> tuple[torch.Tensor | None, ...]:
        jpegs = iter(self._decode_jpegs([b for b in batches if b is not None]))
        out = []
        for b in batches:
            if b is None:
                out.append(None)
                continue
            pixels = iter(self._pixels(b))
            images = [next(jpegs) if gpu else next(pixels) for gpu in b.on_gpu]
            if self.batched:
                boxes = self.upload(torch.tensor(b.boxes, dtype=torch.float32).view(-1, 4))
                flips = self.upload(torch.tensor(b.flips, dtype=torch.bool))
                x = crop_resize_batch(images, boxes, flips, self.image_size)
            else:
                x = torch.stack([crop_resize(img, box, False, self.image_size)
                                 for img, box in zip(images, b.boxes)])
                flipped = [i for i, flip in enumerate(b.flips) if flip]
                if flipped:  # one batched flip instead of a kernel per image
                    rows = self.upload(torch.tensor(flipped))
                    x[rows] = x[rows].flip(-1)
            out.append(x.sub_(self.mean).mul_(self.inv_std))
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
            torch.cuda.current_stream(self.device).synchronize()
        try:
            images = decode_jpeg(data, self.device)
        except RuntimeError as err:  # nvJPEG fails a whole batch for one bad file
            warn_once(f"nvJPEG failed on a batch ({str(err).splitlines()[0]}); decoding that "
                      "batch with PIL")
            return [self._pil(b, i, d) for (b, i), d in zip(where, data)]
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


# ---------------------------------------------------------------- overlap


class _Failed:
    def __init__(self, err: BaseException):
        self.err = err


_DONE = object()


def prefetch(items: Iterable, convert: Callable, device: torch.device, depth: int = 2) -> Iterator:
    """`convert(item)` for each item, in order, computed up to `depth` items ahead in a
    thread. On CUDA the thread works on its own stream and each result is handed over
    with an event, so the consumer's stream waits for exactly that result.

    The DataLoader iterator is consumed inside the thread too (unpickling a batch is CPU
    work as well). Closing the generator early stops the thread at its next hand-over.
    """
    ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    cuda = device.type == "cuda"
    side = torch.cuda.Stream(device=device) if cuda else None

    def hand_over(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def feed() -> None:
        try:
            context = (torch.cuda.stream(side) if cuda else contextlib.nullcontext())
            if cuda:
                torch.cuda.set_device(device)
            with context:
                for item in items:
                    result = convert(item)
                    event = None
                    if cuda:
                        event = torch.cuda.Event()
                        event.record(side)
                    if not hand_over((result, event)):
                        return
            hand_over(_DONE)
        except BaseException as err:  # re-raised in the consumer, with its traceback
            hand_over(_Failed(err))

    thread = threading.Thread(target=feed, name="edge-gpu-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = _next(ready, thread)
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.err
            result, event = item
            if cuda:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                for t in _tensors(result):
                    if t.is_cuda:  # its memory must outlive this stream's use, not the side stream's
                        t.record_stream(current)
            yield result
    finally:
        stop.set()


def _next(ready: queue.Queue, thread: threading.Thread):
    while True:
        try:
            return ready.get(timeout=1.0)
        except queue.Empty:
            if not thread.is_alive():  # it may have put its last item just before ending
                try:
                    return ready.get_nowait()
                except queue.Empty:
                    raise RuntimeError("the GPU decode thread ended without a result") from None


def _tensors(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for x in obj:
            yield from _tensors(x)
